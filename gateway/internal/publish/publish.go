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
//     publishes them asynchronously, up to usage.MaxBatch events in one
//     message (see pkg/usage: a batch is a JSON array of events). A
//     message of one event has the event id as Nats-Msg-Id, a batch its
//     usage.BatchID, so that JetStream drops a second copy of either
//     within its duplicate window. What NATS, this process and the meter
//     spend is per message, so under load a batch of n events costs about
//     what one event did. While JetStream does not take events (see below)
//     the sender writes them to the spool instead, one record each, and so
//     does it with an event that has already waited AckWait in the queue.
//   - the reaper awaits the acknowledgements in publish order. A message
//     whose publish failed, or whose ack has not come within AckWait of
//     its oldest event's Publish call, goes to the spool as it was sent,
//     the same bytes (a late ack then makes the replayed copy a duplicate
//     of the same message id, which JetStream drops).
//   - the replayer publishes the spool's records in order, oldest segment
//     first, each under the message id it was first sent with, and commits
//     the spool's read position only after JetStream acknowledged them. On
//     a failure it goes back to the committed position and resends (the
//     duplicates are dropped by JetStream). It starts at once, so a spool
//     left by an earlier run is replayed on start.
//
// JetStream takes events when the connection is up and acks flow. A
// connection can be up while nothing is acked: a stream without a leader,
// a frozen server, a full pending-ack window. So an ack that is overdue or
// failed, or the pending acks reaching the ceiling (maxInflight less the
// replay window), marks the publisher stalled: from then on new events go
// straight to the spool, and only the replayer publishes, as a probe; the
// first ack anyone receives ends the stall. No event therefore waits in
// memory longer than about AckWait, and a kill -9 loses at most the
// events of the last AckWait plus one spool fsync interval (~105 ms by
// default), whatever state JetStream is in.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/gateway/internal/publish/spool"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// Defaults for Options' zero fields.
// linger is how long the sender waits after the first event of a quiet
// spell, so that the events of that moment go to NATS in one message and
// their ack comes back in one read: what NATS, this process and the meter
// spend is per message. At 500 req/s 20 ms makes messages of about ten
// events; against 5 ms it cut NATS's CPU per request there by about 60 %
// in two alternating pairs of make bench (README, Performance). Billing
// does not notice 20 ms, and the time an event may wait in memory is still
// bounded by AckWait, linger included. With lingerBatch events already
// queued the sender does not wait.
const (
	linger      = 20 * time.Millisecond
	lingerBatch = usage.MaxBatch
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
	// AckWait is how long an event may wait in memory, from Publish to
	// its JetStream ack, before a copy goes to the spool; an overdue ack
	// also stalls the publisher (see the package comment). It bounds what
	// a kill -9 can lose while NATS is slow, partitioned or not acking.
	// Default 100 ms.
	AckWait time.Duration
	// MaxBatch is the most events in one message, 1..usage.MaxBatch.
	// Default usage.MaxBatch; 1 sends each event on its own.
	MaxBatch int
	// ReplayWindow is the number of spooled events in flight at once.
	// Default 256, at most 2048 (half the pending-ack slots).
	ReplayWindow int
	// Log receives errors. Required.
	Log *slog.Logger
}

// Stats are the publisher's gauges and counters, in events (a batch of n
// counts n).
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
	now     func() time.Time
	subject string
	log     *slog.Logger
	ackWait time.Duration
	window  int
	batch   int // most events per message

	queue    chan queued
	inflight chan inflight
	spool    *spool.Spool

	// stalled is set when JetStream stopped acking while the connection
	// is up; the next ack clears it. While set, Publish's events go to
	// the spool.
	stalled atomic.Bool

	// mu orders Publish against the end of the drain: once live is false
	// no Publish is sending to queue, so a last sweep empties it.
	mu   sync.RWMutex
	live bool

	nInflight, published, retried, replayed, dropped atomic.Int64
}

// queued is an event in the queue, with the time Publish took it: the
// bound on its time in memory counts from then.
type queued struct {
	ev *usage.Event
	at time.Time
}

// inflight is a message awaiting its ack: one event or a batch.
type inflight struct {
	data []byte
	n    int // events in it
	fut  jetstream.PubAckFuture
	at   time.Time // when Publish took its oldest event
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
	if o.MaxBatch <= 0 || o.MaxBatch > usage.MaxBatch {
		o.MaxBatch = usage.MaxBatch
	}
	// The live events' share of the pending acks is what the replayer
	// leaves (see accepting); keep it at least half.
	o.ReplayWindow = min(o.ReplayWindow, maxInflight/2)
	if o.Log == nil {
		return nil, errNoLogger
	}
	p := &Publisher{
		js:       js,
		now:      time.Now,
		subject:  usage.Subject,
		log:      o.Log,
		ackWait:  o.AckWait,
		window:   o.ReplayWindow,
		batch:    o.MaxBatch,
		queue:    make(chan queued, o.QueueSize),
		inflight: make(chan inflight, maxInflight),
		live:     true,
	}
	o.Spool.Count = usage.Count
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
		case p.queue <- queued{ev: ev, at: p.now()}:
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

// connected reports whether the connection to NATS is up. The replayer
// publishes whenever it is: its publishes are the probe that ends a stall.
func (p *Publisher) connected() bool { return p.js.Conn().IsConnected() }

// accepting reports whether live events may be published: the connection
// is up, acks flow, and the pending acks leave room for the replayer's
// window, so that PublishAsync never waits for a free slot.
func (p *Publisher) accepting() bool {
	if !p.connected() || p.stalled.Load() {
		return false
	}
	if p.js.PublishAsyncPending() >= maxInflight-p.window {
		p.stall(errPendingCeiling)
		return false
	}
	return true
}

// stall marks JetStream as not acking; the first ack ends it (acked).
func (p *Publisher) stall(err error) {
	if !p.stalled.Swap(true) {
		p.log.Warn("usage publish stalled: JetStream does not ack; events go to the spool until acks flow again", "err", err)
	}
}

// acked records that JetStream acknowledged a message: acks flow.
func (p *Publisher) acked() {
	if p.stalled.Load() && p.stalled.Swap(false) {
		p.log.Info("usage publish resumed: JetStream acks again")
	}
}

// send publishes queued events until ctx ends, then what is left in the
// queue, and stops taking events into the queue.
func (p *Publisher) send(ctx, drain context.Context) {
	defer close(p.inflight)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	batch := make([]queued, 0, p.batch)
loop:
	for {
		select {
		case q := <-p.queue:
			if len(p.queue) < lingerBatch {
				timer.Reset(linger)
				select {
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
				}
			}
			batch = p.sendBatch(drain, p.take(batch[:0], q))
			// Then what else is queued, up to the pending-ack slots, before
			// looking at ctx again.
			for n := len(batch); n < maxInflight && len(p.queue) > 0; n += len(batch) {
				batch = p.sendBatch(drain, p.take(batch[:0], <-p.queue))
			}
		case <-ctx.Done():
			break loop
		}
	}
	p.sendQueued(drain, batch)
	p.mu.Lock()
	p.live = false
	p.mu.Unlock()
	p.sendQueued(drain, batch) // what came in since; nothing more can
}

// sendQueued sends everything in the queue.
func (p *Publisher) sendQueued(drain context.Context, batch []queued) {
	for len(p.queue) > 0 {
		batch = p.sendBatch(drain, p.take(batch[:0], <-p.queue))
	}
}

// take appends first and then queued events, without waiting, to batch
// until it holds p.batch. Only the sender receives from the queue.
func (p *Publisher) take(batch []queued, first queued) []queued {
	batch = append(batch, first)
	for len(batch) < p.batch {
		select {
		case q := <-p.queue:
			batch = append(batch, q)
		default:
			return batch
		}
	}
	return batch
}

// sendBatch publishes the events of batch in one message, or spools them,
// and returns batch for reuse.
func (p *Publisher) sendBatch(drain context.Context, batch []queued) []queued {
	live := drain.Err() == nil && p.accepting()
	now := p.now()
	msg := usage.NewMessage(len(batch))
	var first *usage.Event
	var oldest time.Time
	for _, q := range batch {
		// An event that already waited its AckWait in the queue goes to
		// disk now rather than wait for an ack as well.
		if !live || now.Sub(q.at) >= p.ackWait {
			p.spool.Put(q.ev)
			continue
		}
		if err := msg.Add(q.ev); err != nil { // cannot happen for this struct; never lose the count silently
			p.dropped.Add(1)
			p.log.Error("usage event dropped: encode", "event_id", q.ev.ID, "key_id", q.ev.KeyID, "err", err)
			continue
		}
		if first == nil {
			first, oldest = q.ev, q.at
		}
	}
	clear(batch) // let the events go
	if msg.Len() == 0 {
		return batch
	}
	data, id := msg.Bytes()
	// A batch's events carry their own trace context; only a message of
	// one event has a message-level one.
	var header nats.Header
	if msg.Len() == 1 {
		header = usagejs.TraceHeader(first.TraceParent, first.TraceState)
	}
	p.publish(drain, data, msg.Len(), id, header, oldest)
	return batch
}

// publish sends one message of n events under the message id id, or
// spools it as it is when that fails.
func (p *Publisher) publish(drain context.Context, data []byte, n int, id string, header nats.Header, at time.Time) {
	// Dedup layer 1 (pkg/ledger): the message id. The stall wait is short:
	// accepting keeps the pending acks below the ceiling, so a wait for a
	// slot means the replayer's window is full as well.
	fut, err := p.publishAsync(data, header, jetstream.WithMsgID(id), jetstream.WithStallWait(linger))
	if err != nil {
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			p.stall(err)
		}
		p.failed(err)
		p.spool.Put(spool.Bytes(data))
		return
	}
	p.nInflight.Add(int64(n))
	select {
	case p.inflight <- inflight{data: data, n: n, fut: fut, at: at}:
	case <-drain.Done():
		p.nInflight.Add(-int64(n))
		p.spool.Put(spool.Bytes(data))
	}
}

// publishAsync publishes one message, with header (the trace
// context) when it is not nil; without one it allocates no header of its
// own beyond what PublishAsync does.
func (p *Publisher) publishAsync(data []byte, header nats.Header, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if header == nil {
		return p.js.PublishAsync(p.subject, data, opts...)
	}
	return p.js.PublishMsgAsync(&nats.Msg{Subject: p.subject, Data: data, Header: header}, opts...)
}

// reap awaits acknowledgements in publish order; what fails or waits too
// long goes to the spool, and marks the publisher stalled.
func (p *Publisher) reap(drain context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for f := range p.inflight {
		var err error
		select {
		case <-f.fut.Ok():
		default:
			timer.Reset(f.at.Add(p.ackWait).Sub(p.now()))
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
			p.acked()
			p.published.Add(int64(f.n))
		} else {
			if !errors.Is(err, errDrainDeadline) {
				p.stall(err)
			}
			p.failed(err)
			p.spool.Put(spool.Bytes(f.data))
		}
		p.nInflight.Add(-int64(f.n))
	}
}

var (
	errNoLogger       = errors.New("publisher logger not set")
	errAckWait        = errors.New("no ack within the ack wait; event spooled")
	errPendingCeiling = errors.New("pending acks at the ceiling")
	errDrainDeadline  = errors.New("drain deadline passed; event spooled")
)

func (p *Publisher) failed(err error) {
	if n := p.retried.Add(1); n%1000 == 1 {
		p.log.Warn("usage publish failed; event goes to the spool and is replayed later", "err", err, "failures", n)
	}
}

// logDrop logs an event the spool had to drop: a last record of it.
// A batch is logged event by event.
func (p *Publisher) logDrop(rec spool.Record, err error) {
	switch r := rec.(type) {
	case *usage.Event:
		p.log.Error("usage event dropped", "reason", err.Error(), "event_id", r.ID, "key_id", r.KeyID)
	case spool.Bytes:
		evs, _ := usage.Split(r)
		for _, b := range evs {
			var ev struct {
				ID    string `json:"id"`
				KeyID string `json:"key_id"`
			}
			_ = json.Unmarshal(b, &ev)
			p.log.Error("usage event dropped", "reason", err.Error(), "event_id", ev.ID, "key_id", ev.KeyID)
		}
	}
}
