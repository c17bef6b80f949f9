package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
)

var update = flag.Bool("update", false, "rewrite golden files")

// recorder is the test's Publisher: it keeps the events (NATS itself is
// covered by the app and end-to-end tests).
type recorder struct {
	mu  sync.Mutex
	evs []*usage.Event
}

func (r *recorder) Publish(ev *usage.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

// replay serves a recorded upstream SSE file.
func replay(t *testing.T, file string) *httptest.Server {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "sse", file))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write(b)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func newTestHandler(t *testing.T, upstreamURL string) (*Handler, *recorder) {
	t.Helper()
	cat, err := catalog.NewHolder("")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	return &Handler{
		Catalog: cat,
		Upstream: NewUpstream(UpstreamConfig{
			Members:        []Member{{BaseURL: upstreamURL}},
			ConnectTimeout: time.Second, FirstByteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, MaxConns: 4,
		}),
		Pub: rec, Log: slog.New(slog.DiscardHandler),
		Instance: "test", MaxBody: 1 << 20, Now: time.Now,
	}, rec
}

func TestStreamGolden(t *testing.T) {
	tests := []struct {
		name, upstream, body string
		wantOutcome          string
		wantSource           string
		wantCompletion       int64
	}{
		{"thinking_no_usage", "thinking.upstream", `{"model":"deepseek-reasoner","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 9},
		{"thinking_with_usage", "thinking.upstream", `{"model":"deepseek-reasoner","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 9},
		{"usage_on_finish_hidden", "usage_on_finish.upstream", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 1},
		{"usage_on_finish_shown", "usage_on_finish.upstream", `{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 1},
		// DeepSeek's shape: usage on the finish chunk, none on the others.
		{"deepseek_hidden", "deepseek.upstream", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 9},
		{"deepseek_shown", "deepseek.upstream", `{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 9},
		// The simulator's (and OpenAI's) shape, recorded from upstream-sim.
		{"sim_hidden", "sim.upstream", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 3},
		{"sim_shown", "sim.upstream", `{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 3},
		// A usage-only chunk with usage as its first member, "usage": null
		// (with a space) first on the others, CRLF line ends.
		{"usage_only_hidden", "usage_only.upstream", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 1},
		{"usage_only_shown", "usage_only.upstream", `{"model":"deepseek-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeCompleted, usage.SourceReported, 1},
		{"cut_midway", "cut.upstream", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`, usage.OutcomeUpstreamError, usage.SourceEstimated, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := replay(t, tc.upstream)
			h, rec := newTestHandler(t, up.URL)
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(tc.body))
			if err := h.Chat(w, r, Request{Key: &apikey.Record{ID: "k"}, Start: time.Now()}); err != nil {
				t.Fatalf("Chat: %v", err)
			}
			if ct := w.Header().Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("content-type %q", ct)
			}
			golden := filepath.Join("testdata", "sse", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, w.Body.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got := w.Body.String(); got != string(want) {
				t.Errorf("client stream differs from %s:\n got:\n%s\nwant:\n%s", golden, got, want)
			}
			if tc.wantOutcome == usage.OutcomeCompleted {
				checkShape(t, w.Body.Bytes(), strings.Contains(tc.body, `"include_usage":true`))
			}
			if len(rec.evs) != 1 {
				t.Fatalf("%d events, want 1", len(rec.evs))
			}
			ev := rec.evs[0]
			if ev.Outcome != tc.wantOutcome || ev.UsageSource != tc.wantSource || ev.CompletionTokens != tc.wantCompletion {
				t.Errorf("event outcome %s source %s completion %d, want %s %s %d", ev.Outcome, ev.UsageSource, ev.CompletionTokens,
					tc.wantOutcome, tc.wantSource, tc.wantCompletion)
			}
		})
	}
}

// checkShape asserts OpenAI's stream shape on what a client received: with
// include_usage, the last chunk before [DONE] has "choices":[] and the
// usage, the one before it a finish_reason, and no other chunk a usage;
// without, no chunk has a usage member at all.
func checkShape(t *testing.T, body []byte, include bool) {
	t.Helper()
	var chunks []map[string]json.RawMessage
	done := false
	for _, line := range strings.Split(strings.ReplaceAll(string(body), "\r\n", "\n"), "\n") {
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			done = true
			continue
		}
		if done {
			t.Errorf("a chunk after [DONE]: %s", data)
		}
		var c map[string]json.RawMessage
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("chunk is not a JSON object: %s", data)
		}
		chunks = append(chunks, c)
	}
	if !done || len(chunks) < 2 {
		t.Fatalf("%d chunks, done %v", len(chunks), done)
	}
	hasUsage := func(c map[string]json.RawMessage) bool { u, ok := c["usage"]; return ok && string(u) != "null" }
	if !include {
		for i, c := range chunks {
			if _, ok := c["usage"]; ok {
				t.Errorf("chunk %d has a usage member the client did not ask for", i)
			}
		}
		return
	}
	last, fin := chunks[len(chunks)-1], chunks[len(chunks)-2]
	var lastChoices []json.RawMessage
	if json.Unmarshal(last["choices"], &lastChoices) != nil || lastChoices == nil || len(lastChoices) != 0 || !hasUsage(last) {
		t.Errorf("last chunk: choices %s usage %s, want [] and the usage", last["choices"], last["usage"])
	}
	var choices []struct {
		FinishReason *string `json:"finish_reason"`
	}
	if err := json.Unmarshal(fin["choices"], &choices); err != nil || len(choices) != 1 || choices[0].FinishReason == nil {
		t.Errorf("the chunk before the usage has no finish_reason: %s", fin["choices"])
	}
	for i, c := range chunks[:len(chunks)-1] {
		if hasUsage(c) {
			t.Errorf("chunk %d has usage before the last", i)
		}
	}
}

func TestShowUsage(t *testing.T) {
	const fin = `"choices":[{"index":0,"delta":{"content":"\"usage\":{}"},"finish_reason":"stop"}]`
	const use = `{"prompt_tokens":7,"completion_tokens":3,"completion_tokens_details":{"reasoning_tokens":1}}`
	tests := []struct {
		name, in    string
		include     bool
		want        string // "" with drop
		drop, meter bool
	}{
		{"null_last_hidden", `{"id":"x",` + fin + `,"usage":null}`, false, `{"id":"x",` + fin + `}`, false, false},
		{"null_first_hidden", `{"usage": null, "id":"x",` + fin + `}`, false, `{"id":"x",` + fin + `}`, false, false},
		{"null_spaced_hidden", `{"id":"x" , "usage" : null ,` + fin + `}`, false, `{"id":"x" ,` + fin + `}`, false, false},
		{"null_escaped_key_hidden", `{"id":"x",` + fin + `,"us\u0061ge":null}`, false, `{"id":"x",` + fin + `}`, false, false},
		{"null_shown", `{"id":"x",` + fin + `,"usage":null}`, true, `{"id":"x",` + fin + `,"usage":null}`, false, false},
		{"nested_usage_untouched", `{"id":"x","choices":[{"usage":null}]}`, false, `{"id":"x","choices":[{"usage":null}]}`, false, false},
		{"usage_only_hidden", `{"id":"x","choices":[],"usage":` + use + `}`, false, "", true, true},
		{"usage_only_first_hidden", `{"usage":` + use + `,"id":"x","choices":[ ]}`, false, "", true, true},
		{"usage_only_shown", `{"id":"x","choices":[],"usage":` + use + `}`, true, `{"id":"x","choices":[],"usage":` + use + `}`, false, true},
		{"on_finish_hidden", `{"id":"x",` + fin + `,"usage":` + use + `}`, false, `{"id":"x",` + fin + `}`, false, true},
		{"on_finish_first_hidden", `{"usage":` + use + `,"id":"x",` + fin + `}`, false, `{"id":"x",` + fin + `}`, false, true},
		{"on_finish_shown", `{"id":"x",` + fin + `,"usage":` + use + `}`, true,
			`{"id":"x",` + fin + `,"usage":null}` + "\n\ndata: " + `{"id":"x","choices":[],"usage":` + use + `}`, false, true},
		{"no_choices_shown", `{"id":"x","usage":` + use + `}`, true, `{"id":"x","usage":` + use + `,"choices":[]}`, false, true},
		{"no_choices_hidden", `{"id":"x","choices":null,"usage":` + use + `}`, false, "", true, true},
		{"duplicate_hidden", `{"usage":` + use + `,"id":"x",` + fin + `,"usage":null}`, false, `{"id":"x",` + fin + `}`, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			line := []byte("data: " + tc.in + "\n")
			ev := &usage.Event{}
			out, drop := showUsage(line, len("data: "), len(tc.in), tc.include, ev)
			if drop != tc.drop {
				t.Fatalf("drop = %v, want %v", drop, tc.drop)
			}
			if !drop && string(out) != "data: "+tc.want+"\n" {
				t.Errorf("got  %q\nwant %q", out, "data: "+tc.want+"\n")
			}
			if metered := ev.UsageSource == usage.SourceReported; metered != tc.meter || tc.meter && (ev.PromptTokens != 7 || ev.CompletionTokens != 3) {
				t.Errorf("metered %v (%+v), want %v", metered, ev, tc.meter)
			}
		})
	}
}

// TestShowUsageNullInPlace: the common chunk ("usage":null, hidden) is
// rewritten without allocating.
func TestShowUsageNullInPlace(t *testing.T) {
	in := []byte(`data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}` + "\n")
	buf := make([]byte, len(in))
	ev := &usage.Event{}
	if n := testing.AllocsPerRun(100, func() {
		copy(buf, in)
		_, _ = showUsage(buf, len("data: "), len(in)-len("data: \n"), false, ev)
	}); n != 0 {
		t.Errorf("%v allocations per chunk, want 0", n)
	}
}

// heldStream relays a stream whose upstream sends first, then waits until
// the test releases it before sending rest. It returns what the client read
// before the release, and the rest of the stream after it.
func heldStream(t *testing.T, first, rest string) (early, late string) {
	t.Helper()
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, first)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, rest)
	}))
	defer up.Close()
	h, _ := newTestHandler(t, up.URL)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.Chat(w, r, Request{Key: &apikey.Record{ID: "k"}, Start: time.Now()}); err != nil {
			var e *apierr.Error
			if !errors.As(err, &e) {
				t.Errorf("Chat: %v is not an *apierr.Error", err)
				return
			}
			e.Write(w)
		}
	}))
	defer gw.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gw.URL, strings.NewReader(`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf) // returns once the gateway flushed something
	if err != nil {
		t.Fatalf("reading the first flush: %v", err)
	}
	close(release)
	b, _ := io.ReadAll(resp.Body)
	return string(buf[:n]), string(b)
}

// TestStreamEventsAreFlushedAsTheyArrive checks pass-through: the client
// sees the first chunk while the upstream is still holding the second.
func TestStreamEventsAreFlushedAsTheyArrive(t *testing.T) {
	early, late := heldStream(t, "data: {\"choices\":[{\"delta\":{\"content\":\"first\"}}]}\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n")
	if !strings.Contains(early, "first") {
		t.Fatalf("first chunk not delivered before the upstream finished: %q", early)
	}
	if !strings.HasSuffix(late, "data: [DONE]\n\n") {
		t.Errorf("stream did not end with [DONE]: %q", late)
	}
}

// TestStreamFlushesAnEventBeforeAPartialOne: the upstream sends one whole
// event and half of the next in one write; the client must get the whole
// one while the gateway waits for the rest.
func TestStreamFlushesAnEventBeforeAPartialOne(t *testing.T) {
	early, late := heldStream(t, "data: {\"choices\":[{\"delta\":{\"content\":\"whole\"}}]}\n\ndata: {\"choices\":[{\"delta\":",
		"{\"content\":\"rest\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n")
	if !strings.Contains(early, "whole") {
		t.Fatalf("the whole event was held back behind a partial one: %q", early)
	}
	if !strings.Contains(late, "rest") || !strings.HasSuffix(late, "data: [DONE]\n\n") {
		t.Errorf("rest of the stream: %q", late)
	}
}
