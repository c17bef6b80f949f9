// Package benchmeter is the load tool behind `make bench-meter`: it measures
// the metering pipeline end to end, publisher -> NATS JetStream -> meter ->
// ClickHouse, on whatever machine runs it.
//
// For each phase (a fixed rate, or as fast as possible) it publishes
// realistic usage events (pkg/usage.Event JSON, unique ids, JetStream async
// publish with the event id as Nats-Msg-Id, as the gateway does) for
// Duration, while a poller reads count() of usage_events every PollEvery.
// Lag is the time from an event's publish to the first poll that sees it:
// the rows of one stream become visible in publish order (one meter
// replica, in-order fetches, one insert at a time), so the first Count
// events are the ones visible when the count reaches Count. The poll period
// bounds the error (it adds 0..PollEvery).
//
// After the last phase it checks that ClickHouse holds every published
// event exactly once. It is a benchmark, not a test: it reports numbers and
// verdicts against the target and fails only when it cannot measure.
package benchmeter

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/natsconn"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// Config is what one run measures.
type Config struct {
	// NATSURL is one NATS URL or a comma-separated list of a cluster's
	// servers, as the services' NATS_URL.
	NATSURL string
	// Replicas is the replica count of the usage streams when the bench
	// creates them; 0 keeps an existing stream's count (1 when creating),
	// so that a run against a clustered stack never shrinks its R3 streams.
	Replicas       int
	ClickHouseAddr string
	Database       string
	// Rates lists the phases: events per second, 0 for as fast as possible.
	Rates []int
	// Duration is how long each phase publishes.
	Duration time.Duration
	// DrainTimeout bounds the wait for the last events of a phase.
	DrainTimeout time.Duration
	// PollEvery is the period of the count() poll.
	PollEvery time.Duration
	// Keys is the number of API keys the events spread over.
	Keys int
	// MaxPending bounds the async publishes awaiting their PubAck.
	MaxPending int
	// TargetRate and TargetP99 are the verdict's thresholds.
	TargetRate int
	TargetP99  time.Duration
	// PIDs names processes whose CPU use is reported ("meter=123").
	PIDs map[string]int
	// Command and Revision are printed with the results.
	Command, Revision string
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.NATSURL == "" || c.ClickHouseAddr == "" || c.Database == "" {
		errs = append(errs, errors.New("-nats, -clickhouse and -database are required"))
	} else if err := natsconn.ValidateURLs(c.NATSURL); err != nil {
		errs = append(errs, fmt.Errorf("-nats: %w", err))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("-replicas %d: want 0 (keep the stream's) to 5", c.Replicas))
	}
	if len(c.Rates) == 0 {
		errs = append(errs, errors.New("-rates: want at least one phase"))
	}
	for _, r := range c.Rates {
		if r < 0 {
			errs = append(errs, fmt.Errorf("-rates: %d is negative", r))
		}
	}
	if c.Duration <= 0 || c.DrainTimeout <= 0 || c.PollEvery <= 0 {
		errs = append(errs, errors.New("-duration, -drain-timeout and -poll must be positive"))
	}
	if c.Keys < 1 || c.MaxPending < 1 {
		errs = append(errs, errors.New("-keys and -max-pending must be positive"))
	}
	return errors.Join(errs...)
}

// Main parses args, runs the phases and writes the Markdown report to stdout.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parse(args, stderr)
	if err != nil {
		return err
	}
	// Progress lines: best effort, the report on stdout is what counts.
	log := func(format string, a ...any) { _, _ = fmt.Fprintf(stderr, "benchmeter: "+format+"\n", a...) }
	rep, err := Run(ctx, cfg, log)
	if err != nil {
		return err
	}
	return rep.WriteMarkdown(stdout)
}

func parse(args []string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("benchmeter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	var rates, pids string
	fs.StringVar(&c.NATSURL, "nats", "nats://127.0.0.1:4222", "NATS URL, or a comma-separated list of a cluster's servers")
	fs.IntVar(&c.Replicas, "replicas", 0, "replicas of the usage streams; 0 keeps an existing stream's (1 when creating it)")
	fs.StringVar(&c.ClickHouseAddr, "clickhouse", "127.0.0.1:9000", "ClickHouse native address")
	fs.StringVar(&c.Database, "database", "qyai", "ClickHouse database")
	fs.StringVar(&rates, "rates", "20000,max", "phases: events per second, or max")
	fs.DurationVar(&c.Duration, "duration", 30*time.Second, "publishing time of each phase")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 90*time.Second, "longest wait for a phase's last events")
	fs.DurationVar(&c.PollEvery, "poll", 50*time.Millisecond, "count() poll period")
	fs.IntVar(&c.Keys, "keys", 1000, "API keys the events spread over")
	fs.IntVar(&c.MaxPending, "max-pending", 8192, "async publishes awaiting their ack")
	fs.IntVar(&c.TargetRate, "target-rate", 20000, "target: sustained events per second")
	fs.DurationVar(&c.TargetP99, "target-p99", 2*time.Second, "target: lag p99")
	fs.StringVar(&pids, "pids", "", "processes to report CPU of, name=pid,...")
	fs.StringVar(&c.Command, "command", "", "command that reproduces the run")
	fs.StringVar(&c.Revision, "revision", "", "source revision measured")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	for _, r := range strings.Split(rates, ",") {
		r = strings.TrimSpace(r)
		if r == "max" {
			c.Rates = append(c.Rates, 0)
			continue
		}
		n, err := strconv.Atoi(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("-rates: %q is not a number or max", r))
		}
		c.Rates = append(c.Rates, n)
	}
	c.PIDs = map[string]int{}
	if pids != "" {
		for _, kv := range strings.Split(pids, ",") {
			k, v, ok := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if !ok || err != nil {
				errs = append(errs, fmt.Errorf("-pids: %q is not name=pid", kv))
				continue
			}
			c.PIDs[k] = n
		}
	}
	return c, errors.Join(append(errs, c.Validate())...)
}

// ensureStream ensures the usage streams with replicas copies; 0 keeps the count
// of an existing USAGE stream (1 when there is none). EnsureStream applies the
// count it is given, so without this a bench against a clustered stack would
// shrink the R3 streams its gateways and meters made (STREAM_REPLICAS) to R1.
func ensureStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	if replicas == 0 {
		if s, err := js.Stream(ctx, usage.StreamName); err == nil {
			replicas = s.CachedInfo().Config.Replicas
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("look up stream %s: %w", usage.StreamName, err)
		}
	}
	if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: replicas}); err != nil {
		return fmt.Errorf("ensure stream: %w", err)
	}
	return nil
}

// Run measures every phase and checks that ClickHouse stored each published
// event once.
func Run(ctx context.Context, cfg Config, log func(string, ...any)) (*Report, error) {
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("qyai-benchmeter"))
	if err != nil {
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxPending))
	if err != nil {
		return nil, fmt.Errorf("create jetstream context: %w", err)
	}
	if err := ensureStream(ctx, js, cfg.Replicas); err != nil {
		return nil, err
	}
	// The publisher shares the machine: report its CPU too.
	pids := map[string]int{"publisher": os.Getpid()}
	maps.Copy(pids, cfg.PIDs)
	cfg.PIDs = pids
	conn, err := chschema.Open(ctx, chschema.Options{Addr: cfg.ClickHouseAddr, Database: cfg.Database, User: "default"})
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }() // it only polls counts

	rep := &Report{Config: cfg, Machine: describeMachine(), Started: time.Now()}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var total int
	for i, rate := range cfg.Rates {
		name := "max"
		if rate > 0 {
			name = strconv.Itoa(rate) + "/s"
		}
		log("phase %d: %s for %s", i+1, name, cfg.Duration)
		p, err := runPhase(ctx, cfg, js, conn, fmt.Sprintf("bench-%s-%d", run, i), rate)
		if err != nil {
			return nil, fmt.Errorf("phase %s: %w", name, err)
		}
		total += p.Published
		rep.Phases = append(rep.Phases, p)
		log("phase %d: published %d (%.0f/s), stored %.0f/s, lag p50 %s p99 %s", i+1, p.Published,
			p.PublishRate(), p.StoreRate(), p.Lag(0.5), p.Lag(0.99))
	}
	var rows, distinct uint64
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(event_id) FROM "+cfg.Database+".usage_events WHERE event_id LIKE ?",
		"bench-"+run+"-%").Scan(&rows, &distinct); err != nil {
		return nil, fmt.Errorf("count stored events: %w", err)
	}
	rep.Published, rep.Rows, rep.Distinct = total, rows, distinct
	return rep, nil
}

// Phase is one measured phase.
type Phase struct {
	Rate      int // target events per second; 0 = max
	Published int
	// PublishErrors counts events whose publish was not acknowledged.
	PublishErrors int
	// First and LastPublish bound the publishing; First and LastVisible
	// are when the first and the last event were seen in ClickHouse (zero
	// if never).
	FirstPublish, LastPublish, FirstVisible, LastVisible time.Time
	Drained                                              bool
	lags                                                 []time.Duration // sorted
	CPU                                                  map[string]time.Duration
}

// PublishRate is the events published per second.
func (p *Phase) PublishRate() float64 {
	return float64(p.Published) / p.LastPublish.Sub(p.FirstPublish).Seconds()
}

// StoreRate is the events stored per second, from the first event visible
// to the last: the pipeline's throughput (a pipeline that keeps up stores
// at the publish rate, shifted by its lag).
func (p *Phase) StoreRate() float64 {
	if p.LastVisible.IsZero() || !p.LastVisible.After(p.FirstVisible) {
		return 0
	}
	return float64(len(p.lags)) / p.LastVisible.Sub(p.FirstVisible).Seconds()
}

// Lag returns the q quantile of publish-to-visible times.
func (p *Phase) Lag(q float64) time.Duration {
	if len(p.lags) == 0 {
		return 0
	}
	return p.lags[int(q*float64(len(p.lags)-1))]
}

// runPhase publishes at rate (0: as fast as possible) for cfg.Duration and
// measures when each event becomes visible.
func runPhase(ctx context.Context, cfg Config, js jetstream.JetStream, conn driver.Conn, prefix string, rate int) (*Phase, error) {
	base, err := count(ctx, conn, cfg.Database)
	if err != nil {
		return nil, err
	}
	cpu0 := cpuTimes(cfg.PIDs)
	start := time.Now()

	var (
		mu       sync.Mutex
		samples  []sample
		pollErr  error
		pollDone = make(chan struct{})
		// pubDone is closed when publishing ended, with total set.
		pubDone = make(chan struct{})
		total   int
	)
	pctx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	published := make([]time.Time, 0, max(rate, 30000)*int(cfg.Duration.Seconds()+1))
	go func() {
		defer close(pollDone)
		t := time.NewTicker(cfg.PollEvery)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			n, err := count(pctx, conn, cfg.Database)
			at := time.Now()
			if err != nil {
				if pctx.Err() == nil {
					mu.Lock()
					pollErr = err
					mu.Unlock()
				}
				return
			}
			mu.Lock()
			samples = append(samples, sample{at, n - base})
			mu.Unlock()
			select {
			case <-pubDone:
				if n-base >= uint64(total) {
					return // everything published is visible
				}
			default:
			}
		}
	}()

	r := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(rate)))
	gen := newGenerator(r, cfg.Keys)
	var acks []jetstream.PubAckFuture
	pubErrs := 0
	end := start.Add(cfg.Duration)
	seq := 0
	for now := time.Now(); now.Before(end) && ctx.Err() == nil; now = time.Now() {
		due := seq + 1000 // as fast as possible: publish in chunks of 1000
		if rate > 0 {
			due = int(float64(rate) * now.Sub(start).Seconds())
			if due <= seq {
				time.Sleep(time.Millisecond)
				continue
			}
		}
		for ; seq < due; seq++ {
			ev := gen.event(fmt.Sprintf("%s-%d", prefix, seq), time.Now())
			b, err := ev.Marshal()
			if err != nil {
				return nil, err
			}
			msg := nats.NewMsg(usage.Subject)
			msg.Data = b
			published = append(published, time.Now())
			f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(ev.ID), jetstream.WithStallWait(time.Minute))
			if err != nil {
				pubErrs++
				continue
			}
			acks = append(acks, f)
		}
	}
	lastPublish := time.Now()
	total = len(published)
	close(pubDone)
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(cfg.DrainTimeout):
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if err != nil { // always: the future sends only failures
				pubErrs++ // the report gives the number, not the errors
			}
		default:
			pubErrs++ // never answered
		}
	}

	// Wait for the poller to see everything (or the drain timeout).
	select {
	case <-pollDone:
	case <-time.After(cfg.DrainTimeout):
		stopPoll()
		<-pollDone
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	stopPoll()
	mu.Lock()
	defer mu.Unlock()
	if pollErr != nil {
		return nil, fmt.Errorf("poll clickhouse: %w", pollErr)
	}
	p := &Phase{Rate: rate, Published: len(published), PublishErrors: pubErrs, FirstPublish: start,
		LastPublish: lastPublish, CPU: map[string]time.Duration{}}
	p.lags, p.FirstVisible, p.LastVisible = lags(published, samples)
	p.Drained = len(p.lags) == len(published)
	for name, c := range cpuTimes(cfg.PIDs) {
		p.CPU[name] = c - cpu0[name]
	}
	return p, nil
}

// sample is one poll: at time at, n rows were visible (since the phase
// began).
type sample struct {
	at time.Time
	n  uint64
}

// lags matches publish times with polls: event i (in publish order) became
// visible at the first sample with n > i. It returns the sorted lags of the
// events seen and when the first and the last of them were seen.
func lags(published []time.Time, samples []sample) (out []time.Duration, first, last time.Time) {
	i := 0
	for _, s := range samples {
		for ; i < len(published) && uint64(i) < s.n; i++ {
			if i == 0 {
				first = s.at
			}
			out = append(out, s.at.Sub(published[i]))
			last = s.at
		}
	}
	slices.Sort(out)
	return out, first, last
}

func count(ctx context.Context, conn driver.Conn, db string) (uint64, error) {
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".usage_events").Scan(&n); err != nil {
		return 0, fmt.Errorf("count usage_events: %w", err)
	}
	return n, nil
}

// generator makes realistic usage events: a skewed key popularity, the
// catalogue's models (an alias among them), streaming and not, cache hits.
type generator struct {
	r    *rand.Rand
	keys []string
	zipf *rand.Zipf
}

func newGenerator(r *rand.Rand, keys int) *generator {
	g := &generator{r: r, zipf: rand.NewZipf(r, 1.2, 1, uint64(keys-1))}
	for i := range keys {
		g.keys = append(g.keys, fmt.Sprintf("key_bench%04d", i))
	}
	return g
}

var benchModels = []struct{ model, upstream string }{
	{"deepseek-v4-flash", "deepseek-v4-flash"},
	{"deepseek-v4-pro", "deepseek-v4-pro"},
	{"deepseek-chat", "deepseek-v4-flash"},
	{"deepseek-reasoner", "deepseek-v4-flash"},
}

func (g *generator) event(id string, now time.Time) usage.Event {
	m := benchModels[g.r.IntN(len(benchModels))]
	latency := 200 + g.r.Int64N(8000)
	hit, miss := g.r.Int64N(4000), 50+g.r.Int64N(2000)
	out := 20 + g.r.Int64N(1500)
	reasoning := int64(0)
	if m.model == "deepseek-reasoner" {
		reasoning = out / 2
	}
	return usage.Event{
		SchemaVersion: usage.SchemaVersion, ID: id, RequestID: "req-" + id,
		StartedAt: now.Add(-time.Duration(latency) * time.Millisecond), FinishedAt: now,
		KeyID: g.keys[g.zipf.Uint64()], KeyPrefix: "sk-bench", Tier: "enterprise",
		Model: m.model, UpstreamModel: m.upstream, Thinking: reasoning > 0, Stream: g.r.IntN(2) == 0,
		Status: 200, Outcome: usage.OutcomeCompleted,
		PromptTokens: hit + miss, CacheHitTokens: hit, CacheMissTokens: miss,
		CompletionTokens: out, ReasoningTokens: reasoning, UsageSource: usage.SourceReported,
		LatencyMs: latency, TTFTMs: 150 + g.r.Int64N(500), Gateway: "bench",
	}
}
