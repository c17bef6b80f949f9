package upstreamsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readPartial posts body and returns the status, whatever body arrived and
// the error that ended the read (nil on a clean end).
func readPartial(t *testing.T, base, body string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestStreamGolden(t *testing.T) {
	tests := []struct {
		name, file, body string
	}{
		{
			name: "thinking with usage",
			file: "stream_thinking.golden",
			body: `{"model":"deepseek-v4-pro","stream":true,"stream_options":{"include_usage":true},"thinking":{"type":"enabled"},
				"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Why is the sky blue? #sim tokens=5"}]}`,
		},
		{
			name: "tool call in thinking mode with usage",
			file: "stream_tool_call.golden",
			body: `{"model":"deepseek-v4-flash","stream":true,"stream_options":{"include_usage":true},"thinking":{"type":"enabled"},
				"tools":` + weatherTools + `,"messages":[{"role":"user","content":"Weather in \"Paris\"? #sim tokens=4"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := newSim(t, Config{})
			status, got := chat(t, base, tt.body)
			if status != 200 {
				t.Fatalf("status %d: %s", status, got)
			}
			path := filepath.Join("testdata", tt.file)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatalf("write golden: %v", err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create it): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("stream differs from %s:\n got: %s\nwant: %s", path, got, want)
			}
			s := assemble(t, parseSSE(t, got))
			if !s.done || s.usage == nil {
				t.Fatalf("incomplete stream: %+v", s)
			}
			checkUsage(t, s.usage)
		})
	}
}

// TestStreamMatchesNonStream checks that a client assembling a stream gets
// exactly what the non-stream answer holds, for every kind of answer.
func TestStreamMatchesNonStream(t *testing.T) {
	tests := []struct {
		name, fields, content string
	}{
		{"plain", `"model":"deepseek-v4-flash"`, "Hello there"},
		{"thinking", `"model":"deepseek-reasoner"`, "Hello there"},
		{"thinking odd tokens", `"model":"deepseek-v4-pro","thinking":{"type":"enabled"}`, "Hi #sim tokens=7"},
		{"json", `"model":"deepseek-v4-flash","response_format":{"type":"json_object"}`, "json please"},
		{"json empty", `"model":"deepseek-v4-flash","response_format":{"type":"json_object"}`, "json #sim tokens=0"},
		{"length", `"model":"deepseek-v4-flash","max_tokens":3`, "Hello there"},
		{"tool call", `"model":"deepseek-v4-flash","tools":` + weatherTools, "Weather?"},
		{"tool call no tokens", `"model":"deepseek-v4-flash","tools":` + weatherTools, "Weather? #sim tokens=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := newSim(t, Config{CacheEntries: -1})
			msgs := `"messages":[{"role":"user","content":` + quote(tt.content) + `}]`
			status, b := chat(t, base, `{`+tt.fields+`,`+msgs+`}`)
			if status != 200 {
				t.Fatalf("non-stream status %d: %s", status, b)
			}
			c := decodeCompletion(t, b)
			status, sb := chat(t, base, `{`+tt.fields+`,"stream":true,"stream_options":{"include_usage":true},`+msgs+`}`)
			if status != 200 {
				t.Fatalf("stream status %d: %s", status, sb)
			}
			s := assemble(t, parseSSE(t, sb))
			m := c.Choices[0].Message
			if s.role != "assistant" || s.content != deref(m.Content) || s.reasoning != deref(m.ReasoningContent) {
				t.Errorf("stream content %q reasoning %q; non-stream %q %q", s.content, s.reasoning, deref(m.Content), deref(m.ReasoningContent))
			}
			if s.finish != *c.Choices[0].FinishReason {
				t.Errorf("finish %q vs %q", s.finish, *c.Choices[0].FinishReason)
			}
			if len(m.ToolCalls) == 1 {
				tc := m.ToolCalls[0]
				if s.tool.Function.Name != tc.Function.Name || s.tool.Function.Arguments != tc.Function.Arguments || s.tool.Type != "function" ||
					!strings.HasPrefix(s.tool.ID, "call_") {
					t.Errorf("stream tool call %+v; non-stream %+v", s.tool, tc)
				}
				if !json.Valid([]byte(s.tool.Function.Arguments)) {
					t.Errorf("arguments %q are not JSON", s.tool.Function.Arguments)
				}
			}
			// Every token is one chunk; an empty JSON object costs none.
			wantChunks := c.Usage.CompletionTokens
			if strings.HasSuffix(tt.name, "empty") || strings.HasSuffix(tt.name, "no tokens") {
				wantChunks++
			}
			if s.tokenChunks != wantChunks {
				t.Errorf("%d token chunks, want %d", s.tokenChunks, wantChunks)
			}
			cu, su := *c.Usage, *s.usage
			if cu != su {
				t.Errorf("stream usage %+v, non-stream %+v", su, cu)
			}
		})
	}
}

func TestStreamIncludeUsage(t *testing.T) {
	tests := []struct {
		name      string
		options   string
		directive string
		cfg       Config
		usage     bool
		onFinish  bool // DeepSeek's shape: usage on the finish chunk
	}{
		{"absent", ``, ``, Config{}, false, false},
		{"false", `,"stream_options":{"include_usage":false}`, ``, Config{}, false, false},
		{"true", `,"stream_options":{"include_usage":true}`, ``, Config{}, true, false},
		{"on_finish_knob", `,"stream_options":{"include_usage":true}`, ` usage_on_finish`, Config{}, true, true},
		{"on_finish_config", `,"stream_options":{"include_usage":true}`, ``, Config{UsageOnFinish: true}, true, true},
		{"on_finish_knob_off", `,"stream_options":{"include_usage":true}`, ` usage_on_finish=false`, Config{UsageOnFinish: true}, true, false},
		{"on_finish_unasked", ``, ` usage_on_finish`, Config{}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base := newSim(t, tt.cfg)
			status, b := chat(t, base, `{"model":"deepseek-v4-flash","stream":true`+tt.options+`,"messages":[{"role":"user","content":"Hello #sim tokens=3`+tt.directive+`"}]}`)
			if status != 200 {
				t.Fatalf("status %d: %s", status, b)
			}
			evs := parseSSE(t, b)
			got := assemble(t, evs)
			if (got.usage != nil) != tt.usage || !got.done {
				t.Fatalf("usage present %v, want %v (done %v)", got.usage != nil, tt.usage, got.done)
			}
			last := evs[len(evs)-2] // before [DONE]
			switch {
			case tt.onFinish:
				if len(last.chunk.Choices) != 1 || last.chunk.Choices[0].FinishReason == nil || last.chunk.Usage == nil {
					t.Errorf("last chunk is not the finish chunk with usage: %s", last.raw)
				}
				if strings.Count(string(b), `"usage":{`) != 1 {
					t.Errorf("usage reported other than once: %s", b)
				}
			case tt.usage:
				if len(last.chunk.Choices) != 0 || last.chunk.Usage == nil {
					t.Errorf("last chunk is not the usage chunk: %s", last.raw)
				}
			}
			if tt.usage {
				// OpenAI's convention: with include_usage the other chunks carry "usage":null.
				if !strings.Contains(evs[0].raw, `"usage":null`) {
					t.Errorf("first chunk lacks usage null: %s", evs[0].raw)
				}
			} else if strings.Contains(string(b), `"usage"`) {
				t.Errorf("usage without include_usage: %s", b)
			}
			st := s.Stats()
			if st.Completed != 1 || st.Streams != 1 {
				t.Errorf("stats %+v", st)
			}
			prompt := uint64(7) // words of the message plus its overhead
			if tt.directive != "" {
				prompt++ // the knob is a word of the prompt too
			}
			if tt.usage {
				if st.PromptTokens != prompt || st.CompletionTokens != 3 || st.UnreportedRequests != 0 {
					t.Errorf("reported stats %+v", st)
				}
			} else if st.PromptTokens != 0 || st.UnreportedRequests != 1 || st.UnreportedPromptTokens != prompt || st.UnreportedCompletionTokens != 3 {
				t.Errorf("unreported stats %+v", st)
			}
		})
	}
}

func TestCutAfter(t *testing.T) {
	tests := []struct {
		name, fields, content string
		stream                bool
		sent, sentReasoning   int // token chunks received before the cut
		prompt                int
	}{
		{"content", `"model":"deepseek-v4-flash"`, "Hi #sim tokens=6 cut_after=3", true, 3, 0, 8},
		{"zero", `"model":"deepseek-v4-flash"`, "Hi #sim tokens=6 cut_after=0", true, 0, 0, 8},
		{"mid reasoning", `"model":"deepseek-reasoner"`, "Hi #sim tokens=6 cut_after=2", true, 2, 2, 8},
		{"after reasoning", `"model":"deepseek-reasoner"`, "Hi #sim tokens=6 cut_after=4", true, 4, 3, 8},
		{"beyond the end", `"model":"deepseek-v4-flash"`, "Hi #sim tokens=3 cut_after=10", true, 3, 0, 8},
		{"tool arguments", `"model":"deepseek-v4-flash","tools":` + weatherTools, "Hi #sim tokens=5 cut_after=2", true, 2, 0, weatherToolsTokens + 8},
		{"non-stream", `"model":"deepseek-v4-flash"`, "Hi #sim tokens=6 cut_after=3", false, 0, 0, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base := newSim(t, Config{})
			body := `{` + tt.fields + `,"stream":` + map[bool]string{false: "false", true: "true"}[tt.stream] +
				`,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":` + quote(tt.content) + `}]}`
			status, b, err := readPartial(t, base, body)
			if err == nil {
				t.Fatalf("read ended cleanly (status %d): %s", status, b)
			}
			if tt.stream {
				if status != 200 {
					t.Fatalf("status %d", status)
				}
				got := assemble(t, parseSSE(t, b))
				if got.done || got.usage != nil || got.finish != "" {
					t.Errorf("cut stream has an end: %+v", got)
				}
				if got.tokenChunks != tt.sent {
					t.Errorf("%d token chunks, want %d", got.tokenChunks, tt.sent)
				}
			}
			waitFor(t, "the handler to finish", func() bool { return s.Stats().InFlight == 0 })
			st := s.Stats()
			if st.Cut != 1 || st.Completed != 0 || st.Cancelled != 0 || st.UnreportedRequests != 1 || st.PromptTokens != 0 ||
				st.UnreportedPromptTokens != uint64(tt.prompt) || st.UnreportedCompletionTokens != uint64(tt.sent) || st.UnreportedReasoningTokens != uint64(tt.sentReasoning) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestKeepalive(t *testing.T) {
	t.Run("stream", func(t *testing.T) {
		_, base := newSim(t, Config{})
		status, b := chat(t, base, `{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"Hi #sim keepalive=2 tokens=1"}]}`)
		if status != 200 || !strings.HasPrefix(string(b), ": keep-alive\n\n: keep-alive\n\ndata: {") {
			t.Fatalf("status %d body %q", status, b)
		}
		if got := assemble(t, parseSSE(t, b)); got.keepalives != 2 || !got.done || got.content != "This" {
			t.Errorf("%+v", got)
		}
	})
	t.Run("non-stream", func(t *testing.T) {
		_, base := newSim(t, Config{})
		status, b := chat(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi #sim keepalive=3"}]}`)
		if status != 200 || !strings.HasPrefix(string(b), "\n\n\n{") {
			t.Fatalf("status %d body %q", status, b)
		}
		if c := decodeCompletion(t, b); c.Usage.CompletionTokens != 20 {
			t.Errorf("usage %+v", c.Usage)
		}
	})
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
