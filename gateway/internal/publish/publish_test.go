package publish

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/gateway/internal/publish/spool"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
	"github.com/qyai/qyai/testkit/embednats"
	"github.com/qyai/qyai/testkit/testenv"
)

// natsEnv is an embedded JetStream server with the USAGE stream, the
// gateway's kind of connection to it, and an observer connection.
type natsEnv struct {
	srv *testenv.Server
	js  jetstream.JetStream // as the gateway makes it
	obs jetstream.JetStream // for assertions
}

func startNATS(t *testing.T, withStream bool) *natsEnv {
	t.Helper()
	ns := embednats.Start(t)
	e := &natsEnv{srv: ns, js: gatewayJS(t, ns.URL), obs: gatewayJS(t, ns.URL)}
	if withStream {
		if _, err := usagejs.EnsureStream(t.Context(), e.obs, usagejs.StreamConfig{}); err != nil {
			t.Fatalf("create usage stream: %v", err)
		}
	}
	return e
}

// gatewayJS connects the way the gateway does (see app.run): start even
// when NATS is down, reconnect forever.
func gatewayJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// stop stops the server and waits until the client noticed.
func (e *natsEnv) stop(t *testing.T) {
	t.Helper()
	e.srv.Stop(t)
	eventually(t, "client notices the outage", func() bool { return !e.js.Conn().IsConnected() })
}

func (e *natsEnv) start(t *testing.T) {
	t.Helper()
	e.srv.Start(t)
	eventually(t, "clients reconnect", func() bool { return e.js.Conn().IsConnected() && e.obs.Conn().IsConnected() })
}

// ids returns the event id of every event in the stream, in order,
// checking that each message carries the id it must have as Nats-Msg-Id:
// its event id for one event, its usage.BatchID for a batch.
func (e *natsEnv) ids(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, m := range e.messages(t) {
		seq := m.Sequence
		evs, err := usage.Split(m.Data)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		var first, last string
		for _, b := range evs {
			ev, err := usage.Decode(b)
			if err != nil {
				t.Fatalf("message %d: %v", seq, err)
			}
			if first == "" {
				first = ev.ID
			}
			last = ev.ID
			out = append(out, ev.ID)
		}
		want := first
		if usage.IsBatch(m.Data) {
			want = usage.BatchID(first, last, len(evs))
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != want {
			t.Errorf("message %d: Nats-Msg-Id %q, want %q", seq, got, want)
		}
	}
	return out
}

// messages returns every message in the stream, in stream order.
func (e *natsEnv) messages(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := e.obs.Stream(t.Context(), usage.StreamName)
	if err != nil {
		t.Fatalf("usage stream: %v", err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// count is the number of events in the stream (a batch counts its events).
func (e *natsEnv) count(t *testing.T) int {
	t.Helper()
	n := 0
	for _, m := range e.messages(t) {
		n += usage.Count(m.Data)
	}
	return n
}

// wantExactly waits until the stream holds n events, then checks that
// they are n distinct events, exactly those of want.
func (e *natsEnv) wantExactly(t *testing.T, want map[string]bool) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d events in the stream", len(want)), func() bool { return e.count(t) >= len(want) })
	ids := e.ids(t)
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("event %s is in the stream twice", id)
		}
		seen[id] = true
		if !want[id] {
			t.Errorf("unexpected event %s", id)
		}
	}
	if len(ids) != len(want) || len(seen) != len(want) {
		t.Fatalf("stream holds %d events, %d distinct; want exactly %d", len(ids), len(seen), len(want))
	}
}

// hookedJS runs before ahead of every publish, and fails the publish when
// before fails: where a test pauses or stops the publisher. Nothing is
// committed between a commit and the replayer's next publish, so a pause
// in that publish holds the spool exactly as it was after the commit.
type hookedJS struct {
	jetstream.JetStream
	before func() error
}

func (h hookedJS) PublishAsync(subject string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if err := h.before(); err != nil {
		return nil, err
	}
	return h.JetStream.PublishAsync(subject, data, opts...)
}

var errStopped = errors.New("test: the publisher was told to stop")

// run is a publisher running in the background.
type run struct {
	p      *Publisher
	stopFn context.CancelFunc
	drain  context.CancelFunc
	done   chan struct{}
}

func newPublisher(t *testing.T, js jetstream.JetStream, dir string, mutate func(*Options)) *Publisher {
	t.Helper()
	o := Options{
		QueueSize: 1024,
		Spool:     spool.Options{Dir: dir},
		Log:       slog.New(slog.DiscardHandler),
	}
	if mutate != nil {
		mutate(&o)
	}
	p, err := New(js, o)
	if err != nil {
		t.Fatalf("new publisher: %v", err)
	}
	return p
}

func startRun(t *testing.T, p *Publisher) *run {
	t.Helper()
	ctx, stop := context.WithCancel(t.Context())
	drain, stopDrain := context.WithCancel(t.Context())
	r := &run{p: p, stopFn: stop, drain: stopDrain, done: make(chan struct{})}
	go func() { defer close(r.done); p.Run(ctx, drain) }()
	t.Cleanup(func() { r.stop(t, 0) })
	return r
}

// stop ends the run as the gateway's drain does: ctx ends, and the drain
// deadline comes after grace (at once when grace is 0).
func (r *run) stop(t *testing.T, grace time.Duration) {
	t.Helper()
	r.stopFn()
	if grace == 0 {
		r.drain()
	} else {
		defer time.AfterFunc(grace, r.drain).Stop()
	}
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("publisher did not stop")
	}
}

func event(prefix string, i int) *usage.Event {
	now := time.Now().UTC()
	return &usage.Event{
		SchemaVersion: usage.SchemaVersion, ID: fmt.Sprintf("%s-%05d", prefix, i), RequestID: "req",
		StartedAt: now, FinishedAt: now, KeyID: "key-1", KeyPrefix: "sk-abc", Tier: "pro",
		Model: "deepseek-v4-flash", UpstreamModel: "deepseek-v4-flash", Status: 200, Outcome: usage.OutcomeCompleted,
		PromptTokens: 10, CompletionTokens: 5, UsageSource: usage.SourceReported, Gateway: "test",
	}
}

// publish publishes events prefix-from..prefix-(to-1) and adds their ids to want.
func publish(p *Publisher, prefix string, from, to int, want map[string]bool) {
	for i := from; i < to; i++ {
		ev := event(prefix, i)
		want[ev.ID] = true
		p.Publish(ev)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func settled(p *Publisher) func() bool {
	return func() bool { st := p.Stats(); return st.Queued == 0 && st.SpoolEvents == 0 }
}

func TestNewNeedsLogger(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	if _, err := New(nil, Options{Spool: spool.Options{Dir: dir}}); !errors.Is(err, errNoLogger) {
		t.Fatalf("new publisher without a logger: %v, want errNoLogger", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("spool opened by a publisher that was refused: %v", err)
	}
}

func TestPublishWithNATSUp(t *testing.T) {
	env := startNATS(t, true)
	p := newPublisher(t, env.js, t.TempDir(), nil)
	r := startRun(t, p)
	want := map[string]bool{}
	publish(p, "up", 0, 1000, want)
	env.wantExactly(t, want)
	eventually(t, "publisher settles", settled(p))
	r.stop(t, 5*time.Second)
	if st := p.Stats(); st.Dropped != 0 || st.Published < 1000 {
		t.Errorf("stats %+v", st)
	}
	env.wantExactly(t, want) // nothing more arrived
}

func TestNATSOutageSpoolsAndReplays(t *testing.T) {
	env := startNATS(t, true)
	dir := t.TempDir()
	p := newPublisher(t, env.js, dir, nil)
	startRun(t, p)
	want := map[string]bool{}
	publish(p, "before", 0, 300, want)
	env.wantExactly(t, want)

	env.stop(t)
	// Publish must not wait for NATS: these calls return while it is down
	// (a blocking Publish would deadlock this test).
	publish(p, "during", 0, 700, want)
	eventually(t, "events spooled during the outage", func() bool {
		st := p.Stats()
		return st.Queued == 0 && st.SpoolEvents >= 700
	})
	if len(segments(t, dir)) == 0 {
		t.Fatal("no spool segment on disk during the outage")
	}

	env.start(t)
	env.wantExactly(t, want)
	eventually(t, "spool replayed", settled(p))
	eventually(t, "replayed segments deleted", func() bool { return len(segments(t, dir)) == 0 })
	if st := p.Stats(); st.Dropped != 0 || st.Replayed < 700 || st.Spooled < 700 {
		t.Errorf("stats %+v", st)
	}
}

func TestCloseWhileNATSDownThenReplayOnStart(t *testing.T) {
	env := startNATS(t, true)
	dir := filepath.Join(t.TempDir(), "spool")
	env.stop(t)

	a := newPublisher(t, env.js, dir, nil)
	ra := startRun(t, a)
	want := map[string]bool{}
	publish(a, "sigterm", 0, 500, want)
	ra.stop(t, 10*time.Second) // SIGTERM: returns at once, NATS being down
	st := a.Stats()
	if st.Spooled != 500 || st.Dropped != 0 || st.SpoolEvents != 500 {
		t.Fatalf("after closing with NATS down: %+v; want all 500 spooled", st)
	}
	if len(segments(t, dir)) == 0 {
		t.Fatal("spool empty on disk after closing with NATS down")
	}

	env.start(t)
	b := newPublisher(t, env.js, dir, nil)
	if st := b.Stats(); st.SpoolEvents != 500 {
		t.Fatalf("new publisher found %d spooled events, want 500", st.SpoolEvents)
	}
	rb := startRun(t, b)
	env.wantExactly(t, want)
	eventually(t, "spool replayed", settled(b))
	rb.stop(t, 5*time.Second)
	if st := b.Stats(); st.Replayed != 500 || st.Dropped != 0 {
		t.Errorf("replayed %d (want exactly 500), stats %+v", st.Replayed, st)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) && len(segments(t, dir)) != 0 {
		t.Errorf("segments left after replay: %v", segments(t, dir))
	}

	// A third start finds nothing to replay.
	c := newPublisher(t, env.js, dir, nil)
	if st := c.Stats(); st.SpoolEvents != 0 {
		t.Errorf("third start found %d spooled events", st.SpoolEvents)
	}
	startRun(t, c).stop(t, time.Second)
	env.wantExactly(t, want)
}

func TestDrainDeadlineSpoolsWhatIsInFlight(t *testing.T) {
	// NATS answers, but nothing acknowledges: a subscriber takes the
	// publishes and never replies, as a hung JetStream would.
	env := startNATS(t, false)
	sub, err := env.obs.Conn().SubscribeSync(usage.Subject)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := newPublisher(t, env.js, dir, func(o *Options) { o.AckWait = time.Hour })
	ra := startRun(t, a)
	want := map[string]bool{}
	publish(a, "hung", 0, 200, want)
	got := 0 // events the hung subscriber took
	eventually(t, "events in flight", func() bool {
		for {
			m, err := sub.NextMsg(10 * time.Millisecond)
			if err != nil {
				break
			}
			got += usage.Count(m.Data)
		}
		return got == 200 && a.Stats().Queued == 200
	})
	ra.stop(t, 0) // the drain deadline passes at once
	if st := a.Stats(); st.Spooled != 200 || st.SpoolEvents != 200 || st.Dropped != 0 {
		t.Fatalf("after the drain deadline: %+v; want all 200 spooled", st)
	}

	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(t.Context(), env.obs, usagejs.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	b := newPublisher(t, env.js, dir, nil)
	startRun(t, b)
	env.wantExactly(t, want)
	eventually(t, "spool replayed", settled(b))
}

func TestQueueFullOverflowsToSpool(t *testing.T) {
	env := startNATS(t, true)
	p := newPublisher(t, env.js, t.TempDir(), func(o *Options) { o.QueueSize = 10 })
	want := map[string]bool{}
	publish(p, "burst", 0, 50, want) // Run has not started: 10 fit in the queue
	eventually(t, "overflow spooled", func() bool { return p.Stats().Spooled == 40 })
	if st := p.Stats(); st.Queued != 10 || st.Dropped != 0 {
		t.Fatalf("stats %+v, want 10 queued and 40 spooled", st)
	}
	startRun(t, p)
	env.wantExactly(t, want)
	eventually(t, "publisher settles", settled(p))
}

func TestRestartMidReplayDoesNotDuplicate(t *testing.T) {
	env := startNATS(t, true)
	dir := t.TempDir()
	const n = 3000

	// A gateway spools n events while NATS is down and stops.
	env.stop(t)
	a := newPublisher(t, env.js, dir, nil)
	ra := startRun(t, a)
	want := map[string]bool{}
	publish(a, "mid", 0, n, want)
	ra.stop(t, 10*time.Second)
	if st := a.Stats(); st.SpoolEvents != n {
		t.Fatalf("spooled %d, want %d", st.SpoolEvents, n)
	}
	snapshot := copyDir(t, dir)
	env.start(t)

	// The next one stops mid-replay, deterministically: once 200 events
	// were committed, the replayer waits in its next publish until the
	// publisher was told to stop, and then sends nothing more.
	var b *Publisher
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	bjs := hookedJS{JetStream: env.js, before: func() error {
		if b.Stats().Replayed < 200 {
			return nil
		}
		once.Do(func() { close(reached); <-release })
		return errStopped
	}}
	b = newPublisher(t, bjs, dir, func(o *Options) { o.ReplayWindow = 16 })
	rb := startRun(t, b)
	<-reached
	rb.stopFn()
	rb.drain()
	close(release)
	rb.stop(t, 0)
	replayedB := b.Stats().Replayed
	if replayedB < 200 || replayedB >= n {
		t.Fatalf("first replay published %d events; the test needs it stopped mid-way", replayedB)
	}

	// The next start resumes at the committed position, and NATS restarts
	// in the middle of its replay.
	var c *Publisher
	reached, release = make(chan struct{}), make(chan struct{})
	once = sync.Once{}
	cjs := hookedJS{JetStream: env.js, before: func() error {
		if c.Stats().Replayed >= 500 {
			once.Do(func() { close(reached); <-release })
		}
		return nil
	}}
	c = newPublisher(t, cjs, dir, func(o *Options) { o.ReplayWindow = 16 })
	if got := c.Stats().SpoolEvents; got != n-replayedB {
		t.Errorf("after a graceful stop %d events left to replay, want %d", got, n-replayedB)
	}
	rc := startRun(t, c)
	<-reached
	env.stop(t) // the replayer's in-flight publishes fail; it goes back and resends
	close(release)
	env.start(t)
	env.wantExactly(t, want)
	eventually(t, "spool replayed", settled(c))
	rc.stop(t, time.Second)
	if st := c.Stats(); st.Dropped != 0 || st.Replayed < int64(n)-replayedB {
		t.Errorf("stats %+v", st)
	}

	// A crash right after the acks, before the offset was persisted:
	// everything is sent again, and JetStream drops every copy.
	t.Run("crash before offset persisted", func(t *testing.T) {
		restoreDir(t, dir, snapshot)
		d := newPublisher(t, env.js, dir, nil)
		if st := d.Stats(); st.SpoolEvents != n {
			t.Fatalf("restored spool holds %d events, want %d", st.SpoolEvents, n)
		}
		startRun(t, d)
		eventually(t, "spool replayed again", settled(d))
		if st := d.Stats(); st.Replayed != n {
			t.Errorf("replayed %d, want %d", st.Replayed, n)
		}
		env.wantExactly(t, want)
	})
}

// copyDir reads every regular file of dir but the lock.
func copyDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "LOCK" {
			return err
		}
		b, err := os.ReadFile(path)
		out[d.Name()] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func restoreDir(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
