package publish

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/gateway/internal/publish/spool"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// replayPoll is how often a replayer that waits for NATS checks the
// connection again.
const replayPoll = 100 * time.Millisecond

// sent is one spooled entry in flight. fut is nil for an entry that needs
// no ack (damaged bytes, or a record without an id).
type sent struct {
	fut  jetstream.PubAckFuture
	next spool.Pos
	n    int // events it stands for; 0 for skipped bytes
}

// replay publishes the spool's records in order and commits them once
// acknowledged. It runs until drain ends; once ctx has ended, it stops
// when the live events are settled and the spool is replayed, or as soon
// as NATS is unreachable.
func (p *Publisher) replay(ctx, drain context.Context, liveDone <-chan struct{}) {
	r := p.spool.NewReader()
	defer r.Close()
	var win []sent
	backoff := time.Duration(0)
	flushed := false // the spool was flushed after the live events settled
	for {
		if drain.Err() != nil {
			return // uncommitted records stay in the spool for the next start
		}
		draining := ctx.Err() != nil
		if draining && !p.connected() {
			return
		}
		// Fill the window.
		caughtUp, failure := false, error(nil)
		for p.connected() && len(win) < p.window {
			e, ok, err := r.Next()
			if err != nil {
				p.log.Error("usage spool: read failed", "err", err)
				failure = err
				break
			}
			if !ok {
				caughtUp = true
				break
			}
			if e.Data == nil {
				win = append(win, sent{next: e.Next})
				continue
			}
			id, header := messageMeta(e.Data)
			if id == "" {
				p.dropped.Add(int64(e.Count))
				p.log.Error("usage events dropped: spooled record has no event id", "bytes", len(e.Data), "events", e.Count)
				win = append(win, sent{next: e.Next, n: e.Count})
				continue
			}
			// Dedup layer 1 (pkg/ledger): replayed under the message id it
			// was first sent with.
			fut, err := p.publishAsync(e.Data, header, jetstream.WithMsgID(id))
			if err != nil {
				failure = err
				break
			}
			win = append(win, sent{fut: fut, next: e.Next, n: e.Count})
		}
		// Settle the oldest entries; commit the acknowledged prefix.
		if failure == nil && len(win) > 0 {
			win, failure = p.settle(drain, win)
			if failure == nil {
				backoff = 0
				continue
			}
		}
		if failure != nil {
			if errors.Is(failure, errDrainDeadline) {
				return
			}
			p.failed(failure)
			win = win[:0]
			r.Rewind() // resend from the committed position; JetStream drops duplicates
			if draining {
				return
			}
			backoff = nextBackoff(backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			case <-drain.Done():
			}
			continue
		}
		// Nothing in flight: wait for records, for NATS, or for the end.
		if draining && caughtUp {
			select {
			case <-liveDone:
				if flushed {
					return
				}
				p.spool.Flush() // events the reaper spooled while draining
				flushed = true
				continue
			default:
			}
		}
		// While draining, ctx is done for good: wait for liveDone instead.
		var ctxDone, live <-chan struct{}
		if draining {
			live = liveDone
		} else {
			ctxDone = ctx.Done()
		}
		var poll <-chan time.Time
		if !p.connected() {
			poll = time.After(replayPoll)
		}
		select {
		case <-p.spool.Ready():
		case <-poll:
		case <-live:
		case <-ctxDone:
		case <-drain.Done():
		}
	}
}

// settle waits for the oldest entry of win, then takes every entry already
// settled after it, and commits them. It returns the entries still in
// flight, or the failure that voids them.
func (p *Publisher) settle(drain context.Context, win []sent) ([]sent, error) {
	var (
		last spool.Pos
		n    int
		i    int
	)
	for i = 0; i < len(win); i++ {
		e := win[i]
		if e.fut != nil {
			if i == 0 {
				select {
				case <-e.fut.Ok():
				case err := <-e.fut.Err():
					return win, err
				case <-drain.Done():
					return win, errDrainDeadline
				}
			} else {
				select {
				case <-e.fut.Ok():
				case err := <-e.fut.Err():
					p.commit(last, n)
					return win[i:], err
				default:
					p.commit(last, n)
					return win[i:], nil
				}
			}
			p.acked()
			p.replayed.Add(int64(e.n))
			p.published.Add(int64(e.n))
		}
		last, n = e.next, n+e.n
	}
	p.commit(last, n)
	return win[:0], nil
}

func (p *Publisher) commit(next spool.Pos, n int) {
	if next == (spool.Pos{}) {
		return
	}
	p.spool.Commit(next, n)
}

// spooledMeta is what the replayer reads of an encoded usage event.
type spooledMeta struct {
	ID          string `json:"id"`
	TraceParent string `json:"traceparent"`
	TraceState  string `json:"tracestate"`
}

// messageMeta returns the message id and headers a spooled usage message
// was first sent with: for one event, its event id and its trace context
// (spooled inside the event, so the replayed message carries the headers
// of a live one); for a batch, its usage.BatchID and no headers. The id is
// empty when data is neither.
func messageMeta(data []byte) (string, nats.Header) {
	if usage.IsBatch(data) {
		var evs []spooledMeta
		if json.Unmarshal(data, &evs) != nil || len(evs) == 0 || evs[0].ID == "" || evs[len(evs)-1].ID == "" {
			return "", nil
		}
		return usage.BatchID(evs[0].ID, evs[len(evs)-1].ID, len(evs)), nil
	}
	var m spooledMeta
	if json.Unmarshal(data, &m) != nil {
		return "", nil
	}
	return m.ID, usagejs.TraceHeader(m.TraceParent, m.TraceState)
}

func nextBackoff(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return 20 * time.Millisecond
	case d >= 2*time.Second:
		return 2 * time.Second
	}
	return d * 2
}
