package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// wantError is what a client must see for each error case.
var wantErrors = map[string]struct {
	status int
	typ    string
}{
	"error_400": {400, "invalid_request_error"},
	"error_401": {401, "authentication_error"},
	"error_404": {404, "not_found_error"},
	"error_429": {429, "rate_limit_error"},
	"error_502": {502, "upstream_error"},
	"error_504": {504, "upstream_timeout"},
}

// streamCases are the streams both SDK suites read: OpenAI's upstream shape
// (the simulator's default: a usage-only chunk) and DeepSeek's (the
// simulator's usage_on_finish knob: usage on the finish chunk), each with
// and without include_usage. The Node script has the same list.
var streamCases = []struct {
	name, directive string
	include         bool
}{
	{"stream_no_usage", "", false},
	{"stream_usage", "", true},
	{"stream_no_usage_deepseek", " #sim usage_on_finish", false},
	{"stream_usage_deepseek", " #sim usage_on_finish", true},
}

// streamChunk is what a client observed of one chunk of a stream.
type streamChunk struct {
	Choices     int    `json:"choices"`
	Finish      string `json:"finish"`       // of the first choice
	UsageMember bool   `json:"usage_member"` // the chunk has a usage member, even null
	Usage       bool   `json:"usage"`        // the chunk has the usage
}

// checkStreamShape asserts OpenAI's stream shape, whatever the upstream's:
// with include_usage, the last chunk before [DONE] has "choices":[] and the
// usage, the one before it has finish_reason, and no other has the usage;
// without it, no chunk has a usage member at all.
func checkStreamShape(t *testing.T, seen []streamChunk, include bool) {
	t.Helper()
	if len(seen) < 2 {
		t.Fatalf("%d chunks", len(seen))
	}
	if !include {
		for i, c := range seen {
			if c.UsageMember {
				t.Errorf("chunk %d of %d has a usage member the client did not ask for", i, len(seen))
			}
		}
		return
	}
	last, fin := seen[len(seen)-1], seen[len(seen)-2]
	if last.Choices != 0 || !last.Usage {
		t.Errorf("last chunk %+v: want choices [] and the usage", last)
	}
	if fin.Choices != 1 || fin.Finish == "" || fin.Usage {
		t.Errorf("chunk before the usage %+v: want one choice with finish_reason and no usage", fin)
	}
	for i, c := range seen[:len(seen)-1] {
		if c.Usage {
			t.Errorf("chunk %d of %d has the usage before the last chunk", i, len(seen))
		}
	}
}

// waitBilled waits until the billing endpoint reports exactly these token
// totals for key (the meter writes events within a second or so).
func (s *stack) waitBilled(t *testing.T, key string, prompt, completion int64) {
	t.Helper()
	var bu billingUsage
	deadline := time.Now().Add(20 * time.Second)
	for {
		if status := getJSON(t, s.gatewayURLs[0]+"/v1/dashboard/billing/usage", key, &bu); status != 200 {
			t.Fatalf("billing status %d: %+v", status, bu)
		}
		if bu.TotalPromptTokens == prompt && bu.TotalCompletionTokens == completion && prompt > 0 && completion > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("billed %d prompt and %d completion tokens, the upstream reported %d and %d",
				bu.TotalPromptTokens, bu.TotalCompletionTokens, prompt, completion)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConformanceGoSDK drives the gateway with github.com/openai/openai-go/v3.
func TestConformanceGoSDK(t *testing.T) {
	s := startStack(t, 1)
	key := s.createKey(t, `{"name":"conformance-go","tier":"enterprise"}`)
	limited := s.createKey(t, `{"name":"limited-go","tier":"basic","rpm":2}`)
	base := s.gatewayURLs[0] + "/v1"
	c := openai.NewClient(option.WithBaseURL(base), option.WithAPIKey(key.Key), option.WithMaxRetries(0))
	ctx := t.Context()
	user := openai.UserMessage[string]

	t.Run("non_stream", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You are a helpful assistant."), user("Write a haiku.")}})
		if err != nil {
			t.Fatal(err)
		}
		if r.Object != "chat.completion" || r.Choices[0].Message.Content == "" || r.Choices[0].FinishReason != "stop" ||
			r.Usage.TotalTokens != r.Usage.PromptTokens+r.Usage.CompletionTokens {
			t.Errorf("completion %+v", r)
		}
	})
	for _, sc := range streamCases {
		t.Run(sc.name, func(t *testing.T) {
			// A key of its own, so that what was metered for this stream can
			// be read back from the billing endpoint.
			sk := s.createKey(t, `{"name":"conformance-go-`+sc.name+`","tier":"enterprise"}`)
			c := openai.NewClient(option.WithBaseURL(base), option.WithAPIKey(sk.Key), option.WithMaxRetries(0))
			before := s.simStats(t)
			p := openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: []openai.ChatCompletionMessageParamUnion{user("Explain recursion." + sc.directive)}}
			if sc.include {
				p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			st := c.Chat.Completions.NewStreaming(ctx, p)
			var content strings.Builder
			var seen []streamChunk
			for st.Next() {
				ch := st.Current()
				var members map[string]json.RawMessage
				if err := json.Unmarshal([]byte(ch.RawJSON()), &members); err != nil {
					t.Fatalf("chunk %q: %v", ch.RawJSON(), err)
				}
				u, hasUsage := members["usage"]
				obs := streamChunk{Choices: len(ch.Choices), UsageMember: hasUsage,
					Usage: hasUsage && string(u) != "null" && ch.Usage.TotalTokens > 0}
				if len(ch.Choices) > 0 {
					content.WriteString(ch.Choices[0].Delta.Content)
					obs.Finish = ch.Choices[0].FinishReason
				}
				seen = append(seen, obs)
			}
			if err := st.Err(); err != nil {
				t.Fatal(err)
			}
			if content.Len() == 0 {
				t.Error("no content streamed")
			}
			checkStreamShape(t, seen, sc.include)
			// Metered exactly what the upstream reported, whatever the client saw.
			after := s.simStats(t)
			s.waitBilled(t, sk.Key, int64(after.PromptTokens-before.PromptTokens), int64(after.CompletionTokens-before.CompletionTokens))
		})
	}
	t.Run("tools", func(t *testing.T) {
		tools := []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "get_weather", Description: openai.String("Weather in a city"),
			Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}},
		})}
		msgs := []openai.ChatCompletionMessageParamUnion{user("Weather in Paris?")}
		r1, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-chat", Messages: msgs, Tools: tools})
		if err != nil {
			t.Fatal(err)
		}
		if r1.Choices[0].FinishReason != "tool_calls" || len(r1.Choices[0].Message.ToolCalls) != 1 {
			t.Fatalf("want a tool call, got %+v", r1.Choices[0])
		}
		call := r1.Choices[0].Message.ToolCalls[0]
		if call.Function.Name != "get_weather" || !json.Valid([]byte(call.Function.Arguments)) {
			t.Errorf("tool call %+v", call)
		}
		msgs = append(msgs, r1.Choices[0].Message.ToParam(), openai.ToolMessage(`{"temp_c":21}`, call.ID))
		r2, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-chat", Messages: msgs, Tools: tools})
		if err != nil {
			t.Fatal(err)
		}
		if r2.Choices[0].FinishReason != "stop" || r2.Choices[0].Message.Content == "" {
			t.Errorf("after the tool result: %+v", r2.Choices[0])
		}
	})
	t.Run("json_output", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash",
			Messages:       []openai.ChatCompletionMessageParamUnion{user("Reply in JSON.")},
			ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}}})
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(r.Choices[0].Message.Content), &v); err != nil {
			t.Errorf("content is not a JSON object: %q", r.Choices[0].Message.Content)
		}
	})
	var firstReasoning openai.ChatCompletionMessage
	t.Run("thinking", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-reasoner",
			Messages: []openai.ChatCompletionMessageParamUnion{user("What is 6 x 7?")}})
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			ReasoningContent string `json:"reasoning_content"`
		}
		_ = json.Unmarshal([]byte(r.Choices[0].Message.RawJSON()), &m)
		if m.ReasoningContent == "" || r.Usage.CompletionTokensDetails.ReasoningTokens == 0 {
			t.Errorf("no reasoning: %s", r.RawJSON())
		}
		firstReasoning = r.Choices[0].Message
	})
	t.Run("multi_turn_echo", func(t *testing.T) {
		// Echo the assistant message with its reasoning_content, as many clients do.
		var echoed map[string]any
		if err := json.Unmarshal([]byte(firstReasoning.RawJSON()), &echoed); err != nil {
			t.Fatal(err)
		}
		if _, ok := echoed["reasoning_content"]; !ok {
			t.Fatal("first answer carried no reasoning_content to echo")
		}
		body := map[string]any{"model": "deepseek-reasoner", "messages": []any{
			map[string]any{"role": "user", "content": "What is 6 x 7?"}, echoed, map[string]any{"role": "user", "content": "Double it."}}}
		var r openai.ChatCompletion
		if err := c.Post(ctx, "chat/completions", body, &r); err != nil {
			t.Fatalf("echoed reasoning_content broke the request: %v", err)
		}
		if r.Choices[0].Message.Content == "" {
			t.Error("no answer")
		}
	})

	bad := openai.NewClient(option.WithBaseURL(base), option.WithAPIKey("sk-"+strings.Repeat("x", 48)), option.WithMaxRetries(0))
	lim := openai.NewClient(option.WithBaseURL(base), option.WithAPIKey(limited.Key), option.WithMaxRetries(0))
	msg := func(s string) []openai.ChatCompletionMessageParamUnion {
		return []openai.ChatCompletionMessageParamUnion{user(s)}
	}
	errCases := map[string]func() error{
		"error_400": func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: msg("x"), Temperature: openai.Float(5)})
			return err
		},
		"error_401": func() error {
			_, err := bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: msg("x")})
			return err
		},
		"error_404": func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "no-such-model", Messages: msg("x")})
			return err
		},
		"error_429": func() error {
			for i := range 5 {
				if _, err := lim.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: msg("x")}); err != nil {
					return err
				} else if i >= 2 {
					break
				}
			}
			return nil
		},
		"error_502": func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: msg("#sim status=500")})
			return err
		},
		"error_504": func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "deepseek-v4-flash", Messages: msg("#sim hang")})
			return err
		},
	}
	for name, want := range wantErrors {
		t.Run(name, func(t *testing.T) {
			err := errCases[name]()
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("want an API error, got %v", err)
			}
			if apiErr.StatusCode != want.status || apiErr.Type != want.typ || apiErr.Message == "" {
				t.Errorf("got %d %q (%s), want %d %q", apiErr.StatusCode, apiErr.Type, apiErr.Message, want.status, want.typ)
			}
			if apiErr.Response.Header.Get("X-Request-Id") == "" {
				t.Error("error without x-request-id")
			}
			if name == "error_429" {
				if apiErr.Code != "rate_limit_exceeded" || apiErr.Response.Header.Get("Retry-After") == "" {
					t.Errorf("429 code %q retry-after %q", apiErr.Code, apiErr.Response.Header.Get("Retry-After"))
				}
			}
		})
	}
}

// TestConformanceNodeSDK drives the gateway with the openai npm package,
// installed here with the machine's Node.js (deploy/e2e/node).
func TestConformanceNodeSDK(t *testing.T) {
	root, err := findRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "e2e", "node")
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not installed (apt-get install nodejs npm): %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err != nil {
		ictx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ictx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}

	s := startStack(t, 1)
	key := s.createKey(t, `{"name":"conformance-node","tier":"enterprise"}`)
	limited := s.createKey(t, `{"name":"limited-node","tier":"basic","rpm":2}`)
	rctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, "node", "conformance.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "BASE_URL="+s.gatewayURLs[0]+"/v1", "API_KEY="+key.Key, "LIMITED_KEY="+limited.Key)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node conformance.mjs: %v\n%s", err, stderr.String())
	}
	var res map[string]map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("bad output %q: %v", out, err)
	}
	ok := func(name string) map[string]any {
		t.Helper()
		r := res[name]
		if r == nil || r["ok"] != true {
			t.Errorf("%s failed: %v", name, r)
			return map[string]any{}
		}
		return r
	}
	if r := ok("non_stream"); r["content"] == "" || r["finish_reason"] != "stop" || r["usage"] == nil {
		t.Errorf("non_stream: %v", r)
	}
	for _, sc := range streamCases {
		t.Run(sc.name, func(t *testing.T) {
			r := ok(sc.name)
			if r["content"] == "" {
				t.Errorf("no content streamed: %v", r)
			}
			b, _ := json.Marshal(r["chunks"])
			var seen []streamChunk
			if err := json.Unmarshal(b, &seen); err != nil {
				t.Fatalf("chunks %s: %v", b, err)
			}
			checkStreamShape(t, seen, sc.include)
		})
	}
	if r := ok("tools"); r["finish_reason"] != "tool_calls" || r["tool"] != "get_weather" || r["final_finish_reason"] != "stop" {
		t.Errorf("tools: %v", r)
	}
	if r := ok("json_output"); r["parsed"] == nil {
		t.Errorf("json_output: %v", r)
	}
	if r := ok("thinking"); r["reasoning_content"] == nil || r["reasoning_content"] == "" || r["reasoning_tokens"] == float64(0) {
		t.Errorf("thinking: %v", r)
	}
	if r := ok("multi_turn_echo"); r["content"] == "" {
		t.Errorf("multi_turn_echo: %v", r)
	}
	for name, want := range wantErrors {
		r := res[name]
		if r == nil || r["ok"] != false || r["status"] != float64(want.status) || r["type"] != want.typ || r["request_id"] == nil {
			t.Errorf("%s: got %v, want status %d type %s with a request id", name, r, want.status, want.typ)
		}
	}
	if c := res["error_429"]["code"]; c != "rate_limit_exceeded" {
		t.Errorf("429 code %v", c)
	}
}
