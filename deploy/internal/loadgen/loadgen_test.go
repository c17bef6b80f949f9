package loadgen

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qyai/qyai/testkit/upstreamsim"
)

// TestRun drives every phase, briefly, against an in-process simulator that
// stands in for both targets (it serves /v1/chat/completions too), with this
// test's own process as the "gateway" whose CPU and RSS are read. It checks
// that the run is well formed, never how fast anything was, and that without
// a ReferenceURL nothing of the reference appears.
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
		if p.reference != nil {
			t.Errorf("%s: reference measured without a ReferenceURL", p.title)
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
	for _, unwanted := range []string{"Reference", "reference", "For scale"} {
		if strings.Contains(out.String(), unwanted) {
			t.Errorf("report without a reference mentions %q:\n%s", unwanted, out.String())
		}
	}
	if strings.Contains(progress.String(), "reference") {
		t.Errorf("progress without a reference mentions it:\n%s", progress.String())
	}
}

// TestRunReference adds the reference target: a bare httputil reverse proxy
// in front of the in-process simulator, with this test's process as its
// PID. The reference must be measured in the two non-stream phases only,
// through the proxy, and get its own table, progress lines and line under
// the targets.
func TestRunReference(t *testing.T) {
	sim := httptest.NewServer(upstreamsim.New(upstreamsim.Config{APIKey: "sk-sim"}))
	t.Cleanup(sim.Close)
	simURL, err := url.Parse(sim.URL)
	if err != nil {
		t.Fatal(err)
	}
	var proxied atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(simURL) }}
	ref := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ref.Close)

	c := Config{
		GatewayURL: sim.URL, GatewayKey: "sk-sim", DirectURL: sim.URL, DirectKey: "sk-sim",
		ReferenceURL: ref.URL + "/", ReferenceKey: "sk-sim", ReferencePID: os.Getpid(),
		Duration: 300 * time.Millisecond, Rounds: 1, Warmup: 50 * time.Millisecond,
		Concurrency: 4, Rate: 100, StreamConcurrency: 2, StreamTokens: 5, RequestTimeout: 5 * time.Second,
	}
	var progress bytes.Buffer
	rep, err := Run(t.Context(), c, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if len(rep.Phases) != 3 {
		t.Fatalf("phases: got %d, want 3", len(rep.Phases))
	}
	var refOK int
	for _, p := range rep.Phases {
		if p.stream {
			if p.reference != nil {
				t.Errorf("%s: reference measured in the stream phase", p.title)
			}
			continue
		}
		r := p.reference
		if r == nil {
			t.Errorf("%s: reference not measured", p.title)
			continue
		}
		if r.ok == 0 || r.failed != 0 {
			t.Errorf("%s, reference: %d ok, %d failed (%v)", p.title, r.ok, r.failed, r.errs)
		}
		if !r.hasProc || r.rssPeak == 0 {
			t.Errorf("%s: reference process counters not read", p.title)
		}
		if p.gateway.hasProc {
			t.Errorf("%s: gateway counters read without a GatewayPID", p.title)
		}
		refOK += r.ok
	}
	// Warm-ups go through the proxy too, so it saw at least the measured requests.
	if n := proxied.Load(); refOK == 0 || n < int64(refOK) {
		t.Errorf("the reference proxy forwarded %d requests; %d measured reference requests succeeded", n, refOK)
	}

	for _, want := range []string{"phase 1/3 reference non-stream, closed loop", "phase 2/3 reference non-stream, open loop"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	if strings.Contains(progress.String(), "phase 3/3 reference") {
		t.Errorf("progress has a reference line for the stream phase:\n%s", progress.String())
	}

	var out bytes.Buffer
	if err := rep.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	for _, want := range []string{
		"Reference, same run: a bare reverse proxy (deploy/cmd/refproxy",
		"| Phase | Direct req/s | Reference req/s | Reference/direct | Added p50 | Added p99 | Reference CPU/req |",
		"For scale: the bare reverse proxy reached ",
		" ms CPU per request.",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	_, refTable, ok := strings.Cut(report, "| Reference CPU/req |")
	if !ok {
		t.Fatalf("no reference table:\n%s", report)
	}
	rows := 0
	for line := range strings.SplitSeq(refTable, "\n") {
		if strings.HasPrefix(line, "| stream") {
			t.Errorf("reference row for the stream phase: %s", line)
		}
		if !strings.HasPrefix(line, "| non-stream") {
			continue
		}
		rows++
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 7 {
			t.Fatalf("reference row has %d cells, want 7: %s", len(cells), line)
		}
		for i, name := range map[int]string{1: "direct req/s", 2: "reference req/s", 3: "reference/direct"} {
			if v, err := strconv.ParseFloat(cells[i], 64); err != nil || v <= 0 {
				t.Errorf("reference row, %s: %q, want > 0: %s", name, cells[i], line)
			}
		}
		if !strings.HasSuffix(cells[6], " ms") {
			t.Errorf("reference row, CPU/req: %q, want a time in ms: %s", cells[6], line)
		}
	}
	if rows != 2 {
		t.Errorf("reference table has %d rows, want 2 (closed and open loop):\n%s", rows, report)
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
	err := Config{GatewayURL: "localhost:8080", DirectURL: "http://x", ReferenceURL: "x:1", ReferencePID: -1}.Validate()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"gateway:", "key:", "rounds:", "concurrency:", "rate:", "duration:", "timeout:", "reference:", "reference-pid:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	valid := Config{
		GatewayURL: "http://gw", GatewayKey: "k", DirectURL: "http://sim", Duration: time.Second, Rounds: 1,
		Concurrency: 1, Rate: 1, StreamConcurrency: 1, StreamTokens: 1, RequestTimeout: time.Second,
	}
	if err := valid.Validate(); err != nil {
		t.Errorf("valid configuration without a reference: %v", err)
	}
	valid.ReferenceURL, valid.ReferencePID = "http://ref", 7
	if err := valid.Validate(); err != nil {
		t.Errorf("valid configuration with a reference: %v", err)
	}
}
