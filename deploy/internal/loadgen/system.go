package loadgen

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SystemProc is one part of the stack behind the gateway whose CPU time counts
// toward the whole system's cost of a request: Redis, NATS, meter, ClickHouse,
// admin (and ZooKeeper in the clustered topology). A clustered engine is one
// SystemProc with the PIDs of all its nodes.
type SystemProc struct {
	Name string
	PIDs []int
}

// parseSystemProc parses a -system flag value, "name=pid[,pid...]".
func parseSystemProc(s string) (SystemProc, error) {
	name, list, ok := strings.Cut(s, "=")
	if !ok || name == "" || list == "" {
		return SystemProc{}, fmt.Errorf("system %q: want name=pid[,pid...]", s)
	}
	p := SystemProc{Name: name}
	for f := range strings.SplitSeq(list, ",") {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 {
			return SystemProc{}, fmt.Errorf("system %q: %q is not a PID", s, f)
		}
		p.PIDs = append(p.PIDs, pid)
	}
	return p, nil
}

// systemCPU reads the CPU time of every SystemProc (the sum over its PIDs), in
// the order of procs.
func systemCPU(procs []SystemProc) ([]time.Duration, error) {
	out := make([]time.Duration, len(procs))
	for i, p := range procs {
		for _, pid := range p.PIDs {
			v, err := processCPU(pid)
			if err != nil {
				return nil, fmt.Errorf("%s (pid %d): %w", p.Name, pid, err)
			}
			out[i] += v
		}
	}
	return out, nil
}

// snapshot is the system's CPU counters at one moment.
type snapshot struct {
	at  time.Time
	cpu []time.Duration
}

func takeSnapshot(procs []SystemProc) (snapshot, error) {
	cpu, err := systemCPU(procs)
	return snapshot{at: time.Now(), cpu: cpu}, err
}

// systemRound is the whole system's cost in one round of a phase: the CPU time
// each SystemProc used from the start of the round's gateway slice to the start
// of the next one (or a settle time after the last), less what it uses idle in
// that time, divided by the gateway's requests of the slice. The window runs on
// through the other targets' slices because the bookkeeping trails the
// requests: the meter writes a batch, ClickHouse merges it, after the answer.
// The simulator's CPU is not ours and is not counted.
type systemRound struct {
	gateway time.Duration   // the gateway's own CPU per request in the slice
	procs   []time.Duration // per SystemProc, CPU per request
}

// whole is the round's CPU per request of every process of ours together.
func (r systemRound) whole() time.Duration {
	s := r.gateway
	for _, v := range r.procs {
		s += v
	}
	return s
}

// systemMeter turns snapshots around gateway slices into systemRounds.
type systemMeter struct {
	procs []SystemProc
	idle  []time.Duration // per SystemProc, CPU used per second of wall time with no load
	open  *openWindow
}

type openWindow struct {
	start   snapshot
	reqs    int
	gateway time.Duration
}

// measureIdle records how much CPU each process uses with no load (timers,
// merges, heartbeats), over d, so that the rounds subtract it.
func (m *systemMeter) measureIdle(ctx context.Context, d time.Duration) error {
	s0, err := takeSnapshot(m.procs)
	if err != nil {
		return err
	}
	if err := sleep(ctx, d); err != nil {
		return err
	}
	s1, err := takeSnapshot(m.procs)
	if err != nil {
		return err
	}
	wall := s1.at.Sub(s0.at)
	m.idle = make([]time.Duration, len(m.procs))
	for i := range m.procs {
		m.idle[i] = time.Duration(float64(s1.cpu[i]-s0.cpu[i]) / wall.Seconds())
	}
	return nil
}

// close ends the open window at now, if any, and returns its round.
func (m *systemMeter) close(now snapshot) (systemRound, bool) {
	w := m.open
	m.open = nil
	if w == nil || w.reqs == 0 {
		return systemRound{}, false
	}
	wall := now.at.Sub(w.start.at)
	r := systemRound{gateway: w.gateway / time.Duration(w.reqs), procs: make([]time.Duration, len(m.procs))}
	for i := range m.procs {
		used := now.cpu[i] - w.start.cpu[i] - time.Duration(float64(m.idle[i])*wall.Seconds())
		r.procs[i] = max(used, 0) / time.Duration(w.reqs)
	}
	return r, true
}

// systemSummary is a phase's medians over its rounds.
type systemSummary struct {
	rounds  int
	gateway time.Duration
	procs   []time.Duration
	whole   time.Duration
}

func summarise(rounds []systemRound, n int) systemSummary {
	s := systemSummary{rounds: len(rounds), procs: make([]time.Duration, n)}
	if len(rounds) == 0 {
		return s
	}
	col := func(f func(systemRound) time.Duration) time.Duration {
		v := make([]time.Duration, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		slices.Sort(v)
		return median(v)
	}
	s.gateway = col(func(r systemRound) time.Duration { return r.gateway })
	for i := range n {
		s.procs[i] = col(func(r systemRound) time.Duration { return r.procs[i] })
	}
	// The median of the rounds' sums, not the sum of the medians: one round's
	// processes are one measurement.
	s.whole = col(systemRound.whole)
	return s
}

// median of sorted durations: the middle one, or the mean of the two middle
// ones.
func median(sorted []time.Duration) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func validateSystem(procs []SystemProc) error {
	var errs []error
	seen := map[string]bool{}
	for _, p := range procs {
		if seen[p.Name] {
			errs = append(errs, fmt.Errorf("system: %s given twice", p.Name))
		}
		seen[p.Name] = true
		if len(p.PIDs) == 0 {
			errs = append(errs, fmt.Errorf("system: %s has no PID", p.Name))
		}
	}
	return errors.Join(errs...)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
