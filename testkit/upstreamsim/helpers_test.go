package upstreamsim

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// fixedNow is the clock of every test server.
func fixedNow() time.Time { return time.Unix(1746000000, 0) }

// newSim starts a simulator behind a real HTTP server for one test.
func newSim(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.InstanceID == "" {
		cfg.InstanceID = "test"
	}
	if cfg.Now == nil {
		cfg.Now = fixedNow
	}
	s := New(cfg)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL
}

// do sends one request and returns the status and the whole body.
func do(t *testing.T, method, url, body string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s %s: %v", method, url, err)
	}
	return resp.StatusCode, b
}

func chat(t *testing.T, base, body string, header ...string) (int, []byte) {
	t.Helper()
	return do(t, http.MethodPost, base+"/chat/completions", body, header...)
}

// Wire types, decoded independently of the renderer.
type usageJSON struct {
	PromptTokens          int `json:"prompt_tokens"`
	CompletionTokens      int `json:"completion_tokens"`
	TotalTokens           int `json:"total_tokens"`
	PromptCacheHitTokens  int `json:"prompt_cache_hit_tokens"`
	PromptCacheMissTokens int `json:"prompt_cache_miss_tokens"`
	PromptTokensDetails   struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
}

type toolCallJSON struct {
	Index    *int   `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type messageJSON struct {
	Role             string         `json:"role"`
	Content          *string        `json:"content"`
	ReasoningContent *string        `json:"reasoning_content"`
	ToolCalls        []toolCallJSON `json:"tool_calls"`
}

type completionJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int             `json:"index"`
		Message      messageJSON     `json:"message"`
		Delta        messageJSON     `json:"delta"`
		Logprobs     json.RawMessage `json:"logprobs"`
		FinishReason *string         `json:"finish_reason"`
	} `json:"choices"`
	Usage             *usageJSON `json:"usage"`
	SystemFingerprint string     `json:"system_fingerprint"`
}

func decodeCompletion(t *testing.T, b []byte) completionJSON {
	t.Helper()
	var c completionJSON
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("decode completion %s: %v", b, err)
	}
	return c
}

// checkUsage asserts the invariants every usage has.
func checkUsage(t *testing.T, u *usageJSON) {
	t.Helper()
	if u == nil {
		t.Fatal("no usage")
	}
	if u.PromptCacheHitTokens+u.PromptCacheMissTokens != u.PromptTokens {
		t.Errorf("hit %d + miss %d != prompt %d", u.PromptCacheHitTokens, u.PromptCacheMissTokens, u.PromptTokens)
	}
	if u.TotalTokens != u.PromptTokens+u.CompletionTokens {
		t.Errorf("total %d != prompt %d + completion %d", u.TotalTokens, u.PromptTokens, u.CompletionTokens)
	}
	if u.PromptTokensDetails.CachedTokens != u.PromptCacheHitTokens {
		t.Errorf("cached_tokens %d != hit %d", u.PromptTokensDetails.CachedTokens, u.PromptCacheHitTokens)
	}
}

// sseEvent is one Server-Sent Event: a comment, a chunk or [DONE].
type sseEvent struct {
	raw     string
	comment bool
	done    bool
	chunk   completionJSON
}

// parseSSE splits a stream body into events; it fails on anything that is
// not a well-formed event.
func parseSSE(t *testing.T, body []byte) []sseEvent {
	t.Helper()
	var evs []sseEvent
	rest := string(body)
	for rest != "" {
		raw, after, ok := strings.Cut(rest, "\n\n")
		if !ok {
			t.Fatalf("unterminated event %q", rest)
		}
		rest = after
		ev := sseEvent{raw: raw}
		switch {
		case strings.HasPrefix(raw, ":"):
			ev.comment = true
		case raw == "data: [DONE]":
			ev.done = true
		case strings.HasPrefix(raw, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(raw, "data: ")), &ev.chunk); err != nil {
				t.Fatalf("decode chunk %q: %v", raw, err)
			}
		default:
			t.Fatalf("unexpected event %q", raw)
		}
		evs = append(evs, ev)
	}
	return evs
}

// streamed is what a client assembles from a stream.
type streamed struct {
	role, content, reasoning string
	tool                     toolCallJSON
	finish                   string
	usage                    *usageJSON
	tokenChunks              int // chunks carrying content, reasoning or tool arguments
	keepalives               int
	done                     bool
}

func assemble(t *testing.T, evs []sseEvent) streamed {
	t.Helper()
	var s streamed
	for i, ev := range evs {
		switch {
		case ev.comment:
			s.keepalives++
			continue
		case ev.done:
			if i != len(evs)-1 {
				t.Errorf("[DONE] is event %d of %d", i, len(evs))
			}
			s.done = true
			continue
		}
		c := ev.chunk
		if c.Object != "chat.completion.chunk" {
			t.Errorf("object %q", c.Object)
		}
		if c.Usage != nil {
			s.usage = c.Usage
			if len(c.Choices) == 0 {
				continue
			}
			// DeepSeek's shape (usage_on_finish): usage on the finish chunk.
			if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil {
				t.Errorf("usage on a chunk that does not finish: %s", ev.raw)
			}
		}
		if len(c.Choices) != 1 {
			t.Fatalf("chunk has %d choices: %s", len(c.Choices), ev.raw)
		}
		ch := c.Choices[0]
		d := ch.Delta
		if d.Role != "" {
			s.role = d.Role
		}
		if d.Content != nil && *d.Content != "" {
			s.content += *d.Content
			s.tokenChunks++
		}
		if d.ReasoningContent != nil && *d.ReasoningContent != "" {
			s.reasoning += *d.ReasoningContent
			s.tokenChunks++
		}
		for _, tc := range d.ToolCalls {
			if tc.ID != "" {
				s.tool.ID, s.tool.Type, s.tool.Function.Name = tc.ID, tc.Type, tc.Function.Name
			}
			if tc.Function.Arguments != "" {
				s.tool.Function.Arguments += tc.Function.Arguments
				s.tokenChunks++
			}
		}
		if ch.FinishReason != nil {
			s.finish = *ch.FinishReason
		}
	}
	return s
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// errorBody decodes a DeepSeek-style error and checks its shape.
func errorBody(t *testing.T, b []byte) (message, typ string) {
	t.Helper()
	var e struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("decode error body %s: %v", b, err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e.Error[k]; !ok {
			t.Errorf("error body %s lacks %q", b, k)
		}
	}
	if p := e.Error["param"]; !bytes.Equal(p, []byte("null")) {
		t.Errorf("param = %s, want null", p)
	}
	_ = json.Unmarshal(e.Error["message"], &message)
	_ = json.Unmarshal(e.Error["type"], &typ)
	return message, typ
}
