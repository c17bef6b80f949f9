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

// TestOpenStreams runs the open-streams phase alone against the in-process
// simulator standing for the gateway (it serves /v1/chat/completions too):
// every stream must be held to its end and checked, the probe must run
// meanwhile, and the report must carry the phase's table and target lines.
// Billing is not checked here (the simulator has no billing endpoint);
// `make bench` checks it against the real stack.
func TestOpenStreams(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "sk-sim"}))
	t.Cleanup(sim.Close)
	c := Config{
		GatewayURL: sim.URL, GatewayKey: "sk-sim", DirectURL: sim.URL, DirectKey: "sk-sim",
		GatewayPID: os.Getpid(), Duration: time.Second, Rounds: 1, Concurrency: 1, Rate: 1,
		StreamConcurrency: 1, StreamTokens: 1, RequestTimeout: 5 * time.Second,
		Phases: []string{openStreamsPhase},
		OpenStreams: OpenStreams{Count: 40, Ramp: 400, Tokens: 4, Interval: 50 * time.Millisecond,
			ProbeRate: 50, Settle: time.Second},
	}
	var progress bytes.Buffer
	rep, err := Run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if len(rep.Phases) != 0 {
		t.Errorf("%d other phases ran, want none", len(rep.Phases))
	}
	r := rep.OpenStreams
	if r == nil {
		t.Fatal("no open-streams result")
	}
	if r.opened != 40 || r.completed != 40 || len(r.failed) != 0 {
		t.Errorf("opened %d, completed %d, failed %v; want 40, 40, none", r.opened, r.completed, r.failed)
	}
	if r.peakOpen == 0 || r.peakOpen > 40 {
		t.Errorf("peak open %d, want 1..40", r.peakOpen)
	}
	if r.probe == nil || r.probe.ok == 0 || r.probe.failed != 0 {
		t.Errorf("probe: %+v", r.probe)
	}
	// The streams' 160 completion tokens, and as many for each probe.
	if extra := r.completion - 40*4; r.probe != nil && r.probe.ok > 0 && (extra <= 0 || extra%int64(r.probe.ok) != 0) {
		t.Errorf("completion tokens %d: want the streams' 160 plus the same number for each of %d probes", r.completion, r.probe.ok)
	}
	if r.rssPeak == 0 {
		t.Error("gateway RSS not sampled")
	}
	var out bytes.Buffer
	if err := rep.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Open streams, same run: 40 slow streams", "| streams opened / completed and checked | 40 / 40 |",
		"| 40 open streams all complete | 40 of 40 | PASS |", "not checked (no key of its own)", "non-stream p99 while all 40 are open < 50.00 ms", "non-stream probe while all are open"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
