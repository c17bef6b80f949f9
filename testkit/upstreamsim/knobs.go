package upstreamsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DirectivePrefix starts a per-request directive in the last user message.
const DirectivePrefix = "#sim"

// knobs steer one answer. For the int fields where 0 is meaningful, -1 means
// unset.
type knobs struct {
	status     int // 0: none
	delay      time.Duration
	hang       bool
	cutAfter   int
	tokens     int
	reasoning  int
	chunkDelay time.Duration
	keepalive  int
	// usageOnFinish puts a stream's usage on its finish chunk, as DeepSeek
	// does, instead of a chunk of its own with "choices":[], as OpenAI does.
	usageOnFinish bool
}

func noKnobs() knobs { return knobs{cutAfter: -1, tokens: -1, reasoning: -1} }

// Fault is the JSON form of the global fault of /_sim/faults; it also
// documents the knobs. Nil fields are unset.
type Fault struct {
	Status       *int  `json:"status,omitempty"`
	DelayMs      *int  `json:"delay_ms,omitempty"`
	Hang         *bool `json:"hang,omitempty"`
	CutAfter     *int  `json:"cut_after,omitempty"`
	Tokens       *int  `json:"tokens,omitempty"`
	Reasoning    *int  `json:"reasoning,omitempty"`
	ChunkDelayMs *int  `json:"chunk_delay_ms,omitempty"`
	Keepalive    *int  `json:"keepalive,omitempty"`
	// UsageOnFinish: the usage of a stream rides on its finish chunk
	// (DeepSeek's shape) rather than in a last chunk with "choices":[].
	UsageOnFinish *bool `json:"usage_on_finish,omitempty"`
	// Count is how many chat requests the fault applies to: -1 every one
	// until cleared, 0 none (clears the fault). In GET it is what remains.
	Count int `json:"count"`
}

// set applies one key=value (value "" for a bare key) to k.
func (k *knobs) set(key, value string) error {
	if key == "hang" || key == "usage_on_finish" {
		var on bool
		switch value {
		case "", "1", "true":
			on = true
		case "0", "false":
		default:
			return fmt.Errorf("%s=%q: want %s, %s=true or %s=false", key, value, key, key, key)
		}
		if key == "hang" {
			k.hang = on
		} else {
			k.usageOnFinish = on
		}
		return nil
	}
	switch key {
	case "status", "delay_ms", "cut_after", "tokens", "reasoning", "chunk_delay_ms", "keepalive":
	default:
		return fmt.Errorf("unknown key %q", key)
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < 0 {
		return fmt.Errorf("%s=%q: want a non-negative integer", key, value)
	}
	switch key {
	case "status":
		if n < 400 || n > 599 {
			return fmt.Errorf("status=%d: want 400..599", n)
		}
		k.status = n
	case "delay_ms":
		k.delay = time.Duration(n) * time.Millisecond
	case "cut_after":
		k.cutAfter = n
	case "tokens":
		k.tokens = n
	case "reasoning":
		k.reasoning = n
	case "chunk_delay_ms":
		k.chunkDelay = time.Duration(n) * time.Millisecond
	case "keepalive":
		k.keepalive = n
	}
	return nil
}

// parseDirective applies the "#sim ..." directive in text, if any, over k.
// The directive runs from the prefix to the end of its line.
func parseDirective(text string, k *knobs) error {
	i := strings.Index(text, DirectivePrefix)
	for i >= 0 {
		rest := text[i+len(DirectivePrefix):]
		if rest == "" || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r' {
			line, _, _ := strings.Cut(rest, "\n")
			for f := range strings.FieldsSeq(line) {
				key, value, _ := strings.Cut(f, "=")
				if err := k.set(key, value); err != nil {
					return err
				}
			}
			return nil
		}
		// "#simple" is not a directive; look further.
		j := strings.Index(rest, DirectivePrefix)
		if j < 0 {
			return nil
		}
		i += len(DirectivePrefix) + j
	}
	return nil
}

// faultState is the global fault and how many requests it still applies to.
type faultState struct {
	active atomic.Bool // fast path: no lock when no fault is set
	mu     sync.Mutex
	fault  Fault
	left   int // -1: unlimited
}

func (f *faultState) clear() {
	f.mu.Lock()
	f.fault, f.left = Fault{}, 0
	f.active.Store(false)
	f.mu.Unlock()
}

func (f *faultState) set(v Fault) {
	f.mu.Lock()
	f.fault, f.left = v, v.Count
	f.active.Store(v.Count != 0)
	f.mu.Unlock()
}

func (f *faultState) get() Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.fault
	v.Count = f.left
	return v
}

// take consumes one use of the fault and returns its knobs, or false.
func (f *faultState) take() (Fault, bool) {
	if !f.active.Load() {
		return Fault{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left == 0 {
		return Fault{}, false
	}
	if f.left > 0 {
		f.left--
		if f.left == 0 {
			f.active.Store(false)
		}
	}
	return f.fault, true
}

// apply sets the knobs v names over k.
func (v Fault) apply(k *knobs) error {
	ints := []struct {
		key string
		val *int
	}{
		{"status", v.Status}, {"delay_ms", v.DelayMs}, {"cut_after", v.CutAfter}, {"tokens", v.Tokens},
		{"reasoning", v.Reasoning}, {"chunk_delay_ms", v.ChunkDelayMs}, {"keepalive", v.Keepalive},
	}
	for _, kv := range ints {
		if kv.val == nil {
			continue
		}
		if err := k.set(kv.key, strconv.Itoa(*kv.val)); err != nil {
			return err
		}
	}
	if v.Hang != nil {
		k.hang = *v.Hang
	}
	if v.UsageOnFinish != nil {
		k.usageOnFinish = *v.UsageOnFinish
	}
	return nil
}

// requestKnobs merges the global fault and the request's directive.
func (s *Server) requestKnobs(req *chatRequest) (knobs, *apiError) {
	k := noKnobs()
	k.usageOnFinish = s.usageOnFinish
	if f, ok := s.faults.take(); ok {
		_ = f.apply(&k) // validated when set
	}
	if m := req.lastUser(); m != nil {
		for _, p := range m.Content.parts {
			if err := parseDirective(p, &k); err != nil {
				return k, errInvalid("sim directive: " + err.Error())
			}
		}
	}
	return k, nil
}

func (s *Server) handleGetFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.faults.get())
}

func (s *Server) handleSetFaults(w http.ResponseWriter, r *http.Request) {
	var v Fault
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		http.Error(w, "decode fault: "+err.Error(), http.StatusBadRequest)
		return
	}
	if v.Count < -1 {
		http.Error(w, "count: want -1, 0 or more", http.StatusBadRequest)
		return
	}
	k := noKnobs()
	if err := v.apply(&k); err != nil {
		http.Error(w, "fault: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.faults.set(v)
	s.log.Info("simulator fault set", "count", v.Count)
	writeJSON(w, http.StatusOK, s.faults.get())
}

func (s *Server) handleClearFaults(w http.ResponseWriter, _ *http.Request) {
	s.faults.clear()
	s.log.Info("simulator fault cleared")
	w.WriteHeader(http.StatusNoContent)
}
