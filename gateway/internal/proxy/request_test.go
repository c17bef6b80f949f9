package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/pkg/apierr"
)

const okMsgs = `"messages":[{"role":"user","content":"hi"}]`

func TestPrepareValidation(t *testing.T) {
	cat := catalog.Builtin()
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantType   string
		wantParam  string
	}{
		{"valid minimal", `{"model":"deepseek-v4-flash",` + okMsgs + `}`, 0, "", ""},
		{"not json", `{"model":`, 400, "invalid_request_error", ""},
		{"json array", `[1,2]`, 400, "invalid_request_error", ""},
		{"duplicate field", `{"model":"deepseek-chat","model":"gpt-4o",` + okMsgs + `}`, 400, "invalid_request_error", ""},
		{"json null", `null`, 400, "invalid_request_error", ""},
		{"invalid utf-8", "{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", 400, "invalid_request_error", ""},
		{"missing model", `{` + okMsgs + `}`, 400, "invalid_request_error", "model"},
		{"model not a string", `{"model":42,` + okMsgs + `}`, 400, "invalid_request_error", "model"},
		{"empty model", `{"model":"",` + okMsgs + `}`, 400, "invalid_request_error", "model"},
		{"unknown model", `{"model":"gpt-5",` + okMsgs + `}`, 404, "not_found_error", "model"},
		{"missing messages", `{"model":"deepseek-chat"}`, 400, "invalid_request_error", "messages"},
		{"messages not array", `{"model":"deepseek-chat","messages":"hi"}`, 400, "invalid_request_error", "messages"},
		{"empty messages", `{"model":"deepseek-chat","messages":[]}`, 400, "invalid_request_error", "messages"},
		{"message without role", `{"model":"deepseek-chat","messages":[{"content":"x"}]}`, 400, "invalid_request_error", "messages[0].role"},
		{"bad role", `{"model":"deepseek-chat","messages":[{"role":"user","content":"a"},{"role":"wizard","content":"x"}]}`, 400, "invalid_request_error", "messages[1].role"},
		{"user without content", `{"model":"deepseek-chat","messages":[{"role":"user"}]}`, 400, "invalid_request_error", "messages[0].content"},
		{"content a number", `{"model":"deepseek-chat","messages":[{"role":"user","content":5}]}`, 400, "invalid_request_error", "messages[0].content"},
		{"content parts", `{"model":"deepseek-chat","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`, 0, "", ""},
		{"assistant empty", `{"model":"deepseek-chat","messages":[{"role":"user","content":"a"},{"role":"assistant","reasoning_content":"r"}]}`, 400, "invalid_request_error", "messages[1].content"},
		{"assistant tool calls only", `{"model":"deepseek-chat","messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"1"}]}`, 0, "", ""},
		{"tool without id", `{"model":"deepseek-chat","messages":[{"role":"user","content":"a"},{"role":"tool","content":"1"}]}`, 400, "invalid_request_error", "messages[1].tool_call_id"},
		{"reasoning_content object", `{"model":"deepseek-chat","messages":[{"role":"assistant","content":"x","reasoning_content":{"a":1}}]}`, 400, "invalid_request_error", "messages[0].reasoning_content"},
		{"temperature too high", `{"model":"deepseek-chat",` + okMsgs + `,"temperature":2.5}`, 400, "invalid_request_error", "temperature"},
		{"temperature negative", `{"model":"deepseek-chat",` + okMsgs + `,"temperature":-0.1}`, 400, "invalid_request_error", "temperature"},
		{"temperature string", `{"model":"deepseek-chat",` + okMsgs + `,"temperature":"hot"}`, 400, "invalid_request_error", "temperature"},
		{"temperature edge 2", `{"model":"deepseek-chat",` + okMsgs + `,"temperature":2}`, 0, "", ""},
		{"top_p over 1", `{"model":"deepseek-chat",` + okMsgs + `,"top_p":1.01}`, 400, "invalid_request_error", "top_p"},
		{"frequency_penalty", `{"model":"deepseek-chat",` + okMsgs + `,"frequency_penalty":-3}`, 400, "invalid_request_error", "frequency_penalty"},
		{"presence_penalty", `{"model":"deepseek-chat",` + okMsgs + `,"presence_penalty":2.1}`, 400, "invalid_request_error", "presence_penalty"},
		{"stop five", `{"model":"deepseek-chat",` + okMsgs + `,"stop":["a","b","c","d","e"]}`, 400, "invalid_request_error", "stop"},
		{"stop four", `{"model":"deepseek-chat",` + okMsgs + `,"stop":["a","b","c","d"]}`, 0, "", ""},
		{"stop string", `{"model":"deepseek-chat",` + okMsgs + `,"stop":"END"}`, 0, "", ""},
		{"stop number", `{"model":"deepseek-chat",` + okMsgs + `,"stop":5}`, 400, "invalid_request_error", "stop"},
		{"max_tokens zero", `{"model":"deepseek-chat",` + okMsgs + `,"max_tokens":0}`, 400, "invalid_request_error", "max_tokens"},
		{"max_tokens fraction", `{"model":"deepseek-chat",` + okMsgs + `,"max_tokens":1.5}`, 400, "invalid_request_error", "max_tokens"},
		{"max_tokens 384K", `{"model":"deepseek-chat",` + okMsgs + `,"max_tokens":393216}`, 0, "", ""},
		{"max_tokens over 384K", `{"model":"deepseek-chat",` + okMsgs + `,"max_tokens":393217}`, 400, "invalid_request_error", "max_tokens"},
		{"stream not bool", `{"model":"deepseek-chat",` + okMsgs + `,"stream":"yes"}`, 400, "invalid_request_error", "stream"},
		{"bad thinking", `{"model":"deepseek-chat",` + okMsgs + `,"thinking":{"type":"maybe"}}`, 400, "invalid_request_error", "thinking"},
		{"unknown fields pass", `{"model":"deepseek-chat",` + okMsgs + `,"tools":[{"type":"function","function":{"name":"f"}}],"seed":1,"user":"u","logprobs":true,"response_format":{"type":"json_object"}}`, 0, "", ""},
		{"nulls are defaults", `{"model":"deepseek-chat",` + okMsgs + `,"temperature":null,"stop":null,"max_tokens":null}`, 0, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := prepare([]byte(tc.body), cat)
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if req == nil || len(req.body) == 0 {
					t.Fatal("no body")
				}
				return
			}
			if err == nil {
				t.Fatalf("want %d %s, got success", tc.wantStatus, tc.wantType)
			}
			e := asAPIError(t, err)
			if e.Status != tc.wantStatus || e.Type != tc.wantType {
				t.Errorf("got %d %s, want %d %s (%s)", e.Status, e.Type, tc.wantStatus, tc.wantType, e.Message)
			}
			if tc.wantParam != "" && (e.Param == nil || *e.Param != tc.wantParam) {
				t.Errorf("param = %v, want %s", e.Param, tc.wantParam)
			}
		})
	}
}

// asAPIError returns the *apierr.Error that err (not nil) is.
func asAPIError(t *testing.T, err error) *apierr.Error {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *apierr.Error", err, err)
	}
	return e
}

func decodeTop(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("upstream body is not JSON: %v: %s", err, b)
	}
	return m
}

func TestPrepareRewrites(t *testing.T) {
	cat := catalog.Builtin()
	tests := []struct {
		name  string
		body  string
		check func(t *testing.T, r *chatRequest, up map[string]any)
	}{
		{"reasoner alias enables thinking", `{"model":"deepseek-reasoner",` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if up["model"] != "deepseek-v4-flash" || !r.thinking {
				t.Errorf("model %v thinking %v", up["model"], r.thinking)
			}
			if th, _ := up["thinking"].(map[string]any); th["type"] != "enabled" {
				t.Errorf("thinking = %v", up["thinking"])
			}
		}},
		{"chat alias disables thinking", `{"model":"deepseek-chat",` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if th, _ := up["thinking"].(map[string]any); th["type"] != "disabled" || r.thinking {
				t.Errorf("thinking = %v", up["thinking"])
			}
		}},
		{"client thinking wins", `{"model":"deepseek-chat","thinking":{"type":"enabled"},` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if th, _ := up["thinking"].(map[string]any); th["type"] != "enabled" || !r.thinking {
				t.Errorf("thinking = %v", up["thinking"])
			}
		}},
		{"gpt-4o maps to flash, no thinking param", `{"model":"gpt-4o",` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if up["model"] != "deepseek-v4-flash" {
				t.Errorf("model = %v", up["model"])
			}
			if _, ok := up["thinking"]; ok {
				t.Errorf("thinking set: %v", up["thinking"])
			}
		}},
		{"stream always asks usage", `{"model":"deepseek-v4-pro","stream":true,` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			so, _ := up["stream_options"].(map[string]any)
			if so["include_usage"] != true || r.includeUsage {
				t.Errorf("stream_options = %v includeUsage %v", up["stream_options"], r.includeUsage)
			}
		}},
		{"client include_usage remembered", `{"model":"deepseek-v4-pro","stream":true,"stream_options":{"include_usage":true},` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if !r.includeUsage {
				t.Error("includeUsage not remembered")
			}
		}},
		{"stream_options without stream dropped", `{"model":"deepseek-v4-pro","stream_options":{"include_usage":true},` + okMsgs + `}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			if _, ok := up["stream_options"]; ok {
				t.Error("stream_options forwarded on a non-stream request")
			}
		}},
		{"unknown fields untouched", `{"model":"deepseek-v4-pro",` + okMsgs + `,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"response_format":{"type":"json_object"},"x_future":{"a":[1,2]}}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			for _, k := range []string{"tools", "response_format", "x_future"} {
				if _, ok := up[k]; !ok {
					t.Errorf("%s dropped", k)
				}
			}
		}},
		{"reasoning_content stripped from plain assistant turns", `{"model":"deepseek-reasoner","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","reasoning_content":"r"},{"role":"user","content":"c"}]}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			msgs := up["messages"].([]any)
			if _, ok := msgs[1].(map[string]any)["reasoning_content"]; ok {
				t.Error("reasoning_content kept on a turn without tool calls")
			}
		}},
		{"reasoning_content kept on tool-call turns in thinking mode", `{"model":"deepseek-reasoner","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"","reasoning_content":"r","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42"}]}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			msgs := up["messages"].([]any)
			if msgs[1].(map[string]any)["reasoning_content"] != "r" {
				t.Error("reasoning_content dropped from a thinking tool-call turn")
			}
		}},
		{"reasoning_content stripped from tool-call turns without thinking", `{"model":"deepseek-chat","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"","reasoning_content":"r","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42"}]}`, func(t *testing.T, r *chatRequest, up map[string]any) {
			msgs := up["messages"].([]any)
			if _, ok := msgs[1].(map[string]any)["reasoning_content"]; ok {
				t.Error("reasoning_content kept without thinking")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := prepare([]byte(tc.body), cat)
			if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			tc.check(t, r, decodeTop(t, r.body))
		})
	}
}

// FuzzPrepare checks that no input makes request parsing panic, and that
// every rejection is a 4xx with a JSON body, and every acceptance a JSON body.
func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		`{"model":"deepseek-v4-flash",` + okMsgs + `}`,
		`{"model":"deepseek-reasoner","stream":true,"stream_options":{"include_usage":false},` + okMsgs + `}`,
		`{"model":"deepseek-chat","messages":[{"role":"assistant","content":"x","reasoning_content":"y","tool_calls":[]}],"thinking":{"type":"enabled"}}`,
		`{"model":"gpt-4o","messages":[{"role":"user"}],"stop":["a"],"max_tokens":5,"temperature":0.5}`,
		`{}`, `[]`, `null`, `{"model":null}`, `"x"`, strings.Repeat("[", 100),
	} {
		f.Add([]byte(s))
	}
	cat := catalog.Builtin()
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := prepare(body, cat)
		if err != nil {
			e := asAPIError(t, err)
			if e.Status < 400 || e.Status >= 500 || e.Status == http.StatusInternalServerError {
				t.Fatalf("status %d for %q", e.Status, body)
			}
			if !json.Valid(e.JSON()) {
				t.Fatalf("error body not JSON")
			}
			return
		}
		if !json.Valid(r.body) {
			t.Fatalf("upstream body not JSON for %q: %s", body, r.body)
		}
	})
}

// TestParseMessagesMatchesEncodingJSON: the reflection-free reader gives
// what encoding/json gives for exactly spelled member names, and refuses
// what it refuses.
func TestParseMessagesMatchesEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`[]`,
		`[{"role":"user","content":"hi"}]`,
		` [ {"role" : "assistant" , "content":null, "tool_calls":[{"id":"c1","function":{"name":"f","arguments":"{\"a\":[1]}"}}],
		    "reasoning_content":"r"} , {"role":"tool","tool_call_id":"c1","content":[{"type":"text","text":"ok"}]} ] `,
		`[null, {"role":null}, {}]`,
		`[{"r\u006fle":"us\u0065r","content":"escaped"}]`,
		`[{"role":"user","content":"a","role":"system"}]`,
		`[{"role":"user","extra":{"role":"nested"},"content":"x"}]`,
		`[{"role":5}]`, `[{"role":["user"]}]`, `["user"]`, `[1]`, `[[]]`, `{}`, `"x"`, `null`,
	} {
		var want []message
		wantErr := json.Unmarshal([]byte(in), &want) != nil
		got, ok := parseMessages([]byte(in))
		if in == "null" { // encoding/json accepts null as an empty slice; prepare refuses it earlier
			if ok {
				t.Errorf("%s: accepted", in)
			}
			continue
		}
		if ok == wantErr {
			t.Errorf("%s: ok=%v, encoding/json error=%v", in, ok, wantErr)
			continue
		}
		if ok && !reflect.DeepEqual(normalize(got), normalize(want)) {
			t.Errorf("%s:\n got  %+v\n want %+v", in, normalize(got), normalize(want))
		}
	}
}

// normalize prints messages for comparison (role pointers by value).
func normalize(ms []message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		role := "<nil>"
		if m.Role != nil {
			role = *m.Role
		}
		out[i] = fmt.Sprintf("role=%s content=%s rc=%s calls=%s id=%s", role, m.Content, m.ReasoningContent, m.ToolCalls, m.ToolCallID)
	}
	return out
}

// TestObjectManyMembers: past the linear-scan size, lookups and duplicate
// detection go through the index.
func TestObjectManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 40 {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	b.WriteString(`"last":true}`)
	o, err := parseObject([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := o.get("k33"); !ok || string(v) != "33" {
		t.Errorf("k33 = %s %v", v, ok)
	}
	o.set("new", []byte(`1`))
	o.del("k0")
	if v, ok := o.get("new"); !ok || string(v) != "1" {
		t.Errorf("new = %s %v", v, ok)
	}
	if _, ok := o.get("k0"); ok {
		t.Error("k0 still there after del")
	}
	if _, err := parseObject([]byte(strings.Replace(b.String(), `"last"`, `"k39"`, 1))); !errors.Is(err, errDuplicateKeys) {
		t.Errorf("duplicate after 40 members: %v", err)
	}
}
