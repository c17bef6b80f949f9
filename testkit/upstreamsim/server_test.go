package upstreamsim

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

const weatherTools = `[{"type":"function","function":{"name":"get_weather","description":"Get the weather of a city","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
{"type":"function","function":{"name":"get_time","description":"Get the time","parameters":{"type":"object"}}}]`

// weatherToolsTokens is what weatherTools cost: (8 + 1 + 6) + (8 + 1 + 3).
const weatherToolsTokens = 27

func TestNonStream(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		path string
		body string

		prompt, completion, reasoning int
		finish                        string
		wantReasoning                 bool   // reasoning_content present
		tool                          string // name of the tool called
		json                          bool   // content must be a JSON object
	}{
		{
			name:   "plain",
			body:   `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, finish: "stop",
		},
		{
			name:   "v1 path, system message, pro",
			path:   "/v1/chat/completions",
			body:   `{"model":"deepseek-v4-pro","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hello there"}]}`,
			prompt: 13, completion: 20, finish: "stop",
		},
		{
			name:   "default tokens from config",
			cfg:    Config{DefaultTokens: 3},
			body:   `{"model":"deepseek-chat","messages":[{"role":"user","content":"Hello"}]}`,
			prompt: 5, completion: 3, finish: "stop",
		},
		{
			name:   "max_tokens caps the default",
			body:   `{"model":"deepseek-v4-flash","max_tokens":5,"messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 5, finish: "length",
		},
		{
			name:   "tokens knob wins over max_tokens",
			body:   `{"model":"deepseek-v4-flash","max_tokens":5,"messages":[{"role":"user","content":"Hello #sim tokens=7"}]}`,
			prompt: 7, completion: 7, finish: "stop",
		},
		{
			name:   "tokens=0",
			body:   `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"#sim tokens=0"}]}`,
			prompt: 6, completion: 0, finish: "stop",
		},
		{
			name:   "thinking enabled",
			body:   `{"model":"deepseek-v4-flash","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, reasoning: 10, finish: "stop", wantReasoning: true,
		},
		{
			name:   "thinking with reasoning knob",
			body:   `{"model":"deepseek-v4-pro","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"Hi #sim tokens=5 reasoning=3"}]}`,
			prompt: 8, completion: 5, reasoning: 3, finish: "stop", wantReasoning: true,
		},
		{
			name:   "reasoning knob capped at tokens",
			body:   `{"model":"deepseek-v4-pro","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"Hi #sim tokens=2 reasoning=9"}]}`,
			prompt: 8, completion: 2, reasoning: 2, finish: "stop", wantReasoning: true,
		},
		{
			name:   "deepseek-reasoner thinks",
			body:   `{"model":"deepseek-reasoner","messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, reasoning: 10, finish: "stop", wantReasoning: true,
		},
		{
			name:   "deepseek-reasoner with thinking disabled",
			body:   `{"model":"deepseek-reasoner","thinking":{"type":"disabled"},"messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, finish: "stop",
		},
		{
			name:   "deepseek-chat never thinks",
			body:   `{"model":"deepseek-chat","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, finish: "stop",
		},
		{
			name:   "thinking by default",
			cfg:    Config{ThinkingByDefault: true},
			body:   `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, reasoning: 10, finish: "stop", wantReasoning: true,
		},
		{
			name:   "thinking by default, disabled",
			cfg:    Config{ThinkingByDefault: true},
			body:   `{"model":"deepseek-v4-flash","thinking":{"type":"disabled"},"messages":[{"role":"user","content":"Hello there"}]}`,
			prompt: 6, completion: 20, finish: "stop",
		},
		{
			name:   "json_object",
			body:   `{"model":"deepseek-v4-flash","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"Answer in json"}]}`,
			prompt: 7, completion: 20, finish: "stop", json: true,
		},
		{
			name:   "json_object with no tokens",
			body:   `{"model":"deepseek-v4-flash","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"json #sim tokens=0"}]}`,
			prompt: 7, completion: 0, finish: "stop", json: true,
		},
		{
			name:   "tool call",
			body:   `{"model":"deepseek-v4-flash","tools":` + weatherTools + `,"messages":[{"role":"user","content":"Weather in Paris?"}]}`,
			prompt: weatherToolsTokens + 4 + 3, completion: 20, finish: "tool_calls", tool: "get_weather",
		},
		{
			name:   "tool call in thinking mode",
			body:   `{"model":"deepseek-v4-flash","thinking":{"type":"enabled"},"tools":` + weatherTools + `,"messages":[{"role":"user","content":"Weather in Paris? #sim tokens=4"}]}`,
			prompt: weatherToolsTokens + 4 + 5, completion: 4, reasoning: 2, finish: "tool_calls", tool: "get_weather", wantReasoning: true,
		},
		{
			name:   "named tool_choice",
			body:   `{"model":"deepseek-v4-flash","tool_choice":{"type":"function","function":{"name":"get_time"}},"tools":` + weatherTools + `,"messages":[{"role":"user","content":"Time?"}]}`,
			prompt: weatherToolsTokens + 4 + 1, completion: 20, finish: "tool_calls", tool: "get_time",
		},
		{
			name:   "tool_choice none",
			body:   `{"model":"deepseek-v4-flash","tool_choice":"none","tools":` + weatherTools + `,"messages":[{"role":"user","content":"Time?"}]}`,
			prompt: weatherToolsTokens + 4 + 1, completion: 20, finish: "stop",
		},
		{
			name: "tool result answered with text",
			body: `{"model":"deepseek-v4-flash","tools":` + weatherTools + `,"messages":[
				{"role":"user","content":"Weather in Paris?"},
				{"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
				{"role":"tool","tool_call_id":"call_1","content":"sunny, 21 C"}]}`,
			prompt: weatherToolsTokens + (4 + 3) + (4 + 1 + 2) + (4 + 3), completion: 20, finish: "stop",
		},
		{
			name:   "content parts and CJK",
			body:   `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":[{"type":"text","text":"你好世界"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"hello  world"}]}]}`,
			prompt: 4 + 4 + 2, completion: 20, finish: "stop",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := newSim(t, tt.cfg)
			path := tt.path
			if path == "" {
				path = "/chat/completions"
			}
			status, body := do(t, http.MethodPost, base+path, tt.body)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			c := decodeCompletion(t, body)
			if c.Object != "chat.completion" || c.ID != "chatcmpl-test-1" || c.Created != fixedNow().Unix() ||
				c.SystemFingerprint != SystemFingerprint || !strings.HasPrefix(c.Model, "deepseek-") {
				t.Errorf("envelope: %s", body)
			}
			if len(c.Choices) != 1 {
				t.Fatalf("%d choices", len(c.Choices))
			}
			ch := c.Choices[0]
			if string(ch.Logprobs) != "null" || ch.FinishReason == nil || *ch.FinishReason != tt.finish {
				t.Errorf("choice: logprobs %s finish %v, want finish %q", ch.Logprobs, ch.FinishReason, tt.finish)
			}
			u := c.Usage
			checkUsage(t, u)
			if u.PromptTokens != tt.prompt || u.CompletionTokens != tt.completion || u.CompletionTokensDetails.ReasoningTokens != tt.reasoning {
				t.Errorf("usage prompt %d completion %d reasoning %d, want %d %d %d",
					u.PromptTokens, u.CompletionTokens, u.CompletionTokensDetails.ReasoningTokens, tt.prompt, tt.completion, tt.reasoning)
			}
			if u.PromptCacheHitTokens != 0 {
				t.Errorf("first request hit the cache: %d", u.PromptCacheHitTokens)
			}
			m := ch.Message
			if m.Role != "assistant" || m.Content == nil {
				t.Fatalf("message %+v", m)
			}
			if (m.ReasoningContent != nil) != tt.wantReasoning {
				t.Errorf("reasoning_content present = %v, want %v", m.ReasoningContent != nil, tt.wantReasoning)
			}
			if m.ReasoningContent != nil && countWords(*m.ReasoningContent) != tt.reasoning {
				t.Errorf("reasoning_content %q has %d words, want %d", *m.ReasoningContent, countWords(*m.ReasoningContent), tt.reasoning)
			}
			answerTokens := tt.completion - tt.reasoning
			switch {
			case tt.tool != "":
				if len(m.ToolCalls) != 1 || *m.Content != "" {
					t.Fatalf("want one tool call and no content: %s", body)
				}
				tc := m.ToolCalls[0]
				if tc.Function.Name != tt.tool || tc.Type != "function" || !strings.HasPrefix(tc.ID, "call_") {
					t.Errorf("tool call %+v", tc)
				}
				var args map[string]string
				if err := json.Unmarshal([]byte(tc.Function.Arguments), &args); err != nil {
					t.Errorf("arguments %q: %v", tc.Function.Arguments, err)
				}
				if got := countWords(args["input"]); got != answerTokens {
					t.Errorf("arguments carry %d words, want %d", got, answerTokens)
				}
			case tt.json:
				var obj map[string]string
				if err := json.Unmarshal([]byte(*m.Content), &obj); err != nil {
					t.Fatalf("content %q is not a JSON object: %v", *m.Content, err)
				}
				if got := countWords(obj["answer"]); got != answerTokens {
					t.Errorf("answer carries %d words, want %d", got, answerTokens)
				}
			default:
				if len(m.ToolCalls) != 0 {
					t.Errorf("unexpected tool calls: %s", body)
				}
				if got := countWords(*m.Content); got != answerTokens {
					t.Errorf("content %q has %d words, want %d", *m.Content, got, answerTokens)
				}
			}
		})
	}
}

func TestValidation(t *testing.T) {
	const user = `[{"role":"user","content":"Hello"}]`
	tests := []struct {
		name   string
		cfg    Config
		body   string
		status int
		msg    string // substring of the error message
	}{
		{"bad JSON", Config{}, `{"model":`, 400, "Failed to deserialize"},
		{"wrong type", Config{}, `{"model":1,"messages":` + user + `}`, 400, "Failed to deserialize"},
		{"missing model", Config{}, `{"messages":` + user + `}`, 400, "missing field `model`"},
		{"missing messages", Config{}, `{"model":"deepseek-v4-flash"}`, 400, "missing field `messages`"},
		{"empty messages", Config{}, `{"model":"deepseek-v4-flash","messages":[]}`, 400, "Empty input messages"},
		{"unknown model", Config{}, `{"model":"gpt-4o","messages":` + user + `}`, 400, "Model Not Exist"},
		{"empty model", Config{}, `{"model":"","messages":` + user + `}`, 400, "Model Not Exist"},
		{"bad role", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"bot","content":"x"}]}`, 400, "unknown variant `bot`"},
		{"user without content", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"user"}]}`, 400, "missing field `content`"},
		{"tool without id", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x"},{"role":"tool","content":"y"}]}`, 400, "tool_call_id"},
		{
			"reasoning_content on a plain answer", Config{},
			`{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","reasoning_content":"c"},{"role":"user","content":"d"}]}`,
			400, "reasoning_content",
		},
		{
			"thinking tool call without its reasoning", Config{},
			`{"model":"deepseek-v4-flash","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"a"},
			{"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
			{"role":"tool","tool_call_id":"call_1","content":"r"}]}`,
			400, "must be passed back",
		},
		{
			"thinking tool call with its reasoning", Config{},
			`{"model":"deepseek-v4-flash","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"a"},
			{"role":"assistant","content":"","reasoning_content":"think","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
			{"role":"tool","tool_call_id":"call_1","content":"r"}]}`,
			200, "",
		},
		{
			"non-thinking tool call without reasoning", Config{},
			`{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"a"},
			{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
			{"role":"tool","tool_call_id":"call_1","content":"r"}]}`,
			200, "",
		},
		{"max_tokens 0", Config{}, `{"model":"deepseek-v4-flash","max_tokens":0,"messages":` + user + `}`, 422, "max_tokens"},
		{"temperature 3", Config{}, `{"model":"deepseek-v4-flash","temperature":3,"messages":` + user + `}`, 422, "temperature"},
		{"top_p 0", Config{}, `{"model":"deepseek-v4-flash","top_p":0,"messages":` + user + `}`, 422, "top_p"},
		{"thinking type", Config{}, `{"model":"deepseek-v4-flash","thinking":{"type":"maybe"},"messages":` + user + `}`, 400, "thinking.type"},
		{"response_format type", Config{}, `{"model":"deepseek-v4-flash","response_format":{"type":"xml"},"messages":` + user + `}`, 400, "response_format"},
		{"tool_choice names a missing tool", Config{}, `{"model":"deepseek-v4-flash","tools":` + weatherTools + `,"tool_choice":{"type":"function","function":{"name":"nope"}},"messages":` + user + `}`, 400, "no tool named"},
		{"bad tool", Config{}, `{"model":"deepseek-v4-flash","tools":[{"type":"function","function":{}}],"messages":` + user + `}`, 400, "tools[0]"},
		{"unknown directive key", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x #sim colour=red"}]}`, 400, `unknown key "colour"`},
		{"directive status out of range", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x #sim status=200"}]}`, 400, "status=200"},
		{"directive bad number", Config{}, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x #sim tokens=-1"}]}`, 400, "tokens"},
		{"body too large", Config{MaxBodyBytes: 16}, `{"model":"deepseek-v4-flash","messages":` + user + `}`, 400, "larger than 16 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base := newSim(t, tt.cfg)
			status, body := chat(t, base, tt.body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if tt.status == 200 {
				return
			}
			msg, typ := errorBody(t, body)
			if !strings.Contains(msg, tt.msg) || typ != "invalid_request_error" {
				t.Errorf("message %q type %q, want %q in message", msg, typ, tt.msg)
			}
			st := s.Stats()
			if st.Requests != 1 || st.Errors != 1 || st.ByStatus[itoa(tt.status)] != 1 || st.PromptTokens != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	const body = `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}]}`
	tests := []struct {
		name   string
		header []string
		status int
		msg    string
	}{
		{"no header", nil, 401, "auth header format"},
		{"wrong scheme", []string{"Authorization", "Basic sk-right"}, 401, "auth header format"},
		{"wrong key", []string{"Authorization", "Bearer sk-wrong-1234"}, 401, "****1234 is invalid"},
		{"right key", []string{"Authorization", "Bearer sk-right"}, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := newSim(t, Config{APIKey: "sk-right"})
			status, b := chat(t, base, body, tt.header...)
			if status != tt.status {
				t.Fatalf("chat status %d, want %d: %s", status, tt.status, b)
			}
			if status != 200 {
				if msg, typ := errorBody(t, b); !strings.Contains(msg, tt.msg) || typ != "authentication_error" {
					t.Errorf("message %q type %q", msg, typ)
				}
			}
			if status, _ := do(t, http.MethodGet, base+"/models", "", tt.header...); status != tt.status {
				t.Errorf("models status %d, want %d", status, tt.status)
			}
			if status, _ := do(t, http.MethodGet, base+"/_sim/stats", ""); status != 200 {
				t.Errorf("control API needs no key, got %d", status)
			}
		})
	}
}

func TestStatusDirective(t *testing.T) {
	tests := []struct {
		status   int
		msg, typ string
	}{
		{400, "Invalid Format", "invalid_request_error"},
		{401, "Authentication Fails", "authentication_error"},
		{402, "Insufficient Balance", "unknown_error"},
		{422, "Invalid Parameters", "invalid_request_error"},
		{429, "Rate Limit Reached", "rate_limit_error"},
		{500, "Server Error", "server_error"},
		{503, "Server Overloaded", "server_overloaded"},
		{504, "Gateway Timeout", "server_error"},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(itoa(tt.status)+map[bool]string{false: "", true: " stream"}[stream], func(t *testing.T) {
				s, base := newSim(t, Config{})
				body := `{"model":"deepseek-v4-flash","stream":` + map[bool]string{false: "false", true: "true"}[stream] +
					`,"messages":[{"role":"user","content":"Hello\n#sim status=` + itoa(tt.status) + `\nmore text"}]}`
				status, b := chat(t, base, body)
				if status != tt.status {
					t.Fatalf("status %d, want %d", status, tt.status)
				}
				msg, typ := errorBody(t, b)
				if !strings.Contains(msg, tt.msg) || typ != tt.typ {
					t.Errorf("message %q type %q, want %q %q", msg, typ, tt.msg, tt.typ)
				}
				st := s.Stats()
				if st.Errors != 1 || st.ByStatus[itoa(tt.status)] != 1 || st.Streams != 0 || st.UnreportedRequests != 0 {
					t.Errorf("stats %+v", st)
				}
			})
		}
	}
}

func TestDirectiveOnlyInLastUserMessage(t *testing.T) {
	_, base := newSim(t, Config{})
	body := `{"model":"deepseek-v4-flash","messages":[
		{"role":"system","content":"#sim status=500"},
		{"role":"user","content":"first #sim status=503"},
		{"role":"assistant","content":"ok"},
		{"role":"user","content":"second #sim tokens=2"}]}`
	status, b := chat(t, base, body)
	if status != 200 {
		t.Fatalf("status %d: %s", status, b)
	}
	if c := decodeCompletion(t, b); c.Usage.CompletionTokens != 2 {
		t.Errorf("completion %d, want 2", c.Usage.CompletionTokens)
	}
}

func TestModelsAndControl(t *testing.T) {
	s, base := newSim(t, Config{})
	for _, path := range []string{"/models", "/v1/models"} {
		status, b := do(t, http.MethodGet, base+path, "")
		var list struct {
			Object string `json:"object"`
			Data   []struct {
				ID, Object, OwnedBy string
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &list); err != nil || status != 200 || list.Object != "list" {
			t.Fatalf("%s: %d %s %v", path, status, b, err)
		}
		var ids []string
		for _, m := range list.Data {
			ids = append(ids, m.ID)
		}
		if got := strings.Join(ids, ","); got != "deepseek-v4-flash,deepseek-v4-pro,deepseek-chat,deepseek-reasoner" {
			t.Errorf("%s: models %s", path, got)
		}
	}
	if status, b := do(t, http.MethodGet, base+"/_sim/healthz", ""); status != 200 || string(b) != "ok\n" {
		t.Errorf("healthz %d %q", status, b)
	}
	if status, b := do(t, http.MethodGet, base+"/nope", ""); status != 404 {
		t.Errorf("unknown path %d", status)
	} else {
		errorBody(t, b)
	}

	chat(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}]}`)
	var st Stats
	_, b := do(t, http.MethodGet, base+"/_sim/stats", "")
	if err := json.Unmarshal(b, &st); err != nil || st.Requests != 1 || st.Completed != 1 || st.PromptTokens != 5 {
		t.Fatalf("stats %s: %v", b, err)
	}
	for _, field := range []string{`"requests"`, `"in_flight"`, `"by_status"`, `"completed"`, `"cancelled"`, `"cut"`,
		`"prompt_tokens"`, `"cache_hit_tokens"`, `"cache_miss_tokens"`, `"completion_tokens"`, `"reasoning_tokens"`,
		`"unreported_requests"`, `"unreported_prompt_tokens"`, `"unreported_completion_tokens"`, `"unreported_reasoning_tokens"`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("stats JSON lacks %s", field)
		}
	}
	if status, _ := do(t, http.MethodPost, base+"/_sim/reset", ""); status != http.StatusNoContent {
		t.Errorf("reset %d", status)
	}
	if st := s.Stats(); st.Requests != 0 || st.PromptTokens != 0 || len(st.ByStatus) != 0 {
		t.Errorf("after reset %+v", st)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
