package upstreamsim

import (
	"context"
	"net/http"
)

// Literal SSE events.
const (
	sseKeepAlive = ": keep-alive\n\n"
	sseDone      = "data: [DONE]\n\n"
)

// streamWriter writes paced, flushed SSE events and counts the tokens sent.
type streamWriter struct {
	ctx    context.Context
	w      http.ResponseWriter
	rc     *http.ResponseController
	pace   knobs
	events int

	head []byte // `data: {"id":...,"choices":` shared by every chunk
	tail string // what closes a chunk after its choices
	buf  []byte

	sent, sentReasoning int
}

// event writes one SSE event, after the chunk delay if it is not the first.
// It reports false when the client is gone.
func (sw *streamWriter) event(b []byte) bool {
	if sw.events > 0 && sw.pace.chunkDelay > 0 {
		if !sleep(sw.ctx, sw.pace.chunkDelay) {
			return false
		}
	} else if sw.ctx.Err() != nil {
		return false
	}
	sw.events++
	if _, err := sw.w.Write(b); err != nil {
		return false
	}
	return sw.rc.Flush() == nil
}

// delta writes a chunk whose only choice has the given delta (a JSON object,
// given without its closing brace, which delta adds) and finish_reason.
func (sw *streamWriter) delta(open func([]byte) []byte, finish string) bool {
	b := append(sw.buf[:0], sw.head...)
	b = append(b, `[{"index":0,"delta":`...)
	b = open(b)
	b = append(b, `},"logprobs":null,"finish_reason":`...)
	if finish == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, finish)
	}
	b = append(b, "}]"...)
	b = append(b, sw.tail...)
	sw.buf = b
	return sw.event(b)
}

// stream writes a streaming answer.
func (s *Server) stream(ctx context.Context, w http.ResponseWriter, a *answer, k knobs) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s.stats.status(http.StatusOK)
	s.stats.streams.Add(1)

	bp := s.getOut()
	defer s.putOut(bp)
	sw := &streamWriter{ctx: ctx, w: w, rc: http.NewResponseController(w), pace: k, buf: (*bp)[:0]}
	defer func() { *bp = sw.buf }()

	sw.head = append(sw.head, `data: {"id":`...)
	sw.head = appendJSONString(sw.head, a.id)
	sw.head = append(sw.head, `,"object":"chat.completion.chunk","created":`...)
	sw.head = appendInt(sw.head, a.created)
	sw.head = append(sw.head, `,"model":`...)
	sw.head = appendJSONString(sw.head, a.model)
	sw.head = append(sw.head, `,"system_fingerprint":"`+SystemFingerprint+`","choices":`...)
	sw.tail = "}\n\n"
	if a.includeUsage {
		sw.tail = `,"usage":null}` + "\n\n"
	}

	if !s.writeStream(sw, a, k) {
		s.fail(a, sw.sent, sw.sentReasoning)
	}
}

// writeStream writes the events of a; it returns false when the client left
// before the usage was reported (or, without include_usage, before [DONE]).
func (s *Server) writeStream(sw *streamWriter, a *answer, k knobs) bool {
	for range k.keepalive {
		if !sw.event([]byte(sseKeepAlive)) {
			return false
		}
	}
	if !sw.delta(func(b []byte) []byte { return append(b, `{"role":"assistant","content":""`...) }, "") {
		return false
	}

	// cut aborts the connection once cut_after token chunks are out.
	cut := func() {
		s.stats.cut.Add(1)
		s.stats.unreported(a.usage, sw.sent, sw.sentReasoning)
		panic(http.ErrAbortHandler)
	}

	for i := range a.reasoning {
		if k.cutAfter >= 0 && sw.sent >= k.cutAfter {
			cut()
		}
		ok := sw.delta(func(b []byte) []byte {
			b = append(b, `{"reasoning_content":"`...)
			b = appendPiece(b, s.thinkWords, i, a.reasoning, "", true)
			return append(b, '"')
		}, "")
		if !ok {
			return false
		}
		sw.sent++
		sw.sentReasoning++
	}

	if a.tool != nil {
		ok := sw.delta(func(b []byte) []byte {
			b = append(b, `{"tool_calls":[{"index":0,"id":`...)
			b = appendJSONString(b, a.toolID)
			b = append(b, `,"type":"function","function":{"name":`...)
			b = appendJSONString(b, a.tool.Function.Name)
			return append(b, `,"arguments":""}}]`...)
		}, "")
		if !ok {
			return false
		}
	}
	// piece opens the delta of one answer token (or, for a tool call, one
	// arguments token) and closes it.
	piece := func(b []byte, text func([]byte) []byte) []byte {
		if a.tool != nil {
			b = append(b, `{"tool_calls":[{"index":0,"function":{"arguments":"`...)
			b = text(b)
			return append(b, `"}}]`...)
		}
		b = append(b, `{"content":"`...)
		b = text(b)
		return append(b, '"')
	}
	if a.tokens == 0 && a.open != "" {
		// An empty JSON object costs no token but must still be sent.
		ok := sw.delta(func(b []byte) []byte {
			return piece(b, func(b []byte) []byte { return append(b, jsonEmpty...) })
		}, "")
		if !ok {
			return false
		}
	}
	for i := range a.tokens {
		if k.cutAfter >= 0 && sw.sent >= k.cutAfter {
			cut()
		}
		ok := sw.delta(func(b []byte) []byte {
			return piece(b, func(b []byte) []byte {
				return appendPiece(b, s.answerWords, i, a.tokens, a.open, true)
			})
		}, "")
		if !ok {
			return false
		}
		sw.sent++
	}
	if k.cutAfter >= 0 {
		cut()
	}

	if a.includeUsage && k.usageOnFinish {
		// DeepSeek's shape: the finish chunk carries the usage.
		sw.tail = string(appendUsage([]byte(`,"usage":`), a.usage)) + "}\n\n"
		if !sw.delta(func(b []byte) []byte { return append(b, '{') }, a.finish) {
			return false
		}
		s.stats.reported(a.usage)
	} else if !sw.delta(func(b []byte) []byte { return append(b, '{') }, a.finish) {
		return false
	}
	if a.includeUsage && !k.usageOnFinish {
		b := append(sw.buf[:0], sw.head...)
		b = append(b, `[],"usage":`...)
		b = appendUsage(b, a.usage)
		b = append(b, "}\n\n"...)
		sw.buf = b
		if !sw.event(b) {
			return false
		}
		s.stats.reported(a.usage)
	}
	if !sw.event([]byte(sseDone)) {
		if a.includeUsage {
			s.stats.cancelled.Add(1) // usage was reported: not "unreported"
			return true
		}
		return false
	}
	if !a.includeUsage {
		s.stats.unreported(a.usage, sw.sent, sw.sentReasoning)
	}
	s.stats.completed.Add(1)
	return true
}
