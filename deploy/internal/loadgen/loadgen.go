// Package loadgen is the load generator behind `make bench`. It sends the
// same chat completions workload straight to the upstream simulator and
// through the gateway, in one run, and prints a Markdown table of what the
// gateway costs: throughput, latency added at p50 and p99, CPU time per
// request and memory.
//
// Optionally (Config.ReferenceURL) a third target, the reference, is
// measured in the two non-stream phases: a bare reverse proxy in front of
// the same simulator (deploy/cmd/refproxy), whose cost is the floor of what
// any Go HTTP proxy costs on the machine. It gets a table of its own and
// changes no target verdict.
//
// Three phases run in order; in each one the simulator is measured first,
// then the reference if any, then the gateway, so that all see the same
// machine a few seconds apart:
//
//  1. non-stream, closed loop: Concurrency workers each send a request as
//     soon as the previous one is answered;
//  2. open loop: Rate requests a second on a fixed timetable, whatever the
//     answers do; a request's latency counts from its scheduled start, so a
//     stall shows in the percentiles instead of silently slowing the sender
//     (no coordinated omission);
//  3. streaming, closed loop: StreamConcurrency workers, StreamTokens content
//     chunks per answer, each stream checked for exactly that many chunks
//     and a final [DONE].
//
// It is a benchmark, not a test: it reports numbers and target verdicts and
// fails only when it cannot measure (nothing answered).
package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Config is what one benchmark run measures.
type Config struct {
	// GatewayURL is the gateway's base URL (http://host:port); requests go to
	// GatewayURL + "/v1/chat/completions" with GatewayKey.
	GatewayURL string
	GatewayKey string
	// DirectURL is the simulator's base URL; requests go to
	// DirectURL + "/chat/completions" with DirectKey.
	DirectURL string
	DirectKey string
	// GatewayPID, when not zero, is the gateway process whose CPU time and
	// RSS are read from /proc around each gateway measurement.
	GatewayPID int
	// ReferenceURL, when set, is the base URL of a bare reverse proxy in
	// front of the simulator, measured in the non-stream phases as a
	// reference; requests go to ReferenceURL + "/v1/chat/completions" with
	// ReferenceKey. ReferencePID, when not zero, is its process, read from
	// /proc like GatewayPID. Empty: no reference.
	ReferenceURL string
	ReferenceKey string
	ReferencePID int
	// System lists the other processes of the stack (Redis, NATS, meter,
	// ClickHouse, admin), whose CPU time per gateway request is reported
	// phase by phase, with the gateway's own, as the whole system's cost.
	// SystemIdle is how long their idle CPU use is measured before the first
	// phase (subtracted from every round); Settle how long the last round of a
	// phase waits for the bookkeeping that trails its requests.
	System     []SystemProc
	SystemIdle time.Duration
	Settle     time.Duration
	// OpenStreams, when its Count > 0, runs the open-streams phase after
	// the others (it ignores Phases).
	OpenStreams OpenStreams

	// Duration is how long each target is measured in each phase.
	Duration time.Duration
	// Rounds splits each phase's Duration into that many slices per
	// target, alternating direct, (reference,) gateway, direct, ... so that
	// noise from other work on a shared machine falls on all alike. 1
	// measures direct for Duration, then the reference, then the gateway.
	Rounds int
	// Warmup is how long each target runs the phase's workload, unmeasured,
	// before its measurement.
	Warmup time.Duration
	// Concurrency is the number of workers of the non-stream closed loop.
	Concurrency int
	// Rate is the requests per second of the open loop.
	Rate int
	// StreamConcurrency is the number of workers of the streaming phase.
	StreamConcurrency int
	// StreamTokens is the completion tokens (content chunks) of each stream.
	StreamTokens int
	// RequestTimeout bounds one request.
	RequestTimeout time.Duration
	// Phases lists the phases to run, by name ("closed", "open", "stream");
	// empty runs all three. A subset is for profiling one workload.
	Phases []string

	// Command is the command line that reproduces the run, printed with
	// the results; Revision names the source tree measured.
	Command  string
	Revision string
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	checkURL := func(name, raw string) {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not an http(s) URL", name, raw))
		}
	}
	checkURL("gateway", c.GatewayURL)
	checkURL("direct", c.DirectURL)
	if c.ReferenceURL != "" {
		checkURL("reference", c.ReferenceURL)
	}
	if c.GatewayKey == "" {
		errs = append(errs, errors.New("key: the gateway API key is required"))
	}
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %d, want > 0", name, v))
		}
	}
	positive("rounds", c.Rounds)
	positive("concurrency", c.Concurrency)
	positive("rate", c.Rate)
	positive("stream-concurrency", c.StreamConcurrency)
	positive("stream-tokens", c.StreamTokens)
	if c.GatewayPID < 0 {
		errs = append(errs, fmt.Errorf("gateway-pid: %d, want >= 0", c.GatewayPID))
	}
	if c.ReferencePID < 0 {
		errs = append(errs, fmt.Errorf("reference-pid: %d, want >= 0", c.ReferencePID))
	}
	if err := c.OpenStreams.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := validateSystem(c.System); err != nil {
		errs = append(errs, err)
	}
	if len(c.System) > 0 && (c.SystemIdle <= 0 || c.Settle < 0) {
		errs = append(errs, fmt.Errorf("system-idle: %v, settle %v: want > 0 and >= 0", c.SystemIdle, c.Settle))
	}
	if rounds := max(c.Rounds, 1); c.Duration/time.Duration(rounds) < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("duration: %v in %d round(s), want >= 100ms a round", c.Duration, rounds))
	}
	if c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warmup: %v, want >= 0", c.Warmup))
	}
	for _, p := range c.Phases {
		if !validPhase(p) {
			errs = append(errs, fmt.Errorf("phases: unknown phase %q (want closed, open, stream or open-streams)", p))
		}
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout: %v, want > 0", c.RequestTimeout))
	}
	return errors.Join(errs...)
}

// Main is the loadgen command: it parses args, runs the benchmark, prints
// the results as Markdown to stdout and its progress to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	fs.StringVar(&c.GatewayURL, "gateway", "", "gateway base URL, e.g. http://127.0.0.1:8080")
	fs.StringVar(&c.GatewayKey, "key", "", "QYAI API key for the gateway")
	fs.StringVar(&c.DirectURL, "direct", "", "upstream simulator base URL, e.g. http://127.0.0.1:8090")
	fs.StringVar(&c.DirectKey, "direct-key", "", "the simulator's API key (SIM_API_KEY)")
	fs.IntVar(&c.GatewayPID, "gateway-pid", 0, "gateway PID for CPU and RSS from /proc (0: do not measure)")
	fs.StringVar(&c.ReferenceURL, "reference", "", "base URL of a bare reverse proxy to the simulator, measured as a reference in the non-stream phases (empty: none)")
	fs.StringVar(&c.ReferenceKey, "reference-key", "", "API key sent to the reference proxy (the simulator's)")
	fs.IntVar(&c.ReferencePID, "reference-pid", 0, "reference proxy PID for CPU and RSS from /proc (0: do not measure)")
	fs.Func("system", "name=pid[,pid...] of a process of the stack whose CPU counts toward the whole system's (repeat per process: redis, nats, meter, clickhouse, admin)", func(v string) error {
		p, err := parseSystemProc(v)
		if err == nil {
			c.System = append(c.System, p)
		}
		return err
	})
	fs.DurationVar(&c.SystemIdle, "system-idle", 3*time.Second, "how long the stack's idle CPU use is measured before the phases (with -system)")
	fs.DurationVar(&c.Settle, "settle", time.Second, "wait after a phase's last gateway slice for the bookkeeping that trails it (with -system)")
	fs.IntVar(&c.OpenStreams.Count, "open-streams", 0, "open-streams phase: slow streams held open on the gateway at once (0: no such phase)")
	fs.IntVar(&c.OpenStreams.Ramp, "open-streams-ramp", 1000, "streams opened a second in the open-streams phase")
	fs.IntVar(&c.OpenStreams.Tokens, "open-streams-tokens", 60, "content chunks per stream of the open-streams phase")
	fs.DurationVar(&c.OpenStreams.Interval, "open-streams-interval", time.Second, "time between two chunks of an open stream")
	fs.StringVar(&c.OpenStreams.Key, "open-streams-key", "", "API key of the open-streams phase alone, whose billing is then checked exactly (empty: -key, unchecked)")
	fs.IntVar(&c.OpenStreams.ProbeRate, "open-streams-probe-rate", 20, "non-stream requests a second while the streams are open")
	fs.StringVar(&c.OpenStreams.PprofURL, "gateway-pprof", "", "the gateway's pprof base URL (PPROF_ADDR), for its goroutines in the open-streams phase")
	fs.DurationVar(&c.OpenStreams.Settle, "open-streams-settle", time.Minute, "how long the billing totals of the open-streams phase may take to match")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measurement per target and phase")
	fs.IntVar(&c.Rounds, "rounds", 1, "alternating direct/(reference/)gateway slices per phase (noise control)")
	fs.DurationVar(&c.Warmup, "warmup", 1500*time.Millisecond, "unmeasured warm-up per target and phase")
	fs.IntVar(&c.Concurrency, "concurrency", 32, "workers of the non-stream closed loop")
	fs.IntVar(&c.Rate, "rate", 500, "requests per second of the open loop")
	fs.IntVar(&c.StreamConcurrency, "stream-concurrency", 16, "workers of the streaming phase")
	fs.IntVar(&c.StreamTokens, "stream-tokens", 50, "content chunks per stream")
	fs.DurationVar(&c.RequestTimeout, "timeout", 30*time.Second, "timeout of one request")
	phases := fs.String("phases", "closed,open,stream", "phases to run, comma-separated: closed, open, stream")
	fs.StringVar(&c.Command, "command", "", "command line that reproduces this run (printed)")
	fs.StringVar(&c.Revision, "revision", "", "source revision measured (printed)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	c.Phases = strings.Split(*phases, ",")
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	rep, err := Run(ctx, c, stderr)
	if err != nil {
		return err
	}
	return rep.WriteMarkdown(stdout)
}

// Run measures every phase against every target and returns the results.
// Progress goes to progress, one line per measurement.
func Run(ctx context.Context, c Config, progress io.Writer) (*Report, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	client := newClient(max(c.Concurrency, c.StreamConcurrency, 256))
	defer client.CloseIdleConnections()
	direct := &target{name: "direct", url: strings.TrimRight(c.DirectURL, "/") + "/chat/completions", key: c.DirectKey}
	gateway := &target{name: "gateway", url: strings.TrimRight(c.GatewayURL, "/") + "/v1/chat/completions", key: c.GatewayKey, pid: c.GatewayPID}
	var reference *target
	if c.ReferenceURL != "" {
		reference = &target{name: "reference", url: strings.TrimRight(c.ReferenceURL, "/") + "/v1/chat/completions", key: c.ReferenceKey, pid: c.ReferencePID}
	}

	w := newWorkload(client, c.RequestTimeout, c.StreamTokens)
	phases := []*phase{
		{
			kind:  phaseClosed,
			title: fmt.Sprintf("non-stream, closed loop, %d concurrent", c.Concurrency),
			run: func(ctx context.Context, t *target, d time.Duration) *result {
				return closedLoop(ctx, c.Concurrency, d, func(ctx context.Context, start time.Time) sample {
					return w.chat(ctx, t, start)
				})
			},
		},
		{
			kind:  phaseOpen,
			title: fmt.Sprintf("non-stream, open loop, %d req/s", c.Rate),
			run: func(ctx context.Context, t *target, d time.Duration) *result {
				return openLoop(ctx, c.Rate, d, func(ctx context.Context, start time.Time) sample {
					return w.chat(ctx, t, start)
				})
			},
		},
		{
			kind:   phaseStream,
			title:  fmt.Sprintf("stream, %d tokens, closed loop, %d concurrent", c.StreamTokens, c.StreamConcurrency),
			stream: true,
			run: func(ctx context.Context, t *target, d time.Duration) *result {
				return closedLoop(ctx, c.StreamConcurrency, d, func(ctx context.Context, start time.Time) sample {
					return w.stream(ctx, t, start)
				})
			},
		},
	}

	if len(c.Phases) > 0 {
		phases = slices.DeleteFunc(phases, func(p *phase) bool { return !slices.Contains(c.Phases, p.kind.String()) })
	}

	rep := &Report{Config: c, Machine: describeMachine(), Started: time.Now()}
	var sys *systemMeter
	if len(c.System) > 0 {
		sys = &systemMeter{procs: c.System}
		if err := sys.measureIdle(ctx, c.SystemIdle); err != nil {
			return nil, fmt.Errorf("measure the idle stack: %w", err)
		}
		rep.SystemIdle = sys.idle
	}
	slice := c.Duration / time.Duration(c.Rounds)
	for i, p := range phases {
		targets := []*target{direct, gateway}
		if reference != nil && !p.stream {
			targets = []*target{direct, reference, gateway}
		}
		for round := range c.Rounds {
			for _, t := range targets {
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("benchmark interrupted: %w", err)
				}
				if round == 0 && c.Warmup > 0 {
					p.run(ctx, t, c.Warmup)
				}
				var snap snapshot
				if sys != nil && t == gateway {
					var err error
					if snap, err = takeSnapshot(c.System); err != nil {
						return nil, err
					}
					if sr, ok := sys.close(snap); ok {
						p.system = append(p.system, sr)
					}
				}
				r, err := measure(ctx, p, t, slice)
				if err != nil {
					return nil, fmt.Errorf("measure %s, %s: %w", p.title, t.name, err)
				}
				if sys != nil && t == gateway {
					sys.open = &openWindow{start: snap, reqs: r.ok + r.failed, gateway: r.cpu}
				}
				switch t {
				case direct:
					p.direct = p.direct.combine(r)
				case reference:
					p.reference = p.reference.combine(r)
				default:
					p.gateway = p.gateway.combine(r)
				}
			}
		}
		if sys != nil {
			if err := sleep(ctx, c.Settle); err != nil {
				return nil, fmt.Errorf("benchmark interrupted: %w", err)
			}
			snap, err := takeSnapshot(c.System)
			if err != nil {
				return nil, err
			}
			if sr, ok := sys.close(snap); ok {
				p.system = append(p.system, sr)
			}
		}
		// Progress lines: best effort, the returned report is what counts.
		_, _ = fmt.Fprintf(progress, "phase %d/%d direct  %s: %s\n", i+1, len(phases), p.title, p.direct.summary())
		if p.reference != nil {
			_, _ = fmt.Fprintf(progress, "phase %d/%d reference %s: %s\n", i+1, len(phases), p.title, p.reference.summary())
		}
		_, _ = fmt.Fprintf(progress, "phase %d/%d gateway %s: %s\n", i+1, len(phases), p.title, p.gateway.summary())
		rep.Phases = append(rep.Phases, p)
	}
	if c.OpenStreams.Count > 0 {
		r, err := runOpenStreams(ctx, c, c.GatewayURL, c.GatewayPID, progress)
		if err != nil {
			return nil, err
		}
		rep.OpenStreams = r
	}
	rep.Elapsed = time.Since(rep.Started)
	for _, p := range rep.Phases {
		if p.direct.ok == 0 || p.gateway.ok == 0 || (p.reference != nil && p.reference.ok == 0) {
			_ = rep.WriteMarkdown(progress)
			ref := ""
			if p.reference != nil {
				ref = fmt.Sprintf(", reference %d", p.reference.ok)
			}
			return nil, fmt.Errorf("%s: no successful request (direct %d%s, gateway %d); see the errors above",
				p.title, p.direct.ok, ref, p.gateway.ok)
		}
	}
	return rep, nil
}

// measure runs one phase against one target, reading the target's process
// counters around it when it has a PID.
func measure(ctx context.Context, p *phase, t *target, d time.Duration) (*result, error) {
	if t.pid == 0 {
		return p.run(ctx, t, d), nil
	}
	cpu0, err := processCPU(t.pid)
	if err != nil {
		return nil, err
	}
	rss := startRSSWatch(t.pid, 100*time.Millisecond)
	r := p.run(ctx, t, d)
	peak := rss.stop()
	cpu1, err := processCPU(t.pid)
	if err != nil {
		return nil, err
	}
	r.cpu, r.rssPeak, r.hasProc = cpu1-cpu0, peak, true
	return r, nil
}
