// Package usage defines the usage event: the one record per request that
// reached the upstream, published by the gateway to NATS JetStream and
// written by the meter to ClickHouse. The wire form is JSON; SchemaVersion
// changes whenever a field changes meaning (adding a field does not).
package usage

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// SchemaVersion is the version of Event this code writes.
const SchemaVersion = 1

// JetStream names. The stream holds Subject; consumers bind to it by name.
const (
	StreamName = "USAGE"
	// Subject is where gateways publish events.
	Subject = "qyai.usage.v1"
	// SubjectFilter matches every usage subject of every version.
	SubjectFilter = "qyai.usage.>"
	// DeadLetterSubject receives events the meter cannot store, with the reason
	// in the header DeadLetterReasonHeader. It is outside SubjectFilter.
	DeadLetterSubject      = "qyai.deadletter.usage"
	DeadLetterReasonHeader = "Qyai-Dead-Letter-Reason"
)

// Usage sources.
const (
	// SourceReported means the tokens are what the upstream reported.
	SourceReported = "reported"
	// SourceEstimated means the upstream never reported usage (e.g. the client
	// hung up before it did, even before the first byte of the answer) and
	// the gateway estimated it: the prompt from the request's messages, the
	// completion from what was relayed.
	SourceEstimated = "estimated"
	// SourceNone means no tokens were generated or reported (e.g. an upstream error).
	SourceNone = "none"
)

// Outcomes: how a request ended.
const (
	OutcomeCompleted       = "completed"
	OutcomeClientCancelled = "client_cancelled"
	OutcomeUpstreamError   = "upstream_error"
	OutcomeTimeout         = "timeout"
)

// Event is one request's usage.
type Event struct {
	SchemaVersion int    `json:"v"`
	ID            string `json:"id"` // unique; also the JetStream Nats-Msg-Id
	RequestID     string `json:"request_id"`
	// StartedAt is when the gateway received the request; it decides the
	// billing month (UTC).
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`

	KeyID     string `json:"key_id"`
	KeyPrefix string `json:"key_prefix"`
	Tier      string `json:"tier"`

	Model         string `json:"model"`          // public id the client asked for
	UpstreamModel string `json:"upstream_model"` // what was sent upstream
	Thinking      bool   `json:"thinking"`
	Stream        bool   `json:"stream"`

	Status    int    `json:"status"` // HTTP status returned to the client
	ErrorType string `json:"error_type,omitempty"`
	Outcome   string `json:"outcome"`

	PromptTokens     int64  `json:"prompt_tokens"`
	CacheHitTokens   int64  `json:"cache_hit_tokens"`
	CacheMissTokens  int64  `json:"cache_miss_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	ReasoningTokens  int64  `json:"reasoning_tokens"`
	UsageSource      string `json:"usage_source"`

	LatencyMs int64 `json:"latency_ms"`
	TTFTMs    int64 `json:"ttft_ms"` // time to first byte of the answer; 0 when none

	Gateway string `json:"gateway"` // instance that served the request
	TraceID string `json:"trace_id,omitempty"`
	// TraceParent and TraceState are the W3C trace context of the
	// gateway's request span, set only when that span is sampled. The
	// publisher sends them as the message's traceparent and tracestate
	// headers, live and on replay from the spool (which stores the encoded
	// event), so that the meter can link its insert span to the request.
	// They are not stored in ClickHouse.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
}

// ErrInvalid wraps every validation failure of Decode.
var ErrInvalid = errors.New("invalid usage event")

// Marshal encodes e: the same bytes as json.Marshal(e), written without
// reflection because the gateway encodes one event per request.
func (e *Event) Marshal() ([]byte, error) { return e.AppendJSON(make([]byte, 0, 640)) }

// AppendJSON appends what Marshal returns to dst; on an error dst comes
// back unchanged.
func (e *Event) AppendJSON(dst []byte) ([]byte, error) {
	if !marshalableTime(e.StartedAt) || !marshalableTime(e.FinishedAt) {
		j, err := json.Marshal(e) // its error
		if err != nil {
			return dst, err
		}
		return append(dst, j...), nil
	}
	b := append(dst, `{"v":`...)
	b = strconv.AppendInt(b, int64(e.SchemaVersion), 10)
	b = appendString(b, `,"id":`, e.ID)
	b = appendString(b, `,"request_id":`, e.RequestID)
	b = appendTime(b, `,"started_at":`, e.StartedAt)
	b = appendTime(b, `,"finished_at":`, e.FinishedAt)
	b = appendString(b, `,"key_id":`, e.KeyID)
	b = appendString(b, `,"key_prefix":`, e.KeyPrefix)
	b = appendString(b, `,"tier":`, e.Tier)
	b = appendString(b, `,"model":`, e.Model)
	b = appendString(b, `,"upstream_model":`, e.UpstreamModel)
	b = strconv.AppendBool(append(b, `,"thinking":`...), e.Thinking)
	b = strconv.AppendBool(append(b, `,"stream":`...), e.Stream)
	b = strconv.AppendInt(append(b, `,"status":`...), int64(e.Status), 10)
	if e.ErrorType != "" {
		b = appendString(b, `,"error_type":`, e.ErrorType)
	}
	b = appendString(b, `,"outcome":`, e.Outcome)
	b = strconv.AppendInt(append(b, `,"prompt_tokens":`...), e.PromptTokens, 10)
	b = strconv.AppendInt(append(b, `,"cache_hit_tokens":`...), e.CacheHitTokens, 10)
	b = strconv.AppendInt(append(b, `,"cache_miss_tokens":`...), e.CacheMissTokens, 10)
	b = strconv.AppendInt(append(b, `,"completion_tokens":`...), e.CompletionTokens, 10)
	b = strconv.AppendInt(append(b, `,"reasoning_tokens":`...), e.ReasoningTokens, 10)
	b = appendString(b, `,"usage_source":`, e.UsageSource)
	b = strconv.AppendInt(append(b, `,"latency_ms":`...), e.LatencyMs, 10)
	b = strconv.AppendInt(append(b, `,"ttft_ms":`...), e.TTFTMs, 10)
	b = appendString(b, `,"gateway":`, e.Gateway)
	if e.TraceID != "" {
		b = appendString(b, `,"trace_id":`, e.TraceID)
	}
	if e.TraceParent != "" {
		b = appendString(b, `,"traceparent":`, e.TraceParent)
	}
	if e.TraceState != "" {
		b = appendString(b, `,"tracestate":`, e.TraceState)
	}
	return append(b, '}'), nil
}

// appendString appends name and s as encoding/json writes a string,
// HTML-safe escapes included (anything unusual goes through it).
func appendString(b []byte, name, s string) []byte {
	b = append(b, name...)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// marshalableTime reports whether time.Time's MarshalJSON accepts t.
func marshalableTime(t time.Time) bool {
	y := t.Year()
	_, off := t.Zone()
	return y >= 0 && y <= 9999 && off%60 == 0 && off > -24*3600 && off < 24*3600
}

// appendTime appends name and t as time.Time's MarshalJSON does
// (marshalableTime(t) holds).
func appendTime(b []byte, name string, t time.Time) []byte {
	b = append(b, name...)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// Decode parses and validates an event from the wire.
func Decode(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return e, e.Validate()
}

// Validate reports the first problem that would make e unbillable.
func (e *Event) Validate() error {
	switch {
	case e.SchemaVersion < 1 || e.SchemaVersion > SchemaVersion:
		return fmt.Errorf("%w: schema version %d", ErrInvalid, e.SchemaVersion)
	case e.ID == "":
		return fmt.Errorf("%w: empty id", ErrInvalid)
	case e.KeyID == "":
		return fmt.Errorf("%w: empty key_id", ErrInvalid)
	case e.StartedAt.IsZero():
		return fmt.Errorf("%w: no started_at", ErrInvalid)
	case e.PromptTokens < 0 || e.CompletionTokens < 0 || e.CacheHitTokens < 0 ||
		e.CacheMissTokens < 0 || e.ReasoningTokens < 0:
		return fmt.Errorf("%w: negative token count", ErrInvalid)
	}
	return nil
}
