package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
	"github.com/qyai/qyai/testkit/embednats"
	"github.com/qyai/qyai/testkit/testenv"
	"github.com/qyai/qyai/testkit/upstreamsim"
)

const pepper = "test-pepper"

// harness is one gateway in-process against real Redis and JetStream and
// an in-process simulator.
type harness struct {
	url string
	// metricsURL is the internal listener (GATEWAY_METRICS_ADDR).
	metricsURL string
	redis      *testenv.Server
	sim        *upstreamsim.Server
	rdb        *goredis.Client
	js         jetstream.JetStream
	cfg        config.Config
	stop       func()
	done       chan error
	simTS      *httptest.Server
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func startGateway(t *testing.T, mutate func(*config.Config)) *harness {
	t.Helper()
	return startGatewayWith(t, scripts.Redis(t), mutate)
}

func startGatewayWith(t *testing.T, rs *testenv.Server, mutate func(*config.Config)) *harness {
	t.Helper()
	return startGatewayLog(t, rs, mutate, slog.New(slog.DiscardHandler))
}

// startGatewayLog starts a gateway that logs to log.
func startGatewayLog(t *testing.T, rs *testenv.Server, mutate func(*config.Config), log *slog.Logger) *harness {
	t.Helper()
	ns := embednats.Start(t)
	sim := upstreamsim.New(upstreamsim.Config{APIKey: "sk-upstream", DefaultTokens: 12})
	simTS := httptest.NewServer(sim)
	t.Cleanup(simTS.Close)

	spoolDir := filepath.Join(t.TempDir(), "spool")
	cfg, err := config.Load(func(k string) string {
		return map[string]string{
			"GATEWAY_ADDR": freePort(t), "GATEWAY_METRICS_ADDR": freePort(t), "REDIS_ADDR": rs.Addr, "NATS_URL": ns.URL, "SPOOL_DIR": spoolDir,
			"UPSTREAM_BASE_URL": simTS.URL, "UPSTREAM_API_KEY": "sk-upstream", "KEY_PEPPER": pepper,
			"UPSTREAM_IDLE_TIMEOUT": "2s", "UPSTREAM_FIRST_BYTE_TIMEOUT": "2s",
		}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(t.Context())
	h := &harness{url: "http://" + cfg.Addr, metricsURL: "http://" + cfg.MetricsAddr, redis: rs, sim: sim, cfg: cfg, stop: cancel, done: make(chan error, 1), simTS: simTS}
	go func() { h.done <- run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Logf("gateway stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<20)
			t.Errorf("gateway did not stop:\n%s", buf[:runtime.Stack(buf, true)])
		}
	})
	h.rdb = goredis.NewClient(&goredis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = h.rdb.Close() })
	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h.js, _ = jetstream.New(nc)

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(h.url + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The stream is created in the background; wait for it like a meter would.
	for {
		if _, err := h.js.Stream(t.Context(), usage.StreamName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("usage stream not created")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return h
}

// addKey stores a key record the way admin does and returns the key.
func (h *harness) addKey(t *testing.T, id string, models ...string) string {
	t.Helper()
	return h.addKeyWith(t, id, func(r *apikey.Record) { r.Models = models })
}

// addKeyWith stores a key record changed by mutate.
func (h *harness) addKeyWith(t *testing.T, id string, mutate func(*apikey.Record)) string {
	t.Helper()
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rec := apikey.Record{ID: id, Hash: apikey.Hash([]byte(pepper), key), KeyPrefix: apikey.DisplayPrefix(key),
		Name: id, Tier: "pro", RPM: 30, MonthlyLimit: 3000, Status: apikey.StatusActive, CreatedAt: time.Now()}
	mutate(&rec)
	b, _ := json.Marshal(rec)
	if err := h.rdb.Set(t.Context(), apikey.AuthKey(rec.Hash), b, 0).Err(); err != nil {
		t.Fatal(err)
	}
	return key
}

type result struct {
	status int
	header http.Header
	body   string
}

func (h *harness) post(t *testing.T, key, body string) result {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions", strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}

// events reads every usage event published so far, waiting for want of
// them; a message holds one event or a batch (pkg/usage).
func (h *harness) events(t *testing.T, want int) []usage.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := h.streamEvents(t)
		if len(out) >= want || time.Now().After(deadline) {
			if len(out) != want {
				t.Fatalf("got %d usage events, want %d: %+v", len(out), want, out)
			}
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamEvents decodes every event in the stream, checking each message's
// Nats-Msg-Id: its event id for one event, its usage.BatchID for a batch.
func (h *harness) streamEvents(t *testing.T) []usage.Event {
	t.Helper()
	s, err := h.js.Stream(t.Context(), usage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []usage.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			continue
		}
		raw, err := usage.Split(m.Data)
		if err != nil {
			t.Fatalf("bad usage message: %v", err)
		}
		evs := make([]usage.Event, len(raw))
		for i, b := range raw {
			if evs[i], err = usage.Decode(b); err != nil {
				t.Fatalf("bad event: %v", err)
			}
		}
		id := evs[0].ID
		if usage.IsBatch(m.Data) {
			id = usage.BatchID(evs[0].ID, evs[len(evs)-1].ID, len(evs))
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != id {
			t.Errorf("Nats-Msg-Id %q, want %q", got, id)
		}
		out = append(out, evs...)
	}
	return out
}

func errorOf(t *testing.T, body string) (typ, param, msg string) {
	t.Helper()
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %q", body)
	}
	if e.Error.Param != nil {
		param = *e.Error.Param
	}
	return e.Error.Type, param, e.Error.Message
}

func TestGatewayErrors(t *testing.T) {
	h := startGateway(t, nil)
	key := h.addKey(t, "key_err", "deepseek-v4-flash", "deepseek-chat")
	okBody := `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi %s"}]}`
	tests := []struct {
		name      string
		key       string
		body      string
		status    int
		typ       string
		param     string
		reachesUp bool
	}{
		{"no key", "", fmt.Sprintf(okBody, ""), 401, "authentication_error", "", false},
		{"unknown key", "sk-" + strings.Repeat("a", 48), fmt.Sprintf(okBody, ""), 401, "authentication_error", "", false},
		{"malformed key", "not-a-key", fmt.Sprintf(okBody, ""), 401, "authentication_error", "", false},
		{"bad json", key, `{"model":`, 400, "invalid_request_error", "", false},
		{"unknown model", key, `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, "not_found_error", "model", false},
		{"model not allowed for key", key, `{"model":"deepseek-v4-pro","messages":[{"role":"user","content":"x"}]}`, 403, "permission_error", "model", false},
		{"temperature", key, `{"model":"deepseek-chat","temperature":3,"messages":[{"role":"user","content":"x"}]}`, 400, "invalid_request_error", "temperature", false},
		{"upstream 400 passes message", key, fmt.Sprintf(okBody, "#sim status=400"), 400, "invalid_request_error", "", true},
		{"upstream 401 hidden as 502", key, fmt.Sprintf(okBody, "#sim status=401"), 502, "upstream_error", "", true},
		{"upstream 402 hidden as 502", key, fmt.Sprintf(okBody, "#sim status=402"), 502, "upstream_error", "", true},
		{"upstream 429 after retries", key, fmt.Sprintf(okBody, "#sim status=429"), 503, "service_unavailable", "", true},
		{"upstream 500 after retries", key, fmt.Sprintf(okBody, "#sim status=500"), 502, "upstream_error", "", true},
		{"upstream hangs: first byte timeout", key, fmt.Sprintf(okBody, "#sim hang"), 504, "upstream_timeout", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.sim.Stats().Requests
			r := h.post(t, tc.key, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			typ, param, msg := errorOf(t, r.body)
			if typ != tc.typ || param != tc.param {
				t.Errorf("type %q param %q, want %q %q (%s)", typ, param, tc.typ, tc.param, msg)
			}
			if r.header.Get("X-Request-Id") == "" || r.header.Get("Openai-Processing-Ms") == "" {
				t.Errorf("missing x-request-id or openai-processing-ms: %v", r.header)
			}
			if reached := h.sim.Stats().Requests > before; reached != tc.reachesUp {
				t.Errorf("reached upstream = %v, want %v", reached, tc.reachesUp)
			}
			if strings.Contains(msg, "sk-upstream") {
				t.Errorf("upstream key leaked in %q", msg)
			}
		})
	}
}

func TestRoutes(t *testing.T) {
	h := startGateway(t, nil)
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/v1/models", 200},
		{"GET", "/v1/models/deepseek-reasoner", 200},
		{"GET", "/v1/models/nope", 404},
		{"GET", "/v1/nothing", 404},
		{"DELETE", "/v1/models", 405},
		{"GET", "/v1/chat/completions", 405},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, h.url+tc.path, nil)
			req.Header.Set("X-Request-Id", "client-id-1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if resp.Header.Get("X-Request-Id") != "client-id-1" {
				t.Errorf("x-request-id = %q", resp.Header.Get("X-Request-Id"))
			}
			if tc.status != 200 {
				errorOf(t, string(b))
			}
		})
	}
}

func TestMeteringEvents(t *testing.T) {
	h := startGateway(t, nil)
	key := h.addKey(t, "key_meter")

	r := h.post(t, key, `{"model":"deepseek-reasoner","messages":[{"role":"user","content":"one two three"}]}`)
	if r.status != 200 || !strings.Contains(r.body, "reasoning_content") {
		t.Fatalf("non-stream: %d %s", r.status, r.body)
	}
	// Stream without include_usage: the client must not see a usage chunk.
	r = h.post(t, key, `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"four five"}]}`)
	if r.status != 200 || !strings.HasSuffix(r.body, "data: [DONE]\n\n") {
		t.Fatalf("stream: %d %q", r.status, r.body)
	}
	if strings.Contains(r.body, `"usage"`) {
		t.Errorf("usage chunk shown to a client that did not ask: %s", r.body)
	}
	// Stream with include_usage: exactly one usage chunk, with choices [].
	r = h.post(t, key, `{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"six"}]}`)
	if n := strings.Count(r.body, `"usage":{`); n != 1 || !strings.Contains(r.body, `"choices":[]`) {
		t.Errorf("want one usage chunk with empty choices, got %d in %s", n, r.body)
	}

	evs := h.events(t, 3)
	st := h.sim.Stats()
	var prompt, completion, reasoning int64
	for _, ev := range evs {
		if ev.KeyID != "key_meter" || ev.Status != 200 || ev.Outcome != usage.OutcomeCompleted || ev.UsageSource != usage.SourceReported {
			t.Errorf("unexpected event %+v", ev)
		}
		if ev.PromptTokens != ev.CacheHitTokens+ev.CacheMissTokens {
			t.Errorf("cache split does not add up: %+v", ev)
		}
		prompt += ev.PromptTokens
		completion += ev.CompletionTokens
		reasoning += ev.ReasoningTokens
	}
	if uint64(prompt) != st.PromptTokens || uint64(completion) != st.CompletionTokens || uint64(reasoning) != st.ReasoningTokens {
		t.Errorf("events total prompt %d completion %d reasoning %d; simulator served %+v", prompt, completion, reasoning, st)
	}
	if evs[0].Model != "deepseek-reasoner" || evs[0].UpstreamModel != "deepseek-v4-flash" || !evs[0].Thinking || evs[0].ReasoningTokens == 0 {
		t.Errorf("reasoner event: %+v", evs[0])
	}
	if !evs[1].Stream || evs[1].Thinking {
		t.Errorf("stream event: %+v", evs[1])
	}
}

// TestClientCancelStopsUpstream hangs up mid-stream: the upstream request
// must be cancelled and the event must record what was generated, flagged.
func TestClientCancelStopsUpstream(t *testing.T) {
	h := startGateway(t, nil)
	key := h.addKey(t, "key_cancel")
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"#sim tokens=1000 chunk_delay_ms=20"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for n := 0; n < 10; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, `"content":"`) {
			n++
		}
	}
	cancel()
	_ = resp.Body.Close()

	evs := h.events(t, 1)
	ev := evs[0]
	if ev.Outcome != usage.OutcomeClientCancelled || ev.UsageSource != usage.SourceEstimated || ev.CompletionTokens < 5 || ev.CompletionTokens > 1000 {
		t.Errorf("cancelled event: %+v", ev)
	}
	// The upstream never reported usage: the prompt is the gateway's
	// estimate of the messages (about four bytes a token).
	if want := int64(len(`[{"role":"user","content":"#sim tokens=1000 chunk_delay_ms=20"}]`) / 4); ev.PromptTokens != want {
		t.Errorf("cancelled event prompt %d, want the estimate %d", ev.PromptTokens, want)
	}
	// The simulator must see the cancellation promptly (it stops counting).
	deadline := time.Now().Add(2 * time.Second)
	for h.sim.Stats().InFlight != 0 {
		if time.Now().After(deadline) {
			t.Fatal("upstream request still running after the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoolFailover breaks one of two upstreams: every request still
// succeeds (retried on the healthy member before any byte reached the
// client) and the broken member is ejected after a few failures.
func TestPoolFailover(t *testing.T) {
	broken := upstreamsim.New(upstreamsim.Config{APIKey: "sk-upstream"})
	bts := httptest.NewServer(broken)
	t.Cleanup(bts.Close)
	resp, err := http.Post(bts.URL+"/_sim/faults", "application/json", strings.NewReader(`{"status":500,"count":-1}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("set fault: %v %v", err, resp)
	}
	_ = resp.Body.Close()

	h := startGateway(t, func(c *config.Config) {
		c.Upstream.Members = append([]config.Member{{BaseURL: bts.URL, APIKey: "sk-upstream", Weight: 1}}, c.Upstream.Members...)
		c.Upstream.EjectAfter = 2
		c.Upstream.Cooldown = time.Minute
	})
	key := h.addKey(t, "key_pool")
	for i := range 20 {
		r := h.post(t, key, fmt.Sprintf(`{"model":"deepseek-chat","messages":[{"role":"user","content":"n%d"}]}`, i))
		if r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	if got := broken.Stats().Requests; got > 2 {
		t.Errorf("broken member got %d requests; it should be ejected after 2 failures", got)
	}
	if got := h.sim.Stats().Completed; got != 20 {
		t.Errorf("healthy member completed %d, want 20", got)
	}
	// Failed attempts on the broken member produced no usage: 20 events.
	h.events(t, 20)
}

// TestTelemetry: a client's traceparent is joined (its trace id lands in
// the usage event) and /metrics, on the internal listener, exposes request
// and publisher series.
func TestTelemetry(t *testing.T) {
	h := startGateway(t, nil)
	key := h.addKey(t, "key_tel")
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"trace me"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body) // only the usage event is checked
	_ = resp.Body.Close()
	ev := h.events(t, 1)[0]
	if ev.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id %q, want the client's", ev.TraceID)
	}

	mresp, err := http.Get(h.metricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(mresp.Body)
	_ = mresp.Body.Close()
	for _, want := range []string{
		`qyai_gateway_requests_total{model="gpt-4o",route="/v1/chat/completions",status="200"} 1`,
		`qyai_gateway_request_duration_seconds_bucket{`,
		`qyai_usage_events_published_total`,
		`qyai_usage_spool_bytes`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
