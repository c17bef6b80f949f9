package loadgen

import (
	"bytes"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/testkit/upstreamsim"
)

func TestParseSystemProc(t *testing.T) {
	p, err := parseSystemProc("redis=12,34")
	if err != nil || p.Name != "redis" || len(p.PIDs) != 2 || p.PIDs[0] != 12 || p.PIDs[1] != 34 {
		t.Fatalf("parse: %+v, %v", p, err)
	}
	for _, bad := range []string{"redis", "=1", "redis=", "redis=x", "redis=1,,2", "redis=-3", "redis=0"} {
		if _, err := parseSystemProc(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	if err := validateSystem([]SystemProc{{"a", []int{1}}, {"a", []int{2}}}); err == nil {
		t.Error("a name given twice: accepted")
	}
}

// TestSystemRound checks the arithmetic of one round on made-up counters: the
// idle use over the window is subtracted, the rest divided by the slice's
// requests, and a process that used less than idle counts 0, not less.
func TestSystemRound(t *testing.T) {
	t0 := time.Unix(1000, 0)
	m := &systemMeter{
		procs: []SystemProc{{"redis", []int{1}}, {"meter", []int{2}}},
		idle:  []time.Duration{10 * time.Millisecond, 50 * time.Millisecond}, // per second
	}
	if _, ok := m.close(snapshot{at: t0}); ok {
		t.Fatal("a round without an open window")
	}
	m.open = &openWindow{start: snapshot{at: t0, cpu: []time.Duration{time.Second, time.Second}}, reqs: 1000, gateway: 200 * time.Millisecond}
	// 2 s window: redis used 120 ms (20 idle), meter 60 ms (100 idle).
	r, ok := m.close(snapshot{at: t0.Add(2 * time.Second), cpu: []time.Duration{time.Second + 120*time.Millisecond, time.Second + 60*time.Millisecond}})
	if !ok {
		t.Fatal("no round")
	}
	if r.gateway != 200*time.Microsecond || r.procs[0] != 100*time.Microsecond || r.procs[1] != 0 {
		t.Fatalf("round %+v: want gateway 200µs, redis 100µs, meter 0", r)
	}
	if r.whole() != 300*time.Microsecond {
		t.Errorf("whole %v, want 300µs", r.whole())
	}
	if m.open != nil {
		t.Error("window still open after close")
	}
	s := summarise([]systemRound{
		{gateway: 1, procs: []time.Duration{10, 0}},
		{gateway: 3, procs: []time.Duration{1, 100}},
		{gateway: 2, procs: []time.Duration{5, 1}},
	}, 2)
	// Medians per column: gateway 2, redis 5, meter 1; of the sums (11, 104, 8): 11.
	if s.gateway != 2 || s.procs[0] != 5 || s.procs[1] != 1 || s.whole != 11 || s.rounds != 3 {
		t.Errorf("summary %+v", s)
	}
}

// TestRunSystem runs the benchmark with this test's own process standing for
// a part of the stack: every phase must get one round per Config.Rounds and
// the report its whole-system table and target line.
func TestRunSystem(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "sk-sim"}))
	t.Cleanup(sim.Close)
	c := Config{
		GatewayURL: sim.URL, GatewayKey: "sk-sim", DirectURL: sim.URL, DirectKey: "sk-sim",
		GatewayPID: os.Getpid(), Duration: 600 * time.Millisecond, Rounds: 3, Warmup: 50 * time.Millisecond,
		Concurrency: 4, Rate: 100, StreamConcurrency: 2, StreamTokens: 5, RequestTimeout: 5 * time.Second,
		System:     []SystemProc{{Name: "self", PIDs: []int{os.Getpid()}}},
		SystemIdle: 200 * time.Millisecond, Settle: 100 * time.Millisecond,
	}
	var progress bytes.Buffer
	rep, err := Run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if len(rep.SystemIdle) != 1 {
		t.Fatalf("idle use of %d processes, want 1", len(rep.SystemIdle))
	}
	for _, p := range rep.Phases {
		if len(p.system) != c.Rounds {
			t.Errorf("%s: %d system rounds, want %d", p.title, len(p.system), c.Rounds)
		}
		// The load generator runs in this process, so "self" used CPU beyond
		// its idle use, and the whole is at least the gateway's part.
		if s := summarise(p.system, 1); s.procs[0] <= 0 || s.whole < s.gateway {
			t.Errorf("%s: summary %+v", p.title, s)
		}
	}
	var out bytes.Buffer
	if err := rep.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Whole system, same run", "| Phase | Gateway | self | **Whole system** | Bare proxy |",
		"| Whole-system CPU per non-stream request ≤ 0.20 ms (closed loop, median of 3 rounds) |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
