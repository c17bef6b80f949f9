package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/pkg/apierr"
)

// chatRequest is a validated chat completion request, ready for upstream.
type chatRequest struct {
	model        *catalog.Model
	stream       bool
	includeUsage bool // the client asked for the usage chunk
	thinking     bool
	body         []byte // what goes upstream
	// promptBytes sizes the prompt, for estimates when upstream never reports.
	promptBytes int
	// sessionKey is the client's own name of the conversation as sent (the
	// raw, still escaped JSON string of prompt_cache_key, else of user),
	// nil when neither is a non-empty string. opening is the conversation's
	// opening: the messages up to its first user message included. Both
	// point into the body: routing hashes them without another parse.
	sessionKey []byte
	opening    []message
}

// Roles the upstream accepts in messages.
var validRoles = map[string]bool{"system": true, "user": true, "assistant": true, "tool": true, "developer": true}

type message struct {
	Role             *string         `json:"role"`
	Content          json.RawMessage `json:"content"`
	ReasoningContent json.RawMessage `json:"reasoning_content"`
	ToolCalls        json.RawMessage `json:"tool_calls"`
	ToolCallID       json.RawMessage `json:"tool_call_id"`
}

// parseMessages reads the messages array (valid JSON) without reflection:
// null elements become empty messages (check refuses them), and member
// names match exactly, as the upstream matches them. ok is false when it is
// not an array of objects or a role is not a string.
func parseMessages(raw []byte) (msgs []message, ok bool) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return nil, false
	}
	msgs = make([]message, 0, 8)
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == ']' {
		return msgs, true
	}
	for i < len(raw) {
		end := skipValue(raw, i)
		if end <= i || end > len(raw) {
			return nil, false
		}
		var m message
		switch elem := raw[i:end]; elem[0] {
		case '{':
			if !m.parse(elem) {
				return nil, false
			}
		case 'n': // null
		default:
			return nil, false
		}
		msgs = append(msgs, m)
		i = skipSpace(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
			continue
		}
		break
	}
	return msgs, true
}

var errBadRole = errors.New("role is not a string")

// parse fills m from one message object.
func (m *message) parse(obj []byte) bool {
	err := eachMember(obj, func(key, _, val []byte) error {
		switch string(key) {
		case "role":
			m.Role = nil
			if isNull(val) {
				return nil
			}
			s, ok := jsonString(val)
			if !ok {
				return errBadRole
			}
			m.Role = &s
		case "content":
			m.Content = val
		case "reasoning_content":
			m.ReasoningContent = val
		case "tool_calls":
			m.ToolCalls = val
		case "tool_call_id":
			m.ToolCallID = val
		}
		return nil
	})
	return err == nil
}

// jsonString decodes a JSON string value; ok is false for any other value.
func jsonString(val []byte) (string, bool) {
	if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
		return "", false
	}
	if bytes.IndexByte(val, '\\') < 0 {
		return string(val[1 : len(val)-1]), true
	}
	var s string
	if json.Unmarshal(val, &s) != nil {
		return "", false
	}
	return s, true
}

// check validates one message the way OpenAI does, so that a request the
// upstream would refuse is refused here with the field named. A returned
// error is an *apierr.Error.
func (m *message) check(i int) error {
	p := fmt.Sprintf("messages[%d]", i)
	if m.Role == nil {
		return apierr.InvalidRequest(p + ".role is required").WithParam(p + ".role")
	}
	role := *m.Role
	if !validRoles[role] {
		return apierr.InvalidRequest(fmt.Sprintf("%s.role must be one of system, user, assistant, tool, developer; got %q", p, role)).WithParam(p + ".role")
	}
	hasContent := len(m.Content) > 0 && !isNull(m.Content)
	if hasContent && m.Content[0] != '"' && m.Content[0] != '[' {
		return apierr.InvalidRequest(p + ".content must be a string or an array of content parts").WithParam(p + ".content")
	}
	if m.ToolCalls != nil && !isNull(m.ToolCalls) && m.ToolCalls[0] != '[' {
		return apierr.InvalidRequest(p + ".tool_calls must be an array").WithParam(p + ".tool_calls")
	}
	if m.ReasoningContent != nil && !isNull(m.ReasoningContent) && m.ReasoningContent[0] != '"' {
		return apierr.InvalidRequest(p + ".reasoning_content must be a string").WithParam(p + ".reasoning_content")
	}
	switch role {
	case "assistant":
		if !hasContent && (len(m.ToolCalls) < 3 || isNull(m.ToolCalls)) { // "[]" or less: no calls
			return apierr.InvalidRequest(p + ": an assistant message needs content or tool_calls").WithParam(p + ".content")
		}
	case "tool":
		if !hasContent {
			return apierr.InvalidRequest(p + ".content is required for tool messages").WithParam(p + ".content")
		}
		if len(m.ToolCallID) == 0 || m.ToolCallID[0] != '"' {
			return apierr.InvalidRequest(p + ".tool_call_id is required for tool messages").WithParam(p + ".tool_call_id")
		}
	default:
		if !hasContent {
			return apierr.InvalidRequest(p + ".content is required").WithParam(p + ".content")
		}
	}
	return nil
}

// prepare validates a client body against the public parameter table and
// rewrites it for the upstream: the public model id becomes the upstream
// name, the catalog's thinking mode is applied unless the client chose one,
// usage is always requested on streams, and echoed reasoning_content is
// dropped where the upstream would reject it. Fields the gateway does not
// know (tools, response_format, seed, ...) pass through untouched. A
// returned error is an *apierr.Error (a 4xx).
func prepare(body []byte, cat *catalog.Catalog) (*chatRequest, error) {
	if !utf8.Valid(body) {
		// encoding/json would quietly turn bad bytes into U+FFFD and the
		// upstream would bill for text the client never sent.
		return nil, apierr.InvalidRequest("The request body is not valid UTF-8.")
	}
	if !json.Valid(body) {
		return nil, apierr.InvalidRequest("We could not parse the JSON body of your request. The body must be a JSON object (e.g. {\"model\": ..., \"messages\": [...]}).")
	}
	top, err := parseObject(body)
	switch {
	case errors.Is(err, errDuplicateKeys):
		return nil, apierr.InvalidRequest("The JSON body of your request repeats a field; send each field once.")
	case err != nil:
		return nil, apierr.InvalidRequest("We could not parse the JSON body of your request. The body must be a JSON object (e.g. {\"model\": ..., \"messages\": [...]}).")
	}
	req := &chatRequest{}

	var modelID string
	if raw, ok := top.get("model"); !ok || isNull(raw) {
		return nil, apierr.InvalidRequest("you must provide a model parameter").WithParam("model")
	} else if modelID, ok = jsonString(raw); !ok || modelID == "" {
		return nil, apierr.InvalidRequest("model must be a non-empty string").WithParam("model")
	}
	req.model = cat.Lookup(modelID)
	if req.model == nil {
		return nil, apierr.NotFound(fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", modelID)).
			WithParam("model").WithCode("model_not_found")
	}

	rawMsgs, ok := top.get("messages")
	if !ok || isNull(rawMsgs) {
		return nil, apierr.InvalidRequest("you must provide a messages parameter").WithParam("messages")
	}
	msgs, ok := parseMessages(rawMsgs)
	if !ok {
		return nil, apierr.InvalidRequest("messages must be an array of message objects, each with a role").WithParam("messages")
	}
	if len(msgs) == 0 {
		return nil, apierr.InvalidRequest("messages must contain at least one message").WithParam("messages")
	}
	for i := range msgs {
		if err := msgs[i].check(i); err != nil {
			return nil, err
		}
	}
	req.promptBytes = len(rawMsgs)
	req.opening = openingOf(msgs)
	for _, f := range []string{"prompt_cache_key", "user"} {
		if raw, _ := top.get(f); len(raw) > 2 && raw[0] == '"' {
			req.sessionKey = raw[1 : len(raw)-1]
			break
		}
	}

	if err := checkNumber(top, "temperature", 0, 2); err != nil {
		return nil, err
	}
	if err := checkNumber(top, "top_p", 0, 1); err != nil {
		return nil, err
	}
	if err := checkNumber(top, "frequency_penalty", -2, 2); err != nil {
		return nil, err
	}
	if err := checkNumber(top, "presence_penalty", -2, 2); err != nil {
		return nil, err
	}
	maxOut := req.model.MaxOutputTokens
	if maxOut <= 0 {
		maxOut = math.MaxInt32
	}
	for _, f := range []string{"max_tokens", "max_completion_tokens"} {
		if err := checkInteger(top, f, 1, maxOut); err != nil {
			return nil, err
		}
	}
	if raw, _ := top.get("stop"); raw != nil {
		if err := checkStop(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := top.get("stream"); ok && !isNull(raw) {
		if json.Unmarshal(raw, &req.stream) != nil {
			return nil, apierr.InvalidRequest("stream must be a boolean").WithParam("stream")
		}
	}

	// Thinking: the client's own choice wins over the catalog's.
	if raw, ok := top.get("thinking"); ok && !isNull(raw) {
		var th struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(raw, &th) != nil || (th.Type != "enabled" && th.Type != "disabled") {
			return nil, apierr.InvalidRequest(`thinking must be {"type":"enabled"} or {"type":"disabled"}`).WithParam("thinking")
		}
		req.thinking = th.Type == "enabled"
	} else if req.model.Thinking != "" {
		top.set("thinking", []byte(`{"type":"`+req.model.Thinking+`"}`))
		req.thinking = req.model.Thinking == catalog.ThinkingEnabled
	}

	if raw, ok := top.get("stream_options"); ok && !isNull(raw) {
		var so map[string]json.RawMessage
		if json.Unmarshal(raw, &so) != nil {
			return nil, apierr.InvalidRequest("stream_options must be an object").WithParam("stream_options")
		}
		if iu, ok := so["include_usage"]; ok && !isNull(iu) {
			if json.Unmarshal(iu, &req.includeUsage) != nil {
				return nil, apierr.InvalidRequest("stream_options.include_usage must be a boolean").WithParam("stream_options.include_usage")
			}
		}
		if req.stream {
			so["include_usage"] = json.RawMessage("true")
			b, _ := json.Marshal(so)
			top.set("stream_options", b)
		} else {
			// OpenAI rejects stream_options without stream; the upstream may
			// too, and it means nothing here: drop it.
			top.del("stream_options")
		}
	} else if req.stream {
		top.set("stream_options", []byte(`{"include_usage":true}`))
	}

	if bytes.Contains(rawMsgs, []byte(`"reasoning_content"`)) {
		cleaned, changed, err := stripReasoning(rawMsgs, msgs, req.thinking)
		if err != nil {
			return nil, apierr.InvalidRequest("messages could not be parsed").WithParam("messages")
		}
		if changed {
			top.set("messages", cleaned)
		}
	}

	top.set("model", appendJSONString(nil, []byte(req.model.Upstream)))
	req.body = top.encode()
	return req, nil
}

// stripReasoning removes reasoning_content from assistant messages where the
// upstream rejects it. DeepSeek needs it back only on assistant turns that
// made tool calls in thinking mode (the model continues its reasoning after
// the tool result); everywhere else it answers 400.
func stripReasoning(raw json.RawMessage, msgs []message, thinking bool) (json.RawMessage, bool, error) {
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &objs); err != nil {
		return nil, false, err
	}
	changed := false
	for i, m := range msgs {
		if m.ReasoningContent == nil {
			continue
		}
		keep := thinking && *m.Role == "assistant" && len(m.ToolCalls) > 0 && !isNull(m.ToolCalls)
		if !keep {
			delete(objs[i], "reasoning_content")
			changed = true
		}
	}
	if !changed {
		return raw, false, nil
	}
	out, err := json.Marshal(objs)
	return out, true, err
}

func isNull(raw json.RawMessage) bool { return len(raw) == 4 && string(raw) == "null" }

// checkNumber, checkInteger and checkStop validate one optional field; a
// returned error is an *apierr.Error naming it.
func checkNumber(top *object, field string, lo, hi float64) error {
	raw, ok := top.get(field)
	if !ok || isNull(raw) {
		return nil
	}
	var v float64
	if json.Unmarshal(raw, &v) != nil || math.IsNaN(v) || v < lo || v > hi {
		return apierr.InvalidRequest(fmt.Sprintf("%s must be a number between %g and %g", field, lo, hi)).WithParam(field)
	}
	return nil
}

func checkInteger(top *object, field string, lo, hi int64) error {
	raw, ok := top.get(field)
	if !ok || isNull(raw) {
		return nil
	}
	var v float64
	if json.Unmarshal(raw, &v) != nil || v != math.Trunc(v) || v < float64(lo) || v > float64(hi) {
		return apierr.InvalidRequest(fmt.Sprintf("%s must be an integer between %d and %d", field, lo, hi)).WithParam(field)
	}
	return nil
}

func checkStop(raw json.RawMessage) error {
	if raw == nil || isNull(raw) {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return nil
	}
	var list []string
	if json.Unmarshal(raw, &list) != nil {
		return apierr.InvalidRequest("stop must be a string or an array of strings").WithParam("stop")
	}
	if len(list) > 4 {
		return apierr.InvalidRequest("stop may contain at most 4 sequences").WithParam("stop")
	}
	return nil
}
