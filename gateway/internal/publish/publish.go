// Package publish ships usage events to NATS JetStream off the request
// path, and keeps them in a local disk spool (package spool) whenever
// JetStream cannot take them, so that no event is lost to a NATS outage
// or a SIGTERM.
//
// Publish never blocks: it hands the event to a bounded in-memory queue
// (or, when that is full, to the spool's writer queue); the request path
// pays for a channel send. Behind it, three goroutines run:
//
//   - the sender takes events from the queue (waiting up to linger after
//     the first of a quiet spell, so that they travel together) and
//     publishes them asynchronously, each with its event id as Nats-Msg-Id, so that
//     JetStream drops a second copy within its duplicate window. While the
//     connection is down it writes them to the spool instead.
//   - the reaper awaits the acknowledgements in publish order. An event
//     whose publish failed, or whose ack has not come within AckWait, goes
//     to the spool (a late ack then makes the replayed copy a duplicate,
//     which JetStream drops). A kill -9 therefore loses at most the events
//     of the last linger and AckWait plus one spool fsync interval.
//   - the replayer publishes the spool's records in order, oldest segment
//     first, with their original event ids as Nats-Msg-Id, and commits the
//     spool's read position only after JetStream acknowledged them. On a
//     failure it goes back to the committed position and resends (the
//     duplicates are dropped by JetStream). It starts at once, so a spool
//     left by an earlier run is replayed on start.
//
// Run drains on shutdown: the queue is published while NATS answers, the
// spool is replayed while there is time, and whatever is left at the drain
// deadline is written to the spool (fsynced) for the next start.
package publish

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/gateway/internal/publish/spool"
	"github.com/qyai/qyai/pkg/usage"
)

// Defaults for Options' zero fields.
// linger is how long the sender waits after the first event of a quiet
// spell, so that the events of that moment go to NATS in one write and
// their acks come back in one read. At a few hundred requests a second that
// turns one write, one ack and several thread wake-ups per event into one
// per batch; measured at 500 req/s it took about 0.3 ms off the p99 latency
// the gateway adds, since that work competes with requests for the CPUs.
// Billing does not notice 5 ms. With lingerBatch events already queued the
// sender does not wait.
const (
	linger      = 5 * time.Millisecond
	lingerBatch = 64
)

const (
	DefaultQueueSize    = 1 << 16
	DefaultAckWait      = 100 * time.Millisecond
	DefaultReplayWindow = 256
	maxInflight         = 4096 // matches the gateway's jetstream.WithPublishAsyncMaxPending
)

// Options configure a Publisher.
type Options struct {
	// QueueSize bounds the in-memory queue. Default 65536.
	QueueSize int
	// Spool configures the disk spool; Spool.Dir is required. When empty,
	// New sets Spool.Log to Log and Spool.OnDrop to logging the drop.
	Spool spool.Options
	// AckWait is how long an event may wait for its JetStream ack before
	// a copy goes to the spool. It bounds what a kill -9 can lose while
	// NATS is slow or partitioned. Default 100 ms.
	AckWait time.Duration
	// ReplayWindow is the number of spooled events in flight at once.
	// Default 256.
	ReplayWindow int
	// Log receives errors. Required.
	Log *slog.Logger
}

// Stats are the publisher's gauges and counters.
type Stats struct {
	Queued      int64 // events in memory: queue and in flight
	Published   int64 // acknowledged by JetStream (live and replayed)
	Retried     int64 // publish attempts that failed or timed out (the event went to the spool)
	Spooled     int64 // events written to the spool
	Replayed    int64 // spooled events acknowledged by JetStream
	Dropped     int64 // events lost: spool full, damaged in the spool, or published after shutdown
	SpoolBytes  int64 // size of the spool's files
	SpoolEvents int64 // events in the spool not yet replayed
}

// Publisher is the asynchronous usage event publisher.
type Publisher struct {
	js      jetstream.JetStream
	subject string
	log     *slog.Logger
	ackWait time.Duration
	window  int

	queue    chan *usage.Event
	inflight chan inflight
	spool    *spool.Spool

	// mu orders Publish against the end of the drain: once live is false
	// no Publish is sending to queue, so a last sweep empties it.
	mu   sync.RWMutex
	live bool

	nInflight, published, retried, replayed, dropped atomic.Int64
}

type inflight struct {
	id   string
	data []byte
	fut  jetstream.PubAckFuture
	sent time.Time
}

// New opens the spool in o.Spool.Dir and returns a publisher. js should be
// made with jetstream.WithPublishAsyncTimeout, so that a lost ack turns
// into an error. Run must be called: it closes the spool when it returns.
func New(js jetstream.JetStream, o Options) (*Publisher, error) {
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.ReplayWindow <= 0 {
		o.ReplayWindow = DefaultReplayWindow
	}
	if o.Log == nil {
		return nil, errNoLogger
	}
	p := &Publisher{
		js:       js,
		subject:  usage.Subject,
		log:      o.Log,
		ackWait:  o.AckWait,
		window:   o.ReplayWindow,
		queue:    make(chan *usage.Event, o.QueueSize),
		inflight: make(chan inflight, maxInflight),
		live:     true,
	}
	if o.Spool.Log == nil {
		o.Spool.Log = o.Log
	}
	if o.Spool.OnDrop == nil {
		o.Spool.OnDrop = p.logDrop
	}
	sp, err := spool.Open(o.Spool)
	if err != nil {
		return nil, err
	}
	p.spool = sp
	return p, nil
}

// Publish hands ev over without blocking: to the queue, or to the spool
// when the queue is full. The caller must not change ev afterwards.
func (p *Publisher) Publish(ev *usage.Event) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.live {
		select {
		case p.queue <- ev:
			return
		default:
		}
	}
	p.spool.Append(ev) // never waits; counts and logs a drop itself
}

// Stats returns the gauges and counters.
func (p *Publisher) Stats() Stats {
	ss := p.spool.Stats()
	return Stats{
		Queued:      int64(len(p.queue)) + p.nInflight.Load(),
		Published:   p.published.Load(),
		Retried:     p.retried.Load(),
		Spooled:     ss.Appended,
		Replayed:    p.replayed.Load(),
		Dropped:     p.dropped.Load() + ss.Dropped,
		SpoolBytes:  ss.Bytes,
		SpoolEvents: ss.Pending,
	}
}

// SpoolDir returns the spool directory.
func (p *Publisher) SpoolDir() string { return p.spool.Dir() }

// Run publishes until ctx ends, then drains until drain ends: it publishes
// what is queued, replays the spool while NATS answers, spools the rest,
// and closes the spool. It returns when all of that is done.
func (p *Publisher) Run(ctx, drain context.Context) {
	liveDone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(liveDone)
		p.reap(drain)
	})
	wg.Go(func() { p.replay(ctx, drain, liveDone) })
	p.send(ctx, drain)
	wg.Wait()
	if err := p.spool.Close(); err != nil {
		p.log.Error("close usage spool", "err", err)
	}
}

func (p *Publisher) connected() bool { return p.js.Conn().IsConnected() }

// send publishes queued events until ctx ends, then what is left in the
// queue, and stops taking events into the queue.
func (p *Publisher) send(ctx, drain context.Context) {
	defer close(p.inflight)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
loop:
	for {
		select {
		case ev := <-p.queue:
			if len(p.queue) < lingerBatch {
				timer.Reset(linger)
				select {
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
				}
			}
			p.sendOne(drain, ev)
			for n := 1; n < maxInflight && p.sendQueued(drain); n++ {
			}
		case <-ctx.Done():
			break loop
		}
	}
	for p.sendQueued(drain) {
	}
	p.mu.Lock()
	p.live = false
	p.mu.Unlock()
	for p.sendQueued(drain) { // what came in since; nothing more can
	}
}

// sendQueued sends one queued event, if there is one.
func (p *Publisher) sendQueued(drain context.Context) bool {
	select {
	case ev := <-p.queue:
		p.sendOne(drain, ev)
		return true
	default:
		return false
	}
}

func (p *Publisher) sendOne(drain context.Context, ev *usage.Event) {
	data, err := ev.Marshal()
	if err != nil { // cannot happen for this struct; never lose the count silently
		p.dropped.Add(1)
		p.log.Error("usage event dropped: encode", "event_id", ev.ID, "key_id", ev.KeyID, "err", err)
		return
	}
	if drain.Err() != nil || !p.connected() {
		p.spool.Put(spool.Bytes(data))
		return
	}
	// Dedup layer 1 (pkg/ledger): the event id as Nats-Msg-Id.
	fut, err := p.js.PublishAsync(p.subject, data, jetstream.WithMsgID(ev.ID))
	if err != nil {
		p.failed(err)
		p.spool.Put(spool.Bytes(data))
		return
	}
	p.nInflight.Add(1)
	select {
	case p.inflight <- inflight{id: ev.ID, data: data, fut: fut, sent: time.Now()}:
	case <-drain.Done():
		p.nInflight.Add(-1)
		p.spool.Put(spool.Bytes(data))
	}
}

// reap awaits acknowledgements in publish order; what fails or waits too
// long goes to the spool.
func (p *Publisher) reap(drain context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for f := range p.inflight {
		var err error
		select {
		case <-f.fut.Ok():
		default:
			timer.Reset(time.Until(f.sent.Add(p.ackWait)))
			select {
			case <-f.fut.Ok():
			case err = <-f.fut.Err():
			case <-timer.C:
				err = errAckWait
			case <-drain.Done():
				err = errDrainDeadline
			}
		}
		if err == nil {
			p.published.Add(1)
		} else {
			p.failed(err)
			p.spool.Put(spool.Bytes(f.data))
		}
		p.nInflight.Add(-1)
	}
}

var (
	errNoLogger      = errors.New("publisher logger not set")
	errAckWait       = errors.New("no ack within the ack wait; event spooled")
	errDrainDeadline = errors.New("drain deadline passed; event spooled")
)

func (p *Publisher) failed(err error) {
	if n := p.retried.Add(1); n%1000 == 1 {
		p.log.Warn("usage publish failed; event goes to the spool and is replayed later", "err", err, "failures", n)
	}
}

// logDrop logs an event the spool had to drop: a last record of it.
func (p *Publisher) logDrop(rec spool.Record, err error) {
	var id, keyID string
	switch r := rec.(type) {
	case *usage.Event:
		id, keyID = r.ID, r.KeyID
	case spool.Bytes:
		var ev struct {
			ID    string `json:"id"`
			KeyID string `json:"key_id"`
		}
		_ = json.Unmarshal(r, &ev)
		id, keyID = ev.ID, ev.KeyID
	}
	p.log.Error("usage event dropped", "reason", err.Error(), "event_id", id, "key_id", keyID)
}
