// Package publish ships usage events to NATS JetStream off the request
// path. Publish never blocks: it hands the event to a bounded queue that one
// worker drains with asynchronous JetStream publishes, each carrying the
// event id as Nats-Msg-Id so that a retried publish is deduplicated by the
// stream. Failed publishes are retried with backoff until they are
// acknowledged or the publisher is closed.
package publish

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
)

// Stats are the publisher's counters.
type Stats struct {
	Queued    int64 // events waiting in memory (queue + retries + in flight)
	Published int64 // acknowledged by JetStream
	Retried   int64 // publish attempts that failed and were retried
	Dropped   int64 // events lost because the queue was full or shutdown timed out
}

// Publisher is the asynchronous usage event publisher.
type Publisher struct {
	js      jetstream.JetStream
	subject string
	log     *slog.Logger
	queue   chan *usage.Event

	mu      sync.Mutex
	retries []*usage.Event
	wake    chan struct{}

	inflight chan inflight
	closed   atomic.Bool

	queued, published, retried, dropped atomic.Int64
}

type inflight struct {
	ev  *usage.Event
	fut jetstream.PubAckFuture
}

// New returns a publisher with a queue of size events. js should be made
// with jetstream.WithPublishAsyncTimeout so lost acks turn into retries.
func New(js jetstream.JetStream, size int, log *slog.Logger) *Publisher {
	return &Publisher{
		js:       js,
		subject:  usage.Subject,
		log:      log,
		queue:    make(chan *usage.Event, size),
		wake:     make(chan struct{}, 1),
		inflight: make(chan inflight, 4096),
	}
}

// Publish enqueues ev without blocking.
func (p *Publisher) Publish(ev *usage.Event) {
	if p.closed.Load() {
		p.dropped.Add(1)
		p.log.Error("usage event dropped: publisher closed", "event_id", ev.ID, "key_id", ev.KeyID)
		return
	}
	select {
	case p.queue <- ev:
		p.queued.Add(1)
	default:
		p.dropped.Add(1)
		p.log.Error("usage event dropped: queue full", "event_id", ev.ID, "key_id", ev.KeyID)
	}
}

// Stats returns the counters.
func (p *Publisher) Stats() Stats {
	return Stats{Queued: p.queued.Load(), Published: p.published.Load(), Retried: p.retried.Load(), Dropped: p.dropped.Load()}
}

// Run publishes until ctx ends and then drains what is left until drain
// ends. It returns when everything queued was acknowledged or drain ended.
func (p *Publisher) Run(ctx, drain context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.reap()
	}()
	p.send(ctx, drain)
	close(p.inflight)
	wg.Wait()
}

// send takes events from the retry list or the queue and publishes them.
func (p *Publisher) send(ctx, drain context.Context) {
	backoff := time.Duration(0)
	for {
		if backoff > 0 {
			select {
			case <-drain.Done():
				p.abandon()
				return
			case <-time.After(backoff):
			}
		}
		ev := p.popRetry()
		if ev == nil {
			select {
			case ev = <-p.queue:
			case <-p.wake:
				continue
			case <-ctx.Done():
				p.closed.Store(true)
				if p.queued.Load() == 0 {
					return
				}
				select {
				case ev = <-p.queue:
				case <-p.wake:
					continue
				case <-drain.Done():
					p.abandon()
					return
				case <-time.After(50 * time.Millisecond):
					continue // in flight acks may turn into retries
				}
			}
		}
		data, err := ev.Marshal()
		if err != nil { // cannot happen for this struct; never lose the count silently
			p.queued.Add(-1)
			p.dropped.Add(1)
			p.log.Error("usage event dropped: encode", "event_id", ev.ID, "err", err)
			continue
		}
		fut, err := p.js.PublishAsync(p.subject, data, jetstream.WithMsgID(ev.ID))
		if err != nil {
			p.retry(ev, err)
			backoff = nextBackoff(backoff)
			continue
		}
		backoff = 0
		select {
		case p.inflight <- inflight{ev: ev, fut: fut}:
		case <-drain.Done():
			p.abandon()
			return
		}
	}
}

// reap waits for acknowledgements in publish order.
func (p *Publisher) reap() {
	for f := range p.inflight {
		select {
		case <-f.fut.Ok():
			p.published.Add(1)
			p.queued.Add(-1)
		case err := <-f.fut.Err():
			p.retry(f.ev, err)
		}
	}
}

func (p *Publisher) retry(ev *usage.Event, err error) {
	p.retried.Add(1)
	if p.retried.Load()%1000 == 1 {
		p.log.Warn("usage publish failed; will retry", "err", err)
	}
	p.mu.Lock()
	p.retries = append(p.retries, ev)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Publisher) popRetry() *usage.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.retries) == 0 {
		return nil
	}
	ev := p.retries[0]
	p.retries = p.retries[1:]
	return ev
}

// abandon counts what could not be published before the drain deadline.
func (p *Publisher) abandon() {
	n := p.queued.Load()
	if n > 0 {
		p.dropped.Add(n)
		p.log.Error("usage events not published before shutdown deadline", "count", n)
	}
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
