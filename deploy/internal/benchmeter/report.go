package benchmeter

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is the result of a run.
type Report struct {
	Config  Config
	Machine string
	Started time.Time
	Phases  []*Phase
	// Published is the events published over every phase; Rows and
	// Distinct what ClickHouse holds of them (rows, distinct event ids).
	Published      int
	Rows, Distinct uint64
}

// WriteMarkdown prints the results table, the verdict and how to
// reproduce the run.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	c := rep.Config
	fmt.Fprintf(&b, "## Metering pipeline: publisher -> NATS JetStream -> meter -> ClickHouse\n\n")
	fmt.Fprintf(&b, "%s, %s each phase, %d keys; lag = publish to row visible in `usage_events` (polled every %s).\n\n",
		rep.Machine, c.Duration, c.Keys, c.PollEvery)
	names := slices.Sorted(maps.Keys(c.PIDs))
	fmt.Fprintf(&b, "| phase | published ev/s | stored ev/s | lag p50 | lag p90 | lag p99 | lag max | all stored |")
	for _, n := range names {
		fmt.Fprintf(&b, " %s CPU |", n)
	}
	fmt.Fprintf(&b, " target |\n|---|---:|---:|---:|---:|---:|---:|---|")
	for range names {
		b.WriteString("---:|")
	}
	b.WriteString("---|\n")
	for _, p := range rep.Phases {
		name := "as fast as possible"
		if p.Rate > 0 {
			name = fmt.Sprintf("fixed %d ev/s", p.Rate)
		}
		stored := "yes"
		if !p.Drained {
			stored = fmt.Sprintf("**no** (%d of %d within %s)", len(p.lags), p.Published, c.DrainTimeout)
		}
		if p.PublishErrors > 0 {
			stored += fmt.Sprintf(", %d publish errors", p.PublishErrors)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %s |", name, p.PublishRate(), p.StoreRate(),
			sec(p.Lag(0.5)), sec(p.Lag(0.9)), sec(p.Lag(0.99)), sec(p.Lag(1)), stored)
		wall := p.LastVisible.Sub(p.FirstPublish)
		if p.LastVisible.IsZero() {
			wall = p.LastPublish.Sub(p.FirstPublish)
		}
		for _, n := range names {
			fmt.Fprintf(&b, " %.0f%% |", 100*p.CPU[n].Seconds()/wall.Seconds())
		}
		fmt.Fprintf(&b, " %s |\n", rep.verdict(p))
	}
	exact := "yes"
	if rep.Rows != uint64(rep.Published) || rep.Distinct != uint64(rep.Published) {
		exact = "**no**"
	}
	fmt.Fprintf(&b, "\nStored exactly once: %s (%d published, %d rows, %d distinct ids in `usage_events`).\n", exact,
		rep.Published, rep.Rows, rep.Distinct)
	fmt.Fprintf(&b, "Target: >= %d ev/s sustained with lag p99 < %s. A fixed rate is sustained when it is published on time, every event is stored and the lag p99 stays under the target; as fast as possible, the publisher outruns the pipeline and the backlog (hence the lag) grows: that phase measures capacity.\n",
		c.TargetRate, sec(c.TargetP99))
	fmt.Fprintf(&b, "CPU: share of one core over the phase (%d cores in all).\n", runtime.NumCPU())
	if c.Command != "" {
		fmt.Fprintf(&b, "\nReproduce: `%s`", c.Command)
		if c.Revision != "" {
			fmt.Fprintf(&b, " (revision %s)", c.Revision)
		}
		b.WriteString("\n")
	}
	_, err := w.Write(b.Bytes())
	return err
}

// verdict judges a phase against the target. A fixed-rate phase at or
// above the target rate passes when it published at its rate (1% slack for
// the timetable's rounding), stored every event and kept the lag p99 under
// the target: the pipeline sustained the rate. A phase as fast as possible
// publishes more than the pipeline can take, so its lag only grows; it
// measures capacity, which passes when at least the target rate.
func (rep *Report) verdict(p *Phase) string {
	c := rep.Config
	complete := p.Drained && p.PublishErrors == 0
	switch {
	case p.Rate == 0 && complete && p.StoreRate() >= float64(c.TargetRate):
		return "PASS (capacity)"
	case p.Rate == 0:
		return "MISS (capacity)"
	case p.Rate < c.TargetRate:
		return "below the target rate"
	case complete && p.PublishRate() >= 0.99*float64(p.Rate) && p.Lag(0.99) < c.TargetP99:
		return "PASS"
	}
	return "MISS"
}

func sec(d time.Duration) string {
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + " ms"
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// cpuTimes reads the CPU time (user + system) of each process from
// /proc/<pid>/stat; a process that cannot be read is left out.
func cpuTimes(pids map[string]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		if d, err := parseStatCPU(b); err == nil {
			out[name] = d
		}
	}
	return out
}

// clockTicks is USER_HZ, the unit of utime and stime: 100 on Linux.
const clockTicks = 100

// parseStatCPU reads utime and stime (fields 14 and 15) of /proc/<pid>/stat,
// counting fields after the last ')' (the command name may hold spaces).
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no ')'")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc stat: %d fields", len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc stat: utime %q, stime %q", f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// describeMachine names the CPU, core count and load when the run began.
func describeMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = ", load " + strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d x %s, %s%s", runtime.NumCPU(), model, runtime.Version(), load)
}
