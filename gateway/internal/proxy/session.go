package proxy

import (
	"net/http"

	"github.com/cespare/xxhash/v2"
)

// SessionHeader names a conversation for cache-aware routing: requests with
// the same value (from the same API key) go to the same upstream member, so
// they meet the prompt cache of the account that served the earlier turns.
const SessionHeader = "X-Session-Id"

// Session sources, chained into the session id so that a client's name of
// a conversation and the hash of an opening are told apart.
const (
	sessionNamed   = 0x6e616d6564 // SessionHeader, prompt_cache_key or user
	sessionOpening = 0x6f70656e   // the system prompt and first user message
)

// sessionOf identifies the conversation req belongs to, within the client
// key keyID (two keys never share a session), in this order: the
// SessionHeader, the body's prompt_cache_key, its user, else a hash of the
// conversation's opening, which every later turn of it repeats verbatim.
// It hashes what prepare already located in the body: no parse, no
// allocation.
func sessionOf(keyID string, h http.Header, req *chatRequest) uint64 {
	id := xxhash.Sum64String(keyID)
	// Indexed, not Get: SessionHeader is already in canonical form.
	if v := h[SessionHeader]; len(v) > 0 && v[0] != "" {
		return chain(id, sessionNamed, xxhash.Sum64String(v[0]))
	}
	if len(req.sessionKey) > 0 {
		return chain(id, sessionNamed, xxhash.Sum64(req.sessionKey))
	}
	id = chain(id, sessionOpening, uint64(len(req.opening)))
	for i := range req.opening {
		m := &req.opening[i]
		var role uint64
		if m.Role != nil {
			role = xxhash.Sum64String(*m.Role)
		}
		id = chain(id, role, xxhash.Sum64(m.Content))
	}
	return id
}

// chain folds a and b into the hash h, in order: one-shot hashes of whole
// fields chained this way cost a few nanoseconds each, where a streaming
// digest fed field by field costs more than the hashing itself.
func chain(h, a, b uint64) uint64 {
	return mix64(mix64(h^a)+b) * 0x9e3779b97f4a7c15
}

// openingOf returns the opening of a conversation: its messages up to the
// first user message included (system prompts and the first question), or
// all of them when none is from the user.
func openingOf(msgs []message) []message {
	for i := range msgs {
		if msgs[i].Role != nil && *msgs[i].Role == "user" {
			return msgs[:i+1]
		}
	}
	return msgs
}
