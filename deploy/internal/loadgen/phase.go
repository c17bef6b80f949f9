package loadgen

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

type phaseKind int

const (
	phaseClosed phaseKind = iota
	phaseOpen
	phaseStream
)

// String is the phase's name in Config.Phases.
func (k phaseKind) String() string {
	switch k {
	case phaseClosed:
		return "closed"
	case phaseOpen:
		return "open"
	case phaseStream:
		return "stream"
	}
	return "unknown"
}

// openStreamsPhase names the open-streams phase in Config.Phases: listed
// alone, it skips the other three (the phase itself runs when
// Config.OpenStreams.Count > 0).
const openStreamsPhase = "open-streams"

func validPhase(name string) bool {
	return name == phaseClosed.String() || name == phaseOpen.String() || name == phaseStream.String() || name == openStreamsPhase
}

// phase is one workload, measured against every target.
type phase struct {
	kind   phaseKind
	title  string
	stream bool
	// run drives the workload against a target for d and returns what it saw.
	run             func(ctx context.Context, t *target, d time.Duration) *result
	direct, gateway *result
	// reference is the bare reverse proxy's result; nil when it was not
	// measured (no Config.ReferenceURL, or the stream phase).
	reference *result
	// system is the whole system's cost round by round (Config.System).
	system []systemRound
}

// result is what one measurement saw.
type result struct {
	ok         int
	failed     int
	errs       map[string]int // failed requests by class
	badStreams int            // 200 streams that failed verification (also in failed)
	// lat and ttft are the latencies of the successful requests, sorted.
	lat, ttft []time.Duration
	elapsed   time.Duration
	// lag is how late the open loop sent each request after its scheduled
	// time, sorted; the loop measures latency from the schedule, so lag is
	// part of it, equally for both targets.
	lag []time.Duration

	hasProc bool
	cpu     time.Duration // process CPU time (user+system) during the measurement
	rssPeak int64         // bytes, the highest VmRSS sampled
}

func newResult() *result { return &result{errs: map[string]int{}} }

func (r *result) add(s sample) {
	if s.err != "" {
		r.failed++
		r.errs[s.err]++
		if s.badStream {
			r.badStreams++
		}
		return
	}
	r.ok++
	r.lat = append(r.lat, s.lat)
	if s.ttft > 0 {
		r.ttft = append(r.ttft, s.ttft)
	}
}

func (r *result) merge(o *result) {
	r.ok += o.ok
	r.failed += o.failed
	r.badStreams += o.badStreams
	for k, v := range o.errs {
		r.errs[k] += v
	}
	r.lat = append(r.lat, o.lat...)
	r.ttft = append(r.ttft, o.ttft...)
}

func (r *result) finish(elapsed time.Duration) *result {
	r.elapsed = elapsed
	slices.Sort(r.lat)
	slices.Sort(r.ttft)
	slices.Sort(r.lag)
	return r
}

// combine returns r and o together, as one measurement: counts and times
// add up, latencies merge, the RSS peak is the higher. r may be nil.
func (r *result) combine(o *result) *result {
	if r == nil {
		return o
	}
	r.merge(o)
	r.lag = append(r.lag, o.lag...)
	r.cpu += o.cpu
	r.rssPeak = max(r.rssPeak, o.rssPeak)
	r.hasProc = r.hasProc && o.hasProc
	return r.finish(r.elapsed + o.elapsed)
}

// rps is successful requests per second.
func (r *result) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

// cpuPerRequest is the process CPU time per completed request (failed
// ones included: they cost CPU too).
func (r *result) cpuPerRequest() time.Duration {
	n := r.ok + r.failed
	if !r.hasProc || n == 0 {
		return 0
	}
	return r.cpu / time.Duration(n)
}

func (r *result) summary() string {
	s := fmt.Sprintf("%d ok, %d failed, %.0f req/s, p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms",
		r.ok, r.failed, r.rps(), ms(quantile(r.lat, 0.50)), ms(quantile(r.lat, 0.99)),
		ms(quantile(r.lat, 0.999)), ms(quantile(r.lat, 1)))
	if len(r.ttft) > 0 {
		s += fmt.Sprintf(", first token p50 %s ms, p99 %s ms", ms(quantile(r.ttft, 0.50)), ms(quantile(r.ttft, 0.99)))
	}
	if r.hasProc {
		s += fmt.Sprintf(", cpu %s ms/req, rss %s", msPrec(r.cpuPerRequest(), 3), mib(r.rssPeak))
	}
	for _, k := range slices.Sorted(maps.Keys(r.errs)) {
		s += fmt.Sprintf("; %s ×%d", k, r.errs[k])
	}
	return s
}

// quantile is the nearest-rank q-quantile of sorted durations (0 if none).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps 0.99*100 (98.99999999999999 or 99.00000000000001
	// in floating point) at rank 99.
	i := int(math.Ceil(q*float64(len(sorted))-1e-9)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// closedLoop runs n workers that each send a request as soon as their last
// one is answered, until d has passed. The requests in flight at the end
// are waited for and counted, and so is the time they take.
func closedLoop(ctx context.Context, n int, d time.Duration, do func(context.Context, time.Time) sample) *result {
	parts := make([]*result, n)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := newResult()
			for ctx.Err() == nil {
				t := time.Now()
				if !t.Before(deadline) {
					break
				}
				r.add(do(ctx, t))
			}
			parts[i] = r
		})
	}
	wg.Wait()
	r := newResult()
	for _, p := range parts {
		r.merge(p)
	}
	return r.finish(time.Since(start))
}

// openLoop sends rate requests a second for d on a fixed timetable, each in
// its own goroutine so that a slow answer never delays the next send.
// Latency counts from the scheduled time. Should more than maxInFlight
// requests be waiting (the target has stalled for seconds), further ones
// are counted as failed instead of piling up without bound.
func openLoop(ctx context.Context, rate int, d time.Duration, do func(context.Context, time.Time) sample) *result {
	n := max(int(float64(rate)*d.Seconds()), 1)
	maxInFlight := int64(max(2*rate, 1000))
	samples := make([]sample, n)
	lag := make([]time.Duration, 0, n)
	var (
		wg       sync.WaitGroup
		inFlight atomic.Int64
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	start := time.Now()
	sent := 0
loop:
	for i := range n {
		// i*1s/rate in integer nanoseconds: no drift over a long run.
		at := start.Add(time.Duration(int64(i) * int64(time.Second) / int64(rate)))
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				break loop
			case <-timer.C:
			}
		}
		sent++
		lag = append(lag, time.Since(at))
		if inFlight.Load() >= maxInFlight {
			samples[i] = sample{err: "not sent: too many requests in flight"}
			continue
		}
		inFlight.Add(1)
		wg.Go(func() {
			defer inFlight.Add(-1)
			samples[i] = do(ctx, at)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := newResult()
	for _, s := range samples[:sent] {
		r.add(s)
	}
	r.lag = lag
	return r.finish(elapsed)
}
