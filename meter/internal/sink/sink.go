// Package sink moves usage events from a JetStream pull consumer into a
// store, one batch at a time, acking the queue only after the store has the
// batch. A crash anywhere in between leaves the messages unacked: JetStream
// redelivers them and the store collapses the second copy (usage_events is a
// ReplacingMergeTree read with FINAL), so nothing is lost and nothing counts
// twice.
//
// One batch goes through these steps (the next batch's steps 1 and 2 run
// while this one is in steps 3 and 4):
//
//  1. Take the messages waiting in the stream, up to about BatchSize events.
//     A message holds one event or a batch of up to usage.MaxBatch of them
//     (see usage.Split), so a take asks for BatchSize divided by the events
//     per message of the last take. When fewer were waiting, the next take
//     is MaxWait after this one: events gather in the stream and arrive in
//     one delivery, instead of being pushed to the meter one by one (a
//     wake-up of the meter and a write by NATS each).
//  2. Split each message into its events, then decode and price each event.
//     What cannot be stored (bad JSON, failed validation, out-of-range
//     values) is published to the dead-letter subject with the reason, so it
//     never blocks the stream: a single-event message, or a batch whose array
//     is malformed, as a whole, and the message is terminated; a poison event
//     of a batch on its own, with its index, and the batch's other events are
//     stored and the message acked with them. When a dead-letter publish
//     fails the message contributes no row and is handed back for a later
//     redelivery. An unknown model is not a reason: the row is stored with
//     cost 0 and no price version, and a warning is logged.
//  3. Write all rows, with one insert per BatchSize rows (one, unless the
//     take held more events than its estimate). On failure, retry the same
//     rows with exponential backoff, forever, while telling JetStream the
//     messages are in progress so that no other replica gets them meanwhile.
//  4. Ack every message.
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// Headers the sink adds to a dead letter, next to usage.DeadLetterReasonHeader.
// DeadLetterBatchIndexHeader is set only on the dead letter of one event of
// a batch: its 0-based index in the batch's array.
const (
	DeadLetterSubjectHeader    = "Qyai-Dead-Letter-Subject"
	DeadLetterSequenceHeader   = "Qyai-Dead-Letter-Stream-Sequence"
	DeadLetterBatchIndexHeader = "Qyai-Dead-Letter-Batch-Index"
)

// Fetcher is the part of a JetStream pull consumer the sink uses.
type Fetcher interface {
	FetchNoWait(batch int) (jetstream.MessageBatch, error)
}

// Publisher publishes dead letters and waits for the stream to store them.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Writer stores rows. Write stores all of them or returns an error; storing
// the same rows twice must not count them twice when read back.
type Writer interface {
	Write(ctx context.Context, rows []Row) error
}

// Config tunes a Sink. Zero durations take the defaults named on each field.
type Config struct {
	// BatchSize is the most events per insert, and about the most per
	// fetch (see step 1).
	BatchSize int
	// MaxWait is the longest an event waits in the stream for the meter
	// to take it (when less than a batch is waiting).
	MaxWait time.Duration
	// AckWait is the consumer's ack wait: the sink reports progress every
	// third of it while a batch is in hand.
	AckWait time.Duration
	// DrainTimeout is how long, after Run's context is done, the sink keeps
	// retrying the insert of the batch in hand. Default 10 s.
	DrainTimeout time.Duration
	// WriteTimeout bounds one insert attempt. Default AckWait/3.
	WriteTimeout time.Duration
	// BackoffMin and BackoffMax bound the delay between insert attempts.
	// Defaults 100 ms and 5 s.
	BackoffMin, BackoffMax time.Duration
	// Tracer, when set, records a span per batch insert ("INSERT
	// usage_events"), linked to the gateway request spans of the events it
	// writes, whose trace context Propagator reads from each event (or, for
	// a single event without one, from its message's headers). Nil means no
	// spans.
	Tracer     trace.Tracer
	Propagator propagation.TextMapPropagator
}

func (c Config) withDefaults() (Config, error) {
	if c.BatchSize < 1 || c.MaxWait <= 0 || c.AckWait <= 0 {
		return c, fmt.Errorf("sink config: batch size %d, max wait %s and ack wait %s must be positive",
			c.BatchSize, c.MaxWait, c.AckWait)
	}
	if c.Tracer == nil || c.Propagator == nil {
		c.Tracer, c.Propagator = noop.NewTracerProvider().Tracer(""), propagation.TraceContext{}
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = c.AckWait / 3
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 100 * time.Millisecond
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = max(5*time.Second, c.BackoffMin)
	}
	return c, nil
}

// Sink is the consume-price-insert-ack loop. Any number of sinks, in any
// number of processes, may share one durable consumer.
type Sink struct {
	src    Fetcher
	dlq    Publisher
	w      Writer
	prices *pricing.Table
	log    *slog.Logger
	cfg    Config
	m      instruments
	// perMessage is the events per message of the last fetch (at least 1),
	// which sizes the next; only Run's goroutine uses it.
	perMessage int
}

type instruments struct {
	inserted, batches, insertErrors  metric.Int64Counter
	deadLettered, deadLetterErrors   metric.Int64Counter
	unpriced, duplicates, fetchError metric.Int64Counter
	insertSeconds                    metric.Float64Histogram
}

// New returns a Sink reading from src, dead-lettering through dlq, writing
// to w, pricing with prices and counting on meter.
func New(src Fetcher, dlq Publisher, w Writer, prices *pricing.Table, log *slog.Logger, meter metric.Meter, cfg Config) (*Sink, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Sink{src: src, dlq: dlq, w: w, prices: prices, log: log, cfg: cfg, perMessage: 1}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	s.m.inserted = counter("meter.events.inserted", "Usage events written to ClickHouse (before acking them).")
	s.m.batches = counter("meter.batches.inserted", "Successful ClickHouse batch inserts.")
	s.m.insertErrors = counter("meter.insert.errors", "Failed ClickHouse insert attempts (each is retried).")
	s.m.deadLettered = counter("meter.events.dead_lettered", "Dead letters published: whole messages (a single event, or a batch whose array is malformed) and single events of a batch.")
	s.m.deadLetterErrors = counter("meter.dead_letter.errors", "Failed dead-letter publishes (the message is redelivered later).")
	s.m.unpriced = counter("meter.events.unpriced", "Events stored with cost 0 because no price covers their model.")
	s.m.duplicates = counter("meter.events.duplicates", "Events skipped because the same id was already in the batch.")
	s.m.fetchError = counter("meter.fetch.errors", "Failed fetches from JetStream.")
	s.m.insertSeconds, err = meter.Float64Histogram("meter.insert.duration",
		metric.WithDescription("Duration of one ClickHouse insert attempt."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("create sink metrics: %w", err)
	}
	// Export every counter from the start: an alert on the rate of a
	// series that does not exist yet never fires.
	for _, c := range []metric.Int64Counter{s.m.inserted, s.m.batches, s.m.insertErrors, s.m.deadLettered,
		s.m.deadLetterErrors, s.m.unpriced, s.m.duplicates, s.m.fetchError} {
		c.Add(context.Background(), 0)
	}
	return s, nil
}

// Run processes batches until ctx is done, then stores and acks the batches
// in hand (retrying for at most DrainTimeout) and returns.
//
// Two stages overlap: while one batch is being inserted and acked, the next
// one is fetched, decoded and priced (at most one batch waits between
// them). Batches are inserted one at a time, in the order they were
// fetched, and each is acked only after its own insert. Every batch in hand,
// waiting or being inserted, reports progress to JetStream.
func (s *Sink) Run(ctx context.Context) {
	ready := make(chan *batch, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for b := range ready {
			s.commit(ctx, b)
		}
	})

	delay := s.cfg.BackoffMin
	var last time.Time // start of the last fetch
	drained := false   // it found less than a batch waiting
	for ctx.Err() == nil {
		if drained {
			// Let the next events gather in the stream.
			if sleep(ctx, s.cfg.MaxWait-time.Since(last)); ctx.Err() != nil {
				break
			}
		}
		// What a fetch brings is stored before Run returns.
		last = time.Now()
		want := max(1, s.cfg.BatchSize/s.perMessage)
		msgs, err := s.fetch(want)
		drained = err == nil && len(msgs) < want
		if err != nil {
			s.m.fetchError.Add(context.WithoutCancel(ctx), 1)
			s.log.WarnContext(ctx, "fetch usage events", "retry_in", delay, "err", err)
			sleep(ctx, delay)
			delay = min(2*delay, s.cfg.BackoffMax)
			continue
		}
		delay = s.cfg.BackoffMin
		if len(msgs) == 0 {
			continue
		}
		b := s.prepare(ctx, msgs)
		if b == nil {
			continue
		}
		ready <- b
	}
	close(ready)
	wg.Wait()
}

// batch is one fetched batch, decoded and priced, on its way to the store.
type batch struct {
	rows  []Row
	toAck []jetstream.Msg
	// links are the sampled gateway spans of the rows' events.
	links []trace.Link
	// hard is the batch's drain context (see drainContext).
	hard         context.Context
	cancel       context.CancelFunc
	stopProgress func()
}

// drainContext returns a context that is not done when ctx is, but
// DrainTimeout after both ctx is done and drainContext was called: a batch
// fetched while shutting down still gets the whole drain time.
func (s *Sink) drainContext(ctx context.Context) (context.Context, context.CancelFunc) {
	hard, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var timer *time.Timer
	var mu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		timer = time.AfterFunc(s.cfg.DrainTimeout, cancel)
	})
	return hard, func() {
		stop()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

func (s *Sink) fetch(n int) ([]jetstream.Msg, error) {
	mb, err := s.src.FetchNoWait(n)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	msgs := make([]jetstream.Msg, 0, 64)
	for m := range mb.Messages() {
		msgs = append(msgs, m)
	}
	if err := mb.Error(); err != nil && len(msgs) == 0 && !errors.Is(err, nats.ErrTimeout) {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	return msgs, nil
}

// prepare runs step 2 on one fetched batch: split, decode, price,
// dead-letter the poison, drop copies of an event within the batch. It acks
// at once a batch left without rows and returns nil for it.
func (s *Sink) prepare(ctx context.Context, msgs []jetstream.Msg) *batch {
	hard, cancel := s.drainContext(ctx)
	b := &batch{hard: hard, cancel: cancel, stopProgress: s.reportProgress(msgs)}
	b.rows = make([]Row, 0, len(msgs))
	b.toAck = make([]jetstream.Msg, 0, len(msgs))
	seen := make(map[string]bool, len(msgs))
	unpriced := map[string]int{}
	var evs []pending
	events := 0
	for _, m := range msgs {
		var ok bool
		// A message is merged only once all its dead letters are published:
		// one handed back for redelivery must leave no row, and no id in
		// seen, behind.
		if evs, ok = s.decode(ctx, hard, m, evs[:0]); !ok {
			continue
		}
		events += len(evs)
		b.toAck = append(b.toAck, m)
		for _, ev := range evs {
			if ev.row.PriceVersion == "" {
				unpriced[PricedModel(ev.row.Event)]++
			}
			if seen[ev.row.Event.ID] { // dedup layer 2 (pkg/ledger): once per batch
				s.m.duplicates.Add(hard, 1)
				continue
			}
			seen[ev.row.Event.ID] = true
			b.rows = append(b.rows, ev.row)
			if ev.link.SpanContext.IsValid() {
				b.links = append(b.links, ev.link)
			}
		}
	}
	if len(b.toAck) > 0 {
		s.perMessage = min(max(1, (events+len(b.toAck)-1)/len(b.toAck)), usage.MaxBatch)
	}
	for model, n := range unpriced {
		// Still a real request: stored at cost 0 so that finance sees it.
		s.log.WarnContext(ctx, "no price for model: events stored with cost 0 and no price version",
			"model", model, "events", n)
		s.m.unpriced.Add(hard, int64(n))
	}
	if len(b.rows) == 0 {
		b.stopProgress()
		s.ack(context.WithoutCancel(ctx), b.toAck)
		cancel()
		return nil
	}
	return b
}

// pending is one event of a message, priced, on its way to the batch.
type pending struct {
	row Row
	// link is the event's sampled gateway span; zero when it has none.
	link trace.Link
}

// decode appends to evs the events of m that can be stored and returns
// them, with false when m contributes nothing to the batch and must not be
// acked with it: m was dead-lettered whole, or the dead letter of one of its
// events could not be published and m was handed back for redelivery.
func (s *Sink) decode(ctx, hard context.Context, m jetstream.Msg, evs []pending) ([]pending, bool) {
	raws, err := usage.Split(m.Data())
	if err != nil {
		s.deadLetter(hard, m, err)
		return evs, false
	}
	batched := usage.IsBatch(m.Data())
	for i, raw := range raws {
		e, err := usage.Decode(raw)
		var row Row
		if err == nil {
			row, err = Price(s.prices, e)
		}
		switch {
		case err == nil || errors.Is(err, ErrUnpriced):
			evs = append(evs, pending{row: row, link: s.link(ctx, m, &e, batched)})
		case !batched:
			s.deadLetter(hard, m, err)
			return evs, false
		case s.publishDeadLetter(hard, m, raw, i, err) != nil:
			// The events dead-lettered before this one are published
			// again on redelivery, under the same message ids, so the
			// dead-letter stream keeps one copy of each.
			_ = m.NakWithDelay(s.cfg.BackoffMax)
			return evs, false
		}
	}
	return evs, true
}

// link returns a link to the gateway span of e, from the trace context e
// carries, or, for a single-event message e without one, from the headers of
// m (older gateways sent it only there). It returns the zero link when there
// is none: the gateway sends it only for sampled spans. There is one link
// per sampled event; the tracer's span limits cap how many a span keeps.
func (s *Sink) link(ctx context.Context, m jetstream.Msg, e *usage.Event, batched bool) trace.Link {
	var carrier propagation.TextMapCarrier
	switch {
	case e.TraceParent != "":
		carrier = propagation.MapCarrier{usagejs.TraceParentHeader: e.TraceParent, usagejs.TraceStateHeader: e.TraceState}
	case !batched && m.Headers().Get(usagejs.TraceParentHeader) != "":
		carrier = usagejs.HeaderCarrier(m.Headers())
	default:
		return trace.Link{}
	}
	sc := trace.SpanContextFromContext(s.cfg.Propagator.Extract(ctx, carrier))
	if !sc.IsValid() {
		return trace.Link{}
	}
	return trace.Link{SpanContext: sc}
}

// commit runs steps 3 and 4 on a prepared batch: insert, then ack.
func (s *Sink) commit(ctx context.Context, b *batch) {
	defer b.cancel()
	defer b.stopProgress()
	// One span per batch, in a trace of its own: a batch serves many
	// requests, so it links to their spans rather than joining one trace.
	_, span := s.cfg.Tracer.Start(b.hard, "INSERT usage_events", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithNewRoot(), trace.WithLinks(b.links...))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("db.system.name", "clickhouse"),
			attribute.String("db.operation.name", "INSERT"),
			attribute.String("db.collection.name", "usage_events"),
			attribute.Int("db.operation.batch.size", len(b.rows)),
			attribute.Int("qyai.batch.messages", len(b.toAck)),
		)
	}
	// Rows past BatchSize go in further inserts; a crash between two only
	// means a redelivery, which FINAL collapses.
	for rows := b.rows; len(rows) > 0; {
		n := min(len(rows), s.cfg.BatchSize)
		if !s.write(ctx, b.hard, rows[:n]) {
			abandon(span, b)
			return
		}
		s.m.batches.Add(b.hard, 1)
		rows = rows[n:]
	}
	b.stopProgress()
	s.ack(context.WithoutCancel(ctx), b.toAck)
	s.m.inserted.Add(b.hard, int64(len(b.rows)))
}

// abandon hands a batch back at shutdown, with the store unreachable.
func abandon(span trace.Span, b *batch) {
	span.SetStatus(codes.Error, "insert abandoned at shutdown; JetStream redelivers the batch")
	b.stopProgress()
	// Hand the batch back so that another replica takes it now rather than
	// after AckWait.
	for _, m := range b.toAck {
		_ = m.Nak()
	}
}

// write inserts rows, retrying with backoff until it succeeds (true) or hard
// is done (false).
func (s *Sink) write(ctx, hard context.Context, rows []Row) bool {
	delay := s.cfg.BackoffMin
	for attempt := 1; ; attempt++ {
		start := time.Now()
		wctx, cancel := context.WithTimeout(hard, s.cfg.WriteTimeout)
		err := s.w.Write(wctx, rows)
		cancel()
		s.m.insertSeconds.Record(hard, time.Since(start).Seconds())
		if err == nil {
			if attempt > 1 {
				s.log.InfoContext(ctx, "usage batch inserted after retries", "rows", len(rows), "attempts", attempt)
			}
			return true
		}
		s.m.insertErrors.Add(hard, 1)
		if hard.Err() != nil {
			s.log.ErrorContext(ctx, "insert usage batch: giving up at shutdown; JetStream redelivers it",
				"rows", len(rows), "attempts", attempt, "err", err)
			return false
		}
		s.log.WarnContext(ctx, "insert usage batch", "rows", len(rows), "attempt", attempt, "retry_in", delay, "err", err)
		sleep(hard, delay)
		delay = min(2*delay, s.cfg.BackoffMax)
	}
}

// ack acks every message: plain acks (one publish each, no round trip),
// then a double ack on the last one, which returns once the server has
// processed it and so, on the same connection, all before it. A lost ack
// only means a redelivery, which the store collapses.
func (s *Sink) ack(ctx context.Context, msgs []jetstream.Msg) {
	if len(msgs) == 0 {
		return
	}
	failed := 0
	for _, m := range msgs[:len(msgs)-1] {
		if err := m.Ack(); err != nil {
			failed++
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := msgs[len(msgs)-1].DoubleAck(actx)
	if failed > 0 || err != nil {
		s.log.WarnContext(ctx, "ack usage batch: unacked messages will be redelivered and collapsed by FINAL",
			"failed", failed, "last_err", err)
	}
}

// deadLetter publishes all of m to the dead-letter subject with reason,
// then terminates m. When the publish fails m is left for redelivery: a dead
// letter is never dropped.
func (s *Sink) deadLetter(ctx context.Context, m jetstream.Msg, reason error) {
	if err := s.publishDeadLetter(ctx, m, m.Data(), -1, reason); err != nil {
		_ = m.NakWithDelay(s.cfg.BackoffMax)
		return
	}
	if err := m.Term(); err != nil {
		s.log.WarnContext(ctx, "terminate dead-lettered message", "subject", m.Subject(), "err", err)
	}
}

// publishDeadLetter publishes data, taken from m, to the dead-letter subject
// with reason and m's headers, and waits for the stream to store it. data is
// all of m when index is negative, else m's batch event at index.
func (s *Sink) publishDeadLetter(ctx context.Context, m jetstream.Msg, data []byte, index int, reason error) error {
	out := nats.NewMsg(usage.DeadLetterSubject)
	out.Data = data
	for k, v := range m.Headers() {
		if k != jetstream.MsgIDHeader {
			out.Header[k] = v
		}
	}
	// Header values cannot hold line breaks; joined errors have them.
	out.Header.Set(usage.DeadLetterReasonHeader, strings.ReplaceAll(reason.Error(), "\n", "; "))
	out.Header.Set(DeadLetterSubjectHeader, m.Subject())
	logArgs := []any{"reason", reason.Error()}
	var id string
	if md, err := m.Metadata(); err == nil {
		seq := strconv.FormatUint(md.Sequence.Stream, 10)
		out.Header.Set(DeadLetterSequenceHeader, seq)
		logArgs = append(logArgs, "stream_seq", md.Sequence.Stream)
		// A redelivered poison message, or poison event, is dead-lettered once.
		id = md.Stream + "-" + seq
	}
	if index >= 0 {
		i := strconv.Itoa(index)
		out.Header.Set(DeadLetterBatchIndexHeader, i)
		logArgs = append(logArgs, "batch_index", index)
		if id != "" {
			id += "-" + i
		}
	}
	var opts []jetstream.PublishOpt
	if id != "" {
		opts = append(opts, jetstream.WithMsgID(id))
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ack, err := s.dlq.PublishMsg(pctx, out, opts...)
	if err != nil {
		s.m.deadLetterErrors.Add(ctx, 1)
		s.log.ErrorContext(ctx, "publish dead letter: message left for redelivery", append(logArgs, "err", err)...)
		return fmt.Errorf("publish dead letter: %w", err)
	}
	if ack.Duplicate {
		// Published before the message was handed back: already counted.
		return nil
	}
	s.m.deadLettered.Add(ctx, 1)
	s.log.WarnContext(ctx, "usage dead letter published", logArgs...)
	return nil
}

// reportProgress tells JetStream every AckWait/3 that msgs are still being
// worked on, until the returned function is called (which waits for the
// reporter to stop, so that no progress report follows an ack).
func (s *Sink) reportProgress(msgs []jetstream.Msg) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(s.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
