package publish

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
)

// TestEventsTravelInBatches: events published at once share messages, at
// most usage.MaxBatch to one, and each is in the stream exactly once under
// the message id its message must have (natsEnv.ids checks it).
func TestEventsTravelInBatches(t *testing.T) {
	env := startNATS(t, true)
	p := newPublisher(t, env.js, t.TempDir(), nil)
	startRun(t, p)
	want := map[string]bool{}
	publish(p, "many", 0, 1000, want)
	env.wantExactly(t, want)
	msgs := env.messages(t)
	for _, m := range msgs {
		if n := usage.Count(m.Data); n > usage.MaxBatch {
			t.Errorf("message %d holds %d events, more than %d", m.Sequence, n, usage.MaxBatch)
		}
	}
	t.Logf("1000 events in %d messages", len(msgs))
	if len(msgs) > 500 {
		t.Errorf("1000 events published at once took %d messages; want them batched", len(msgs))
	}
	eventually(t, "settled", settled(p))
	if st := p.Stats(); st.Published != 1000 || st.Spooled != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 1000 published and nothing spooled", st)
	}
}

// TestLostBatchAckReplaysTheSameMessage: a batch that JetStream stored but
// whose ack never came is spooled as it was sent and replayed under the
// same message id, so JetStream drops the copy: every event is in the
// stream once, and the batch's message once.
func TestLostBatchAckReplaysTheSameMessage(t *testing.T) {
	env := startNATS(t, true)
	lossy := &loseFirstBatchAck{JetStream: env.js}
	p := newPublisher(t, lossy, filepath.Join(t.TempDir(), "spool"), func(o *Options) { o.AckWait = 200 * time.Millisecond })
	startRun(t, p)
	want := map[string]bool{}
	publish(p, "lost", 0, 300, want)
	env.wantExactly(t, want)
	// The lost batch is in the stream before its ack wait ends; settled
	// alone could look between the reaper's hand-off to the spool writer and
	// the write, so wait for the replay's ack as well.
	eventually(t, "the lost batch replayed", func() bool { return p.Stats().Published == 300 && settled(p)() })
	lost := int64(lossy.lost.Load())
	if lost < 2 {
		t.Fatalf("no batch ack was lost (%d events)", lost)
	}
	st := p.Stats()
	if st.Dropped != 0 || st.Published != 300 || st.Spooled < lost || st.Replayed != st.Spooled {
		t.Errorf("stats %+v; want 300 published, the lost batch's %d events among those spooled, all spooled replayed", st, lost)
	}
	ids := map[string]int{}
	for _, m := range env.messages(t) {
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("message id %s is in the stream %d times", id, n)
		}
	}
	if ids[lossy.id.Load().(string)] != 1 {
		t.Errorf("the batch whose ack was lost (%s) is not in the stream", lossy.id.Load())
	}
}

// loseFirstBatchAck publishes every message, but the future of its first
// batch never settles: the message is stored and its ack lost, as when a
// connection drops between the two.
type loseFirstBatchAck struct {
	jetstream.JetStream
	lost atomic.Int32 // events in the batch whose ack was lost
	id   atomic.Value // its message id
}

func (l *loseFirstBatchAck) PublishAsync(subject string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	fut, err := l.JetStream.PublishAsync(subject, data, opts...)
	if err != nil || !usage.IsBatch(data) || !l.lost.CompareAndSwap(0, int32(usage.Count(data))) {
		return fut, err
	}
	l.id.Store(fut.Msg().Header.Get(jetstream.MsgIDHeader))
	return lostAck{fut}, nil
}

// lostAck is a future whose ack never comes: nil channels never fire.
type lostAck struct{ jetstream.PubAckFuture }

func (lostAck) Ok() <-chan *jetstream.PubAck { return nil }
func (lostAck) Err() <-chan error            { return nil }

// TestMaxBatchOneSendsEventsAlone: with MaxBatch 1 (USAGE_BATCH_MAX=1, for
// meters that predate batches) every message is one event under its own id.
func TestMaxBatchOneSendsEventsAlone(t *testing.T) {
	env := startNATS(t, true)
	p := newPublisher(t, env.js, t.TempDir(), func(o *Options) { o.MaxBatch = 1 })
	startRun(t, p)
	want := map[string]bool{}
	publish(p, "alone", 0, 200, want)
	env.wantExactly(t, want)
	for _, m := range env.messages(t) {
		if usage.IsBatch(m.Data) {
			t.Fatalf("message %d is a batch: %.80s", m.Sequence, m.Data)
		}
	}
}
