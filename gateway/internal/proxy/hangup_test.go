package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
)

// hangUpMessages is a prompt long enough that its estimate is far from 0.
var hangUpMessages = `[{"role":"user","content":"` + strings.Repeat("word ", 200) + `"}]`

// signal closes ch once.
type signal struct {
	once sync.Once
	ch   chan struct{}
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

func (s *signal) fire() { s.once.Do(func() { close(s.ch) }) }

// headersArrived fires its signal once the upstream's response headers
// reached the gateway: from then on a hang-up is seen while reading the
// answer, not while waiting for it.
type headersArrived struct {
	rt http.RoundTripper
	s  *signal
}

func (t headersArrived) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err == nil {
		t.s.fire()
	}
	return resp, err
}

// relayed fires its signal once the gateway wrote marker to the client.
type relayed struct {
	*httptest.ResponseRecorder
	marker []byte
	s      *signal
}

func (w relayed) Write(b []byte) (int, error) {
	n, err := w.ResponseRecorder.Write(b)
	if bytes.Contains(b, w.marker) {
		w.s.fire()
	}
	return n, err
}

// TestHangUpBillsThePrompt: a client that hangs up once the request reached
// the upstream is billed for its prompt (estimated from its messages) and
// what was relayed, whether it left before the upstream answered, before
// the first content chunk or mid-stream; usage the upstream reported before
// the client left is exact and wins.
func TestHangUpBillsThePrompt(t *testing.T) {
	estimatedPrompt := int64(len(hangUpMessages) / 4)
	const (
		roleChunk  = `data: {"id":"d1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n"
		usageChunk = `data: {"id":"d1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":1,"total_tokens":12}}` + "\n\n"
	)
	tests := []struct {
		name   string
		stream bool
		extra  string // more request fields
		// sent is what the upstream sends before it waits for the hang-up;
		// "" sends not even the headers.
		sent string
		// marker, when set, is what the client must have received before it
		// hangs up; otherwise it hangs up once the upstream has the request
		// (sent == "") or the gateway has the upstream's headers.
		marker         string
		wantSource     string
		wantPrompt     int64
		wantCompletion int64
	}{
		{name: "stream_before_headers", stream: true,
			wantSource: usage.SourceEstimated, wantPrompt: estimatedPrompt},
		{name: "unary_before_headers",
			wantSource: usage.SourceEstimated, wantPrompt: estimatedPrompt},
		{name: "unary_before_answer", sent: "\n\n{\"id\":",
			wantSource: usage.SourceEstimated, wantPrompt: estimatedPrompt},
		{name: "stream_before_content", stream: true, sent: ": keep-alive\n\n" + roleChunk, marker: `"role"`,
			wantSource: usage.SourceEstimated, wantPrompt: estimatedPrompt},
		{name: "stream_after_content", stream: true, sent: roleChunk + contentChunk("c1") + contentChunk("c2") + contentChunk("c3"), marker: `"c3"`,
			wantSource: usage.SourceEstimated, wantPrompt: estimatedPrompt, wantCompletion: 3},
		{name: "stream_usage_reported_before_hang_up", stream: true, extra: `"stream_options":{"include_usage":true},`,
			sent: roleChunk + contentChunk("c1") + usageChunk, marker: `"usage":{`,
			wantSource: usage.SourceReported, wantPrompt: 11, wantCompletion: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			received := newSignal()
			released := make(chan struct{})
			up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if tc.sent != "" {
					if tc.stream {
						w.Header().Set("Content-Type", "text/event-stream")
					} else {
						w.Header().Set("Content-Type", "application/json")
					}
					_, _ = io.WriteString(w, tc.sent)
					w.(http.Flusher).Flush()
				}
				received.fire()
				select { // the gateway must cancel this request when its client leaves
				case <-r.Context().Done():
				case <-released:
				}
			})
			t.Cleanup(func() { close(released) }) // runs before up closes

			h, rec := newTestHandler(t, up.URL)
			arrived := newSignal()
			h.Upstream.client.Transport = headersArrived{rt: h.Upstream.client.Transport, s: arrived}
			hungUp := received.ch
			if tc.sent != "" {
				hungUp = arrived.ch
			}
			w := relayed{ResponseRecorder: httptest.NewRecorder(), marker: []byte("\x00"), s: newSignal()}
			if tc.marker != "" {
				w.marker = []byte(tc.marker)
				hungUp = w.s.ch
			}

			body := `{"model":"deepseek-chat","stream":` + map[bool]string{true: "true", false: "false"}[tc.stream] + `,` +
				tc.extra + `"messages":` + hangUpMessages + `}`
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
			var res Result
			givenBack := 0
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = h.Chat(w, r, Request{Key: &apikey.Record{ID: "k"}, Start: time.Now(), Result: &res, NotReached: func() { givenBack++ }})
			}()
			select {
			case <-hungUp:
			case <-done:
				t.Fatal("the request ended before the client hung up")
			}
			cancel()
			<-done

			if len(rec.evs) != 1 {
				t.Fatalf("%d usage events, want 1", len(rec.evs))
			}
			ev := rec.evs[0]
			if givenBack != 0 {
				t.Errorf("quota given back %d times; the request reached the upstream", givenBack)
			}
			if ev.Outcome != usage.OutcomeClientCancelled || ev.Status != 499 {
				t.Errorf("event outcome %s status %d, want client_cancelled 499", ev.Outcome, ev.Status)
			}
			if ev.UsageSource != tc.wantSource || ev.PromptTokens != tc.wantPrompt || ev.CompletionTokens != tc.wantCompletion {
				t.Errorf("event source %s prompt %d completion %d, want %s %d %d",
					ev.UsageSource, ev.PromptTokens, ev.CompletionTokens, tc.wantSource, tc.wantPrompt, tc.wantCompletion)
			}
			if ev.CacheHitTokens+ev.CacheMissTokens != ev.PromptTokens {
				t.Errorf("cache split %d + %d does not add up to prompt %d", ev.CacheHitTokens, ev.CacheMissTokens, ev.PromptTokens)
			}
			// The HTTP layer charges the key's TPM with Result.Tokens.
			if res.Tokens != tc.wantPrompt+tc.wantCompletion {
				t.Errorf("result tokens %d, want %d", res.Tokens, tc.wantPrompt+tc.wantCompletion)
			}
		})
	}
}
