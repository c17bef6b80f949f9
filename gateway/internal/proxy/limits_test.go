package proxy

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
)

// upstream stands in for a misbehaving provider.
func upstream(t *testing.T, fn http.HandlerFunc) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(fn)
	t.Cleanup(ts.Close)
	return ts
}

// chat sends body through a handler with small limits and returns the
// client's response, the one usage event, and how often the quota
// reservation was given back.
func chat(t *testing.T, upstreamURL, body string) (*httptest.ResponseRecorder, *usage.Event, int) {
	t.Helper()
	h, rec := newTestHandler(t, upstreamURL)
	h.MaxAnswer = 4 << 10
	h.MaxEventLine = 1 << 10
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
	givenBack := 0
	if err := h.Chat(w, r, Request{Key: &apikey.Record{ID: "k"}, Start: time.Now(), NotReached: func() { givenBack++ }}); err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if len(rec.evs) != 1 {
		t.Fatalf("%d usage events, want 1", len(rec.evs))
	}
	return w, rec.evs[0], givenBack
}

// wantUpstreamError checks a plain (not streamed) 502 upstream_error answer.
func wantUpstreamError(t *testing.T, w *httptest.ResponseRecorder, code string) {
	t.Helper()
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502; body %.200q", w.Code, w.Body.String())
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content-type %q, want application/json", ct)
	}
	var b apierr.Body
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || b.Error == nil {
		t.Fatalf("body is not an OpenAI error: %v %.200q", err, w.Body.String())
	}
	gotCode := ""
	if b.Error.Code != nil {
		gotCode = *b.Error.Code
	}
	if b.Error.Type != apierr.TypeUpstream || gotCode != code {
		t.Errorf("error %+v, want type upstream_error code %q", b.Error, code)
	}
}

// answer is a non-streaming completion of about n bytes.
func answer(n int) string {
	head := `{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	tail := `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`
	return head + strings.Repeat("x", max(0, n-len(head)-len(tail))) + tail
}

const unaryBody = `{"model":"deepseek-chat","messages":[{"role":"user","content":"q"}]}`

// TestUnaryAnswerOverLimit: an answer over MaxAnswer is a 502
// upstream_error, never a truncated 200, whether or not the upstream
// declared its length; one at the limit passes.
func TestUnaryAnswerOverLimit(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		declared bool
		wantOK   bool
	}{
		{"declared_over", 8 << 10, true, false},
		{"chunked_over", 8 << 10, false, false},
		{"one_byte_over", 4<<10 + 1, false, false},
		{"at_limit", 4 << 10, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := answer(tc.size)
			if len(a) != tc.size {
				t.Fatalf("answer is %d bytes, want %d", len(a), tc.size)
			}
			up := upstream(t, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if tc.declared {
					w.Header().Set("Content-Length", strconv.Itoa(len(a)))
				}
				_, _ = io.WriteString(w, a[:len(a)/2])
				w.(http.Flusher).Flush() // without a declared length: chunked
				_, _ = io.WriteString(w, a[len(a)/2:])
			})
			w, ev, givenBack := chat(t, up.URL, unaryBody)
			if givenBack != 0 {
				t.Errorf("quota given back %d times; the request reached the upstream", givenBack)
			}
			if tc.wantOK {
				if w.Code != http.StatusOK || w.Body.String() != a {
					t.Fatalf("status %d, body of %d bytes; want the whole answer as 200", w.Code, w.Body.Len())
				}
				if ev.Outcome != usage.OutcomeCompleted || ev.UsageSource != usage.SourceReported || ev.CompletionTokens != 5 {
					t.Errorf("event %s %s completion %d", ev.Outcome, ev.UsageSource, ev.CompletionTokens)
				}
				return
			}
			wantUpstreamError(t, w, "upstream_response_too_large")
			// Metered as an answer that broke off: the request counts, no
			// tokens are made up.
			if ev.Status != http.StatusBadGateway || ev.ErrorType != apierr.TypeUpstream ||
				ev.Outcome != usage.OutcomeUpstreamError || ev.UsageSource != usage.SourceNone {
				t.Errorf("event status %d type %s outcome %s source %s", ev.Status, ev.ErrorType, ev.Outcome, ev.UsageSource)
			}
		})
	}
}

const streamBody = `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"q"}]}`

func contentChunk(text string) string {
	return `data: {"id":"d1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"` + text + `"},"finish_reason":null}]}` + "\n\n"
}

// TestStreamLineOverLimitBeforeContent: a line over MaxEventLine before
// anything reached the client is a plain 502 upstream_error, including a
// line that never ends (the upstream holds it open).
func TestStreamLineOverLimitBeforeContent(t *testing.T) {
	tests := []struct {
		name  string
		first string
		hold  bool
	}{
		{"long_event", contentChunk(strings.Repeat("x", 2<<10)) + "data: [DONE]\n\n", false},
		{"endless_line", "data: " + strings.Repeat("x", 64<<10), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, tc.first)
				if tc.hold {
					w.(http.Flusher).Flush()
					<-r.Context().Done() // the gateway must give up, not wait for a newline
				}
			})
			w, ev, givenBack := chat(t, up.URL, streamBody)
			wantUpstreamError(t, w, "upstream_line_too_long")
			if givenBack != 0 {
				t.Errorf("quota given back %d times; the request reached the upstream", givenBack)
			}
			if ev.Status != http.StatusBadGateway || ev.ErrorType != apierr.TypeUpstream ||
				ev.Outcome != usage.OutcomeUpstreamError || ev.UsageSource != usage.SourceNone {
				t.Errorf("event status %d type %s outcome %s source %s", ev.Status, ev.ErrorType, ev.Outcome, ev.UsageSource)
			}
		})
	}
}

// TestStreamEmptyIsAnError: a stream that ends before its first event is
// a plain 502, not an empty 200.
func TestStreamEmptyIsAnError(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
	})
	w, ev, _ := chat(t, up.URL, streamBody)
	wantUpstreamError(t, w, "")
	if ev.Status != http.StatusBadGateway || ev.Outcome != usage.OutcomeUpstreamError || ev.UsageSource != usage.SourceNone {
		t.Errorf("event status %d outcome %s source %s", ev.Status, ev.Outcome, ev.UsageSource)
	}
}

// TestStreamLineOverLimitAfterContent: once the stream started, a line over
// MaxEventLine ends it the way a cut upstream stream ends: an error event,
// no [DONE], and a usage event estimated from what was relayed.
func TestStreamLineOverLimitAfterContent(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, contentChunk("one")+contentChunk(" two"))
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, contentChunk(strings.Repeat("x", 2<<10))+"data: [DONE]\n\n")
	})
	w, ev, _ := chat(t, up.URL, streamBody)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d content-type %q, want the stream", w.Code, w.Header().Get("Content-Type"))
	}
	got := w.Body.String()
	if !strings.HasPrefix(got, contentChunk("one")+contentChunk(" two")) {
		t.Errorf("content before the long line not relayed: %.300q", got)
	}
	if strings.Contains(got, "xxxx") || strings.Contains(got, "[DONE]") {
		t.Errorf("the long line or [DONE] reached the client: %.300q", got)
	}
	events := strings.Split(strings.TrimSuffix(got, "\n\n"), "\n\n")
	last := strings.TrimPrefix(events[len(events)-1], "data: ")
	var b apierr.Body
	if err := json.Unmarshal([]byte(last), &b); err != nil || b.Error == nil ||
		b.Error.Type != apierr.TypeUpstream || b.Error.Code == nil || *b.Error.Code != "upstream_line_too_long" {
		t.Errorf("last event %q is not an upstream_line_too_long error (%v)", last, err)
	}
	if ev.Status != http.StatusBadGateway || ev.ErrorType != apierr.TypeUpstream || ev.Outcome != usage.OutcomeUpstreamError ||
		ev.UsageSource != usage.SourceEstimated || ev.CompletionTokens != 2 {
		t.Errorf("event status %d type %s outcome %s source %s completion %d, want 502 upstream_error estimated 2",
			ev.Status, ev.ErrorType, ev.Outcome, ev.UsageSource, ev.CompletionTokens)
	}
}

// TestReadLineLimit: the bound holds across buffer refills, and a line of
// exactly the limit (newline included) passes.
func TestReadLineLimit(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		wantErr error
	}{
		{"short", "data: x\n", nil},
		{"at_limit", strings.Repeat("a", 63) + "\n", nil},
		{"over_limit", strings.Repeat("a", 64) + "\n", errLineTooLong},
		{"over_limit_no_newline", strings.Repeat("a", 100), errLineTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.line+"next\n"), 16)
			got, err := readLine(br, nil, 64)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && string(got) != tc.line {
				t.Errorf("got %q, want %q", got, tc.line)
			}
			if len(got) > 64 {
				t.Errorf("buffered %d bytes past the limit", len(got))
			}
		})
	}
}
