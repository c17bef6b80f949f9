package loadgen

import (
	"bytes"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/upstreamsim"
)

// TestRun drives every phase, briefly, against an in-process simulator that
// stands in for both targets (it serves /v1/chat/completions too), with this
// test's own process as the "gateway" whose CPU and RSS are read. It checks
// that the run is well formed, never how fast anything was.
func TestRun(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "sk-sim"}))
	t.Cleanup(sim.Close)
	c := Config{
		GatewayURL: sim.URL, GatewayKey: "sk-sim", DirectURL: sim.URL, DirectKey: "sk-sim",
		GatewayPID: os.Getpid(), Duration: 400 * time.Millisecond, Rounds: 2, Warmup: 50 * time.Millisecond,
		Concurrency: 4, Rate: 100, StreamConcurrency: 2, StreamTokens: 7, RequestTimeout: 5 * time.Second,
		Command: "make bench",
	}
	var progress bytes.Buffer
	rep, err := Run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if len(rep.Phases) != 3 {
		t.Fatalf("phases: got %d, want 3", len(rep.Phases))
	}
	for _, p := range rep.Phases {
		for name, r := range map[string]*result{"direct": p.direct, "gateway": p.gateway} {
			if r.ok == 0 || r.failed != 0 {
				t.Errorf("%s, %s: %d ok, %d failed (%v)", p.title, name, r.ok, r.failed, r.errs)
			}
			if p.stream && len(r.ttft) != r.ok {
				t.Errorf("%s, %s: %d first-token times for %d streams", p.title, name, len(r.ttft), r.ok)
			}
		}
		if !p.gateway.hasProc || p.gateway.rssPeak == 0 {
			t.Errorf("%s: gateway process counters not read", p.title)
		}
	}
	var out bytes.Buffer
	if err := rep.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| Phase |", "first token", "whole stream", "Reproduce: `make bench`", "| Target |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

// TestStreamVerification checks that a stream with the wrong number of
// chunks, or an error status, is counted as an error.
func TestStreamVerification(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "sk-sim"}))
	t.Cleanup(sim.Close)
	tg := &target{name: "direct", url: sim.URL + "/chat/completions", key: "sk-sim"}
	tests := []struct {
		name    string
		tokens  int // what the workload asks the simulator for
		want    int // what the check expects
		key     string
		wantErr string
	}{
		{name: "exact", tokens: 5, want: 5, key: "sk-sim"},
		{name: "fewer chunks", tokens: 5, want: 6, key: "sk-sim", wantErr: "5 content chunks, want 6"},
		{name: "bad key", tokens: 5, want: 5, key: "wrong", wantErr: "HTTP 401"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorkload(newClient(1), 5*time.Second, tc.tokens)
			w.tokens = tc.want
			tg := *tg
			tg.key = tc.key
			s := w.stream(t.Context(), &tg, time.Now())
			if !strings.Contains(s.err, tc.wantErr) || (tc.wantErr == "") != (s.err == "") {
				t.Fatalf("err %q, want %q", s.err, tc.wantErr)
			}
			if tc.wantErr == "" && (s.ttft <= 0 || s.lat < s.ttft) {
				t.Fatalf("ttft %v, latency %v", s.ttft, s.lat)
			}
		})
	}
}

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    time.Duration
		wantErr bool
	}{
		{name: "plain", stat: "42 (gateway) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 100 0 0", want: 2810 * time.Millisecond},
		{name: "name with spaces and parens", stat: "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", want: 70 * time.Millisecond},
		{name: "truncated", stat: "7 (x) R 1 2 3", wantErr: true},
		{name: "no name", stat: "7 x R", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.stat))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseStatusRSS(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    int64
		wantErr bool
	}{
		{name: "present", status: "Name:\tgateway\nVmHWM:\t  50000 kB\nVmRSS:\t   41234 kB\nThreads: 9\n", want: 41234 << 10},
		{name: "missing", status: "Name:\tgateway\n", wantErr: true},
		{name: "bad unit", status: "VmRSS:\t 12 MB\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatusRSS([]byte(tc.status))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{name: "empty", q: 0.5, want: 0},
		{name: "one", sorted: []time.Duration{7}, q: 0.99, want: 7},
		{name: "p50 of 100", sorted: hundred, q: 0.50, want: 50 * time.Millisecond},
		{name: "p99 of 100", sorted: hundred, q: 0.99, want: 99 * time.Millisecond},
		{name: "p100", sorted: hundred, q: 1, want: 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := quantile(tc.sorted, tc.q); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	err := Config{GatewayURL: "localhost:8080", DirectURL: "http://x"}.Validate()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"gateway:", "key:", "rounds:", "concurrency:", "rate:", "duration:", "timeout:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
