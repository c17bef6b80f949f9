package app

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
	"github.com/qyai/qyai/testkit/logbuf"
)

// TestOperationalListener: /metrics and pprof are not on the public
// listener (the usual OpenAI-shaped 404 there); the internal listener
// (GATEWAY_METRICS_ADDR) serves Prometheus text with the gateway's series,
// and the health endpoints on both.
func TestOperationalListener(t *testing.T) {
	h := startGateway(t, nil)
	get := func(url string) (int, http.Header, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}

	// The gateway's normal 404, for a path it never served.
	_, _, unknown := get(h.url + "/no-such-path")
	wantType, _, _ := errorOf(t, unknown)
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/profile"} {
		t.Run("public "+path, func(t *testing.T) {
			code, _, body := get(h.url + path)
			if code != http.StatusNotFound {
				t.Fatalf("public %s: %d %s, want 404", path, code, body)
			}
			if typ, _, msg := errorOf(t, body); typ != wantType || !strings.Contains(msg, path) {
				t.Errorf("public %s: error %q %q, want the unknown-URL error (type %q)", path, typ, msg, wantType)
			}
		})
	}
	t.Run("internal /metrics", func(t *testing.T) {
		code, hdr, body := get(h.metricsURL + "/metrics")
		if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
			t.Fatalf("internal /metrics: %d %q", code, hdr.Get("Content-Type"))
		}
		for _, want := range []string{"# TYPE qyai_usage_events_published_total counter", "qyai_usage_events_dropped_total", "qyai_usage_spool_bytes"} {
			if !strings.Contains(body, want) {
				t.Errorf("internal /metrics lacks %s", want)
			}
		}
	})
	for _, base := range []string{h.url, h.metricsURL} {
		for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
			t.Run(base+path, func(t *testing.T) {
				if code, _, body := get(base + path); code != http.StatusOK || body != want {
					t.Errorf("%s%s: %d %q, want 200 %q", base, path, code, body, want)
				}
			})
		}
	}
}

// TestShutdownKeepsLateStreamEvents: streams still open when the gateway
// is told to stop (its context ends, as on SIGTERM) and still open at
// SHUTDOWN_TIMEOUT are cancelled, and the usage event of each is published
// exactly once before Run returns; nothing is dropped. Several streams, so
// that handlers finish in a spread after the cancellation: before the
// drain awaited them, the late ones published into a stopped publisher.
func TestShutdownKeepsLateStreamEvents(t *testing.T) {
	const streams = 40
	logs := &logbuf.Buffer{}
	h := startGatewayLog(t, scripts.Redis(t), func(c *config.Config) { c.DrainTimeout = 300 * time.Millisecond },
		slog.New(slog.NewJSONHandler(logs, nil)))
	key := h.addKeyWith(t, "key_drain", func(r *apikey.Record) { r.RPM, r.MonthlyLimit = 100000, 1000000 })

	// 100 chunks 100 ms apart: each stream outlives the drain deadline.
	body := `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"slow #sim tokens=100 chunk_delay_ms=100"}]}`
	reqIDs := make(map[string]bool)
	var clients sync.WaitGroup
	for range streams {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("stream: %d %s", resp.StatusCode, b)
		}
		reqIDs[resp.Header.Get("X-Request-Id")] = true
		rd := bufio.NewReader(resp.Body)
		if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
			t.Fatalf("first stream line %q: %v", line, err)
		}
		// The client keeps reading, as a client would, until the gateway ends the stream.
		clients.Go(func() { _, _ = io.Copy(io.Discard, rd); _ = resp.Body.Close() })
	}

	h.stop() // SIGTERM
	var runErr error
	select {
	case runErr = <-h.done:
		h.done <- runErr // for the harness's cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if runErr != nil {
		t.Fatalf("Run: %v", runErr)
	}
	clients.Wait()
	if got := h.sim.Stats().Completed; got != 0 {
		t.Fatalf("%d streams completed: they did not outlive the drain deadline, so the test proves nothing", got)
	}

	for _, ev := range h.events(t, streams) { // exactly one each, in JetStream
		if !reqIDs[ev.RequestID] {
			t.Errorf("event for request %q: not one of the streams, or a second event", ev.RequestID)
		}
		delete(reqIDs, ev.RequestID)
		if ev.Outcome == usage.OutcomeCompleted {
			t.Errorf("outcome %q for a stream cut at shutdown", ev.Outcome)
		}
	}

	var stopped struct {
		Dropped     *int64 `json:"events_dropped"`
		SpoolEvents *int64 `json:"spool_events"`
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"msg":"gateway stopped"`) {
			if err := json.Unmarshal([]byte(line), &stopped); err != nil {
				t.Fatal(err)
			}
		}
	}
	if stopped.Dropped == nil || stopped.SpoolEvents == nil {
		t.Fatalf("no \"gateway stopped\" record with the publisher's counts in the log:\n%s", logs.String())
	}
	if *stopped.Dropped != 0 {
		t.Errorf("events_dropped = %d, want 0", *stopped.Dropped)
	}
	// Published, so not also waiting in the spool: exactly once.
	if *stopped.SpoolEvents != 0 {
		t.Errorf("spool_events = %d, want 0 (the events are in JetStream)", *stopped.SpoolEvents)
	}
}
