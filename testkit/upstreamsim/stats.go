package upstreamsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync/atomic"
)

// Stats is a snapshot of the simulator's counters. The package comment
// defines each field precisely; JSON names are those of /_sim/stats.
type Stats struct {
	Requests  uint64            `json:"requests"`
	InFlight  int64             `json:"in_flight"`
	Streams   uint64            `json:"streams"`
	ByStatus  map[string]uint64 `json:"by_status"`
	Completed uint64            `json:"completed"`
	Errors    uint64            `json:"errors"`
	Cancelled uint64            `json:"cancelled"`
	Cut       uint64            `json:"cut"`

	PromptTokens     uint64 `json:"prompt_tokens"`
	CacheHitTokens   uint64 `json:"cache_hit_tokens"`
	CacheMissTokens  uint64 `json:"cache_miss_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
	ReasoningTokens  uint64 `json:"reasoning_tokens"`

	UnreportedRequests         uint64 `json:"unreported_requests"`
	UnreportedPromptTokens     uint64 `json:"unreported_prompt_tokens"`
	UnreportedCacheHitTokens   uint64 `json:"unreported_cache_hit_tokens"`
	UnreportedCacheMissTokens  uint64 `json:"unreported_cache_miss_tokens"`
	UnreportedCompletionTokens uint64 `json:"unreported_completion_tokens"`
	UnreportedReasoningTokens  uint64 `json:"unreported_reasoning_tokens"`
}

// usage is the token usage of one answer.
type usage struct {
	prompt, hit, miss, completion, reasoning int
}

// counters are the live, atomic form of Stats.
type counters struct {
	requests, streams, completed, errors, cancelled, cut atomic.Uint64
	inFlight                                             atomic.Int64
	byStatus                                             [600]atomic.Uint64

	prompt, hit, miss, completion, reasoning atomic.Uint64

	unRequests, unPrompt, unHit, unMiss, unCompletion, unReasoning atomic.Uint64
}

// status counts a status line written.
func (c *counters) status(code int) {
	if code >= 0 && code < len(c.byStatus) {
		c.byStatus[code].Add(1)
	}
}

// reported adds usage that reached the client.
func (c *counters) reported(u usage) {
	c.prompt.Add(uint64(u.prompt))
	c.hit.Add(uint64(u.hit))
	c.miss.Add(uint64(u.miss))
	c.completion.Add(uint64(u.completion))
	c.reasoning.Add(uint64(u.reasoning))
}

// unreported adds an answer whose usage never reached the client: its prompt,
// and the completion and reasoning tokens actually sent.
func (c *counters) unreported(u usage, sentCompletion, sentReasoning int) {
	c.unRequests.Add(1)
	c.unPrompt.Add(uint64(u.prompt))
	c.unHit.Add(uint64(u.hit))
	c.unMiss.Add(uint64(u.miss))
	c.unCompletion.Add(uint64(sentCompletion))
	c.unReasoning.Add(uint64(sentReasoning))
}

func (c *counters) snapshot() Stats {
	st := Stats{
		Requests:                   c.requests.Load(),
		InFlight:                   c.inFlight.Load(),
		Streams:                    c.streams.Load(),
		ByStatus:                   map[string]uint64{},
		Completed:                  c.completed.Load(),
		Errors:                     c.errors.Load(),
		Cancelled:                  c.cancelled.Load(),
		Cut:                        c.cut.Load(),
		PromptTokens:               c.prompt.Load(),
		CacheHitTokens:             c.hit.Load(),
		CacheMissTokens:            c.miss.Load(),
		CompletionTokens:           c.completion.Load(),
		ReasoningTokens:            c.reasoning.Load(),
		UnreportedRequests:         c.unRequests.Load(),
		UnreportedPromptTokens:     c.unPrompt.Load(),
		UnreportedCacheHitTokens:   c.unHit.Load(),
		UnreportedCacheMissTokens:  c.unMiss.Load(),
		UnreportedCompletionTokens: c.unCompletion.Load(),
		UnreportedReasoningTokens:  c.unReasoning.Load(),
	}
	for code := range c.byStatus {
		if n := c.byStatus[code].Load(); n > 0 {
			st.ByStatus[strconv.Itoa(code)] = n
		}
	}
	return st
}

// reset zeroes every counter but inFlight, which describes requests that are
// still running and will decrement it.
func (c *counters) reset() {
	for _, a := range []*atomic.Uint64{
		&c.requests, &c.streams, &c.completed, &c.errors, &c.cancelled, &c.cut,
		&c.prompt, &c.hit, &c.miss, &c.completion, &c.reasoning,
		&c.unRequests, &c.unPrompt, &c.unHit, &c.unMiss, &c.unCompletion, &c.unReasoning,
	} {
		a.Store(0)
	}
	for i := range c.byStatus {
		c.byStatus[i].Store(0)
	}
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) handleReset(w http.ResponseWriter, _ *http.Request) {
	s.Reset()
	s.log.Debug("simulator reset")
	w.WriteHeader(http.StatusNoContent)
}

// writeJSON answers the control API.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
