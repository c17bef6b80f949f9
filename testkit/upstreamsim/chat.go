package upstreamsim

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// answer is everything needed to write one successful response.
type answer struct {
	id, toolID   string
	created      int64
	model        string
	includeUsage bool
	reasoning    int    // R: reasoning tokens (thinking mode)
	tokens       int    // N-R: answer tokens, or tool-argument tokens
	thinking     bool   // whether reasoning_content is part of the answer
	open         string // JSON wrapper of the answer or arguments; "" for text
	tool         *tool  // the tool called, or nil
	finish       string
	usage        usage
}

// handleChat answers POST /chat/completions.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	s.stats.requests.Add(1)
	s.stats.inFlight.Add(1)
	defer s.stats.inFlight.Add(-1)

	account, e := s.authenticate(r)
	if e != nil {
		s.writeError(w, e)
		return
	}
	req, e := s.decodeRequest(r)
	if e != nil {
		s.writeError(w, e)
		return
	}
	thinking := s.thinking(req)
	if thinking {
		if e := req.validateThinking(); e != nil {
			s.writeError(w, e)
			return
		}
	}
	k, e := s.requestKnobs(req)
	if e != nil {
		s.writeError(w, e)
		return
	}

	ctx := r.Context()
	if k.delay > 0 && !sleep(ctx, k.delay) {
		s.stats.cancelled.Add(1)
		return
	}
	if k.hang {
		select {
		case <-ctx.Done():
		case <-stopping(ctx):
		}
		s.stats.cancelled.Add(1)
		panic(http.ErrAbortHandler) // close the connection without a response
	}
	if k.status != 0 {
		s.writeError(w, errStatus(k.status))
		return
	}

	a := s.newAnswer(req, k, thinking, account)
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "simulated answer",
			slog.String("id", a.id), slog.String("model", a.model), slog.Bool("stream", req.Stream),
			slog.Bool("thinking", thinking), slog.Bool("tool_call", a.tool != nil),
			slog.Int("prompt_tokens", a.usage.prompt), slog.Int("cache_hit_tokens", a.usage.hit),
			slog.Int("completion_tokens", a.usage.completion))
	}
	if req.Stream {
		s.stream(ctx, w, a, k)
		return
	}
	s.complete(ctx, w, a, k)
}

// newAnswer plans the answer to req and computes its usage, which consults
// and updates the prompt cache of account.
func (s *Server) newAnswer(req *chatRequest, k knobs, thinking bool, account string) *answer {
	seq := strconv.FormatUint(s.seq.Add(1), 10)
	a := &answer{
		id:       "chatcmpl-" + s.instance + "-" + seq,
		created:  s.now().Unix(),
		model:    req.Model,
		thinking: thinking,
		finish:   "stop",
	}
	if req.Stream && req.StreamOptions != nil {
		a.includeUsage = req.StreamOptions.IncludeUsage
	}

	n := k.tokens
	if n < 0 {
		n = s.defaultTokens
		if req.MaxTokens != nil && *req.MaxTokens < n {
			n = *req.MaxTokens
			a.finish = "length"
		}
	}
	if thinking {
		a.reasoning = n / 2
		if k.reasoning >= 0 {
			a.reasoning = min(k.reasoning, n)
		}
	}
	a.tokens = n - a.reasoning

	if idx, _ := req.toolChoice(); len(req.Tools) > 0 && idx >= 0 && req.Messages[len(req.Messages)-1].Role == "user" {
		a.tool = &req.Tools[idx]
		a.toolID = "call_" + s.instance + "_" + seq
		a.open = jsonToolOpen
		a.finish = "tool_calls"
	} else if req.ResponseFormat != nil && req.ResponseFormat.Type == "json_object" {
		a.open = jsonAnswerOpen
	}

	prompt, hit := s.promptUsage(req, account)
	a.usage = usage{prompt: prompt, hit: hit, miss: prompt - hit, completion: n, reasoning: a.reasoning}
	return a
}

// complete writes a non-stream answer.
func (s *Server) complete(ctx context.Context, w http.ResponseWriter, a *answer, k knobs) {
	if k.cutAfter >= 0 {
		s.stats.cut.Add(1)
		s.stats.unreported(a.usage, 0, 0)
		panic(http.ErrAbortHandler)
	}
	bp := s.getOut()
	defer s.putOut(bp)
	body := s.appendCompletion((*bp)[:0], a)
	*bp = body

	h := w.Header()
	h.Set("Content-Type", "application/json")
	if k.keepalive > 0 {
		// DeepSeek keeps a waiting non-stream request alive with empty lines
		// before the JSON body.
		w.WriteHeader(http.StatusOK)
		s.stats.status(http.StatusOK)
		rc := http.NewResponseController(w)
		for i := range k.keepalive {
			if i > 0 && k.chunkDelay > 0 && !sleep(ctx, k.chunkDelay) {
				s.fail(a, 0, 0)
				return
			}
			if _, err := w.Write([]byte{'\n'}); err != nil {
				s.fail(a, 0, 0)
				return
			}
			if err := rc.Flush(); err != nil {
				s.fail(a, 0, 0)
				return
			}
		}
		if k.chunkDelay > 0 && !sleep(ctx, k.chunkDelay) {
			s.fail(a, 0, 0)
			return
		}
	} else {
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		s.stats.status(http.StatusOK)
	}
	if _, err := w.Write(body); err != nil {
		s.fail(a, 0, 0)
		return
	}
	s.stats.reported(a.usage)
	s.stats.completed.Add(1)
}

// fail counts an answer the client left before its usage was reported.
func (s *Server) fail(a *answer, sent, sentReasoning int) {
	s.stats.cancelled.Add(1)
	s.stats.unreported(a.usage, sent, sentReasoning)
}

// appendCompletion renders a chat.completion object.
func (s *Server) appendCompletion(b []byte, a *answer) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, a.id)
	b = append(b, `,"object":"chat.completion","created":`...)
	b = appendInt(b, a.created)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, a.model)
	b = append(b, `,"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	if a.tool == nil {
		b = appendText(b, s.answerWords, a.tokens, a.open)
	}
	b = append(b, '"')
	if a.thinking {
		b = append(b, `,"reasoning_content":"`...)
		b = appendText(b, s.thinkWords, a.reasoning, "")
		b = append(b, '"')
	}
	if a.tool != nil {
		b = append(b, `,"tool_calls":[{"id":`...)
		b = appendJSONString(b, a.toolID)
		b = append(b, `,"type":"function","function":{"name":`...)
		b = appendJSONString(b, a.tool.Function.Name)
		b = append(b, `,"arguments":"`...)
		b = appendText(b, s.answerWords, a.tokens, a.open)
		b = append(b, `"}}]`...)
	}
	b = append(b, `},"logprobs":null,"finish_reason":"`...)
	b = append(b, a.finish...)
	b = append(b, `"}],"usage":`...)
	b = appendUsage(b, a.usage)
	b = append(b, `,"system_fingerprint":"`+SystemFingerprint+`"}`...)
	return b
}

// sleep waits d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// getOut and putOut lend pooled response buffers.
func (s *Server) getOut() *[]byte {
	if p, ok := s.outs.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 0, 2048)
	return &b
}

func (s *Server) putOut(p *[]byte) {
	if cap(*p) > 1<<20 {
		return
	}
	s.outs.Put(p)
}
