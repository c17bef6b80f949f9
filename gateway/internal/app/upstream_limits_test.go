package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/gateway/internal/proxy"
	"github.com/qyai/qyai/pkg/usage"
)

// TestUpstreamEventLineTooLong runs the gateway with its default limits
// against an upstream that sends an SSE line over proxy.DefaultMaxEventLine:
// before any content the client gets a plain 502 upstream_error; after some
// content the stream ends with an error event. Both are metered as upstream
// errors, once each.
func TestUpstreamEventLineTooLong(t *testing.T) {
	chunk := func(text string) string {
		return `data: {"id":"d1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"` + text + `"},"finish_reason":null}]}` + "\n\n"
	}
	long := chunk(strings.Repeat("x", proxy.DefaultMaxEventLine))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		if strings.Contains(string(b), "after content") {
			_, _ = io.WriteString(w, chunk("one")+chunk(" two"))
			w.(http.Flusher).Flush()
		}
		_, _ = io.WriteString(w, long+"data: [DONE]\n\n")
	}))
	t.Cleanup(up.Close)
	h := startGateway(t, func(c *config.Config) {
		c.Upstream.Members = []config.Member{{BaseURL: up.URL, APIKey: "sk-upstream", Weight: 1}}
	})
	key := h.addKey(t, "key_long_line")

	r := h.post(t, key, `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"before content"}]}`)
	if r.status != http.StatusBadGateway || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("before content: %d %q %.300q, want a 502 JSON error", r.status, r.header.Get("Content-Type"), r.body)
	}
	if typ, _, _ := errorOf(t, r.body); typ != "upstream_error" {
		t.Errorf("before content: type %q, want upstream_error", typ)
	}

	r = h.post(t, key, `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"after content"}]}`)
	if r.status != http.StatusOK || !strings.HasPrefix(r.body, chunk("one")+chunk(" two")) {
		t.Fatalf("after content: %d %.300q, want the stream's start", r.status, r.body)
	}
	if strings.Contains(r.body, "[DONE]") || !strings.HasSuffix(r.body, "\n\n") ||
		!strings.Contains(r.body, `data: {"error":{`) || !strings.Contains(r.body, `"code":"upstream_line_too_long"`) {
		t.Errorf("after content: stream did not end with the error event: %.500q", r.body)
	}

	evs := h.events(t, 2)
	for i, wantSource := range []string{usage.SourceNone, usage.SourceEstimated} {
		ev := evs[i]
		if ev.KeyID != "key_long_line" || ev.Status != http.StatusBadGateway || ev.ErrorType != "upstream_error" ||
			ev.Outcome != usage.OutcomeUpstreamError || ev.UsageSource != wantSource {
			t.Errorf("event %d: status %d type %s outcome %s source %s, want 502 upstream_error %s",
				i, ev.Status, ev.ErrorType, ev.Outcome, ev.UsageSource, wantSource)
		}
	}
	if evs[1].CompletionTokens != 2 {
		t.Errorf("after content: %d completion tokens estimated, want 2", evs[1].CompletionTokens)
	}
}
