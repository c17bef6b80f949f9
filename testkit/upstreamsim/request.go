package upstreamsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// chatRequest is the part of a DeepSeek chat completion request the
// simulator reads; other fields are accepted and ignored.
type chatRequest struct {
	Model          string          `json:"model"`
	Messages       []message       `json:"messages"`
	Stream         bool            `json:"stream"`
	StreamOptions  *streamOptions  `json:"stream_options"`
	MaxTokens      *int            `json:"max_tokens"`
	Temperature    *float64        `json:"temperature"`
	TopP           *float64        `json:"top_p"`
	Thinking       *typed          `json:"thinking"`
	Tools          []tool          `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	ResponseFormat *typed          `json:"response_format"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// typed is any {"type": "..."} object.
type typed struct {
	Type string `json:"type"`
}

type message struct {
	Role             string     `json:"role"`
	Content          content    `json:"content"`
	ReasoningContent *string    `json:"reasoning_content"`
	ToolCalls        []toolCall `json:"tool_calls"`
	ToolCallID       string     `json:"tool_call_id"`
	Name             string     `json:"name"`
}

// content is a message's content: a string, an array of parts whose text parts
// are kept, or null/absent.
type content struct {
	parts   []string
	present bool
}

// UnmarshalJSON accepts a string, null or an array of {"type","text"} parts.
func (c *content) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || string(b) == "null":
		*c = content{}
		return nil
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*c = content{parts: []string{s}, present: true}
		return nil
	case b[0] == '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			return err
		}
		c.present = true
		c.parts = c.parts[:0]
		for _, p := range parts {
			if p.Type == "text" {
				c.parts = append(c.parts, p.Text)
			}
		}
		return nil
	}
	return errors.New("invalid type: expected a string or an array of content parts")
}

type toolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type tool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// presence records whether model and messages were in the body at all, which
// the struct cannot tell from empty values.
type presence struct {
	Model    json.RawMessage `json:"model"`
	Messages json.RawMessage `json:"messages"`
}

// decodeRequest reads and validates a chat request; the checks that depend on
// thinking mode are in validateThinking.
func (s *Server) decodeRequest(r *http.Request) (*chatRequest, *apiError) {
	buf := s.getBuf()
	defer s.putBuf(buf)
	if _, err := buf.ReadFrom(http.MaxBytesReader(nil, r.Body, s.maxBody)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errInvalid(fmt.Sprintf("Request body is larger than %d bytes", s.maxBody))
		}
		return nil, errInvalid("Failed to read the request body: " + err.Error())
	}
	req := new(chatRequest)
	if err := json.Unmarshal(buf.Bytes(), req); err != nil {
		return nil, errInvalid("Failed to deserialize the JSON body into the target type: " + err.Error())
	}
	if req.Model == "" || len(req.Messages) == 0 {
		// Tell "missing" from "empty" the way DeepSeek's messages do.
		var p presence
		_ = json.Unmarshal(buf.Bytes(), &p) // the body already parsed once
		switch {
		case len(p.Model) == 0:
			return nil, errInvalid("Failed to deserialize the JSON body into the target type: missing field `model`")
		case len(p.Messages) == 0 || string(p.Messages) == "null":
			return nil, errInvalid("Failed to deserialize the JSON body into the target type: missing field `messages`")
		case len(req.Messages) == 0:
			return nil, errInvalid("Empty input messages")
		}
	}
	if e := req.validate(); e != nil {
		return nil, e
	}
	return req, nil
}

// validate checks what DeepSeek checks. Thinking-dependent checks are in
// validateThinking.
func (req *chatRequest) validate() *apiError {
	if !knownModel(req.Model) {
		return errInvalid("Model Not Exist")
	}
	if req.MaxTokens != nil && (*req.MaxTokens < 1 || *req.MaxTokens > 393216) {
		return errParam("Invalid max_tokens value, the valid range of max_tokens is [1, 393216]")
	}
	if req.Temperature != nil && (*req.Temperature < 0 || *req.Temperature > 2) {
		return errParam("Invalid temperature value, the valid range of temperature is [0, 2]")
	}
	if req.TopP != nil && (*req.TopP <= 0 || *req.TopP > 1) {
		return errParam("Invalid top_p value, the valid range of top_p is (0, 1]")
	}
	if req.Thinking != nil && req.Thinking.Type != "enabled" && req.Thinking.Type != "disabled" {
		return errInvalid("thinking.type: unknown variant `" + req.Thinking.Type + "`, expected `enabled` or `disabled`")
	}
	if req.ResponseFormat != nil && req.ResponseFormat.Type != "text" && req.ResponseFormat.Type != "json_object" {
		return errInvalid("response_format.type: unknown variant `" + req.ResponseFormat.Type + "`, expected `text` or `json_object`")
	}
	for i := range req.Tools {
		t := &req.Tools[i]
		if t.Type != "function" || t.Function.Name == "" {
			return errInvalid("tools[" + strconv.Itoa(i) + "]: a tool must be {\"type\":\"function\",\"function\":{\"name\":...}}")
		}
	}
	if _, e := req.toolChoice(); e != nil {
		return e
	}
	for i := range req.Messages {
		if e := req.Messages[i].validate(i); e != nil {
			return e
		}
	}
	return nil
}

func (m *message) validate(i int) *apiError {
	at := "messages[" + strconv.Itoa(i) + "]"
	switch m.Role {
	case "system", "user":
		if !m.Content.present {
			return errInvalid(at + ": missing field `content`")
		}
	case "assistant":
		if !m.Content.present && len(m.ToolCalls) == 0 {
			return errInvalid(at + ": an assistant message needs content or tool_calls")
		}
		// DeepSeek does not take back the reasoning of an ordinary answer.
		if m.ReasoningContent != nil && len(m.ToolCalls) == 0 {
			return errInvalid(at + ": the `reasoning_content` field of an assistant message without tool_calls must not be passed back to the API; send only role and content")
		}
	case "tool":
		if m.ToolCallID == "" {
			return errInvalid(at + ": missing field `tool_call_id`")
		}
	default:
		return errInvalid(at + ": unknown variant `" + m.Role + "`, expected one of `system`, `user`, `assistant`, `tool`")
	}
	return nil
}

// thinking reports whether the request runs in thinking mode.
func (s *Server) thinking(req *chatRequest) bool {
	switch {
	case req.Model == ModelChat:
		return false
	case req.Thinking != nil:
		return req.Thinking.Type == "enabled"
	case req.Model == ModelReasoner:
		return true
	}
	return s.thinkByDefault
}

// validateThinking rejects, in thinking mode, a tool-call turn whose
// reasoning_content was not passed back, as DeepSeek does.
func (req *chatRequest) validateThinking() *apiError {
	for i := range req.Messages {
		m := &req.Messages[i]
		if m.Role == "assistant" && len(m.ToolCalls) > 0 && m.ReasoningContent == nil {
			return errInvalid("The `reasoning_content` in the thinking mode must be passed back to the API. (messages[" + strconv.Itoa(i) + "])")
		}
	}
	return nil
}

// toolChoice returns the index of the tool to call when the model decides to
// call one, or -1 when tool_choice is "none".
func (req *chatRequest) toolChoice() (int, *apiError) {
	raw := bytes.TrimSpace(req.ToolChoice)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	if raw[0] == '"' {
		var mode string
		if err := json.Unmarshal(raw, &mode); err != nil {
			return 0, errInvalid("tool_choice: " + err.Error())
		}
		switch mode {
		case "none":
			return -1, nil
		case "auto", "required":
			return 0, nil
		}
		return 0, errInvalid("tool_choice: unknown variant `" + mode + "`, expected `none`, `auto` or `required`")
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" {
		return 0, errInvalid(`tool_choice: expected "none", "auto", "required" or {"type":"function","function":{"name":...}}`)
	}
	for i := range req.Tools {
		if req.Tools[i].Function.Name == named.Function.Name {
			return i, nil
		}
	}
	return 0, errInvalid("tool_choice: no tool named `" + named.Function.Name + "` in tools")
}

// lastUser returns the last message whose role is user, or nil.
func (req *chatRequest) lastUser() *message {
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == "user" {
			return &req.Messages[i]
		}
	}
	return nil
}
