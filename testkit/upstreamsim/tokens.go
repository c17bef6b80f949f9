package upstreamsim

import (
	"hash/maphash"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Token accounting constants; the package comment states the rules.
const (
	MessageOverheadTokens = 4
	ToolOverheadTokens    = 8
)

// countWords counts the tokens of s: maximal runs of non-whitespace, except
// that each CJK character is a token on its own.
func countWords(s string) int {
	n := 0
	in := false
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch c {
			case ' ', '\t', '\n', '\v', '\f', '\r':
				in = false
			default:
				if !in {
					n++
					in = true
				}
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case unicode.IsSpace(r):
			in = false
		case unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul):
			n++
			in = false
		default:
			if !in {
				n++
				in = true
			}
		}
	}
	return n
}

// messageTokens is what one input message costs.
func messageTokens(m *message) int {
	n := MessageOverheadTokens
	for _, p := range m.Content.parts {
		n += countWords(p)
	}
	if m.ReasoningContent != nil {
		n += countWords(*m.ReasoningContent)
	}
	for i := range m.ToolCalls {
		n += countWords(m.ToolCalls[i].Function.Name) + countWords(m.ToolCalls[i].Function.Arguments)
	}
	return n
}

// toolTokens is what one tool definition costs.
func toolTokens(t *tool) int {
	return ToolOverheadTokens + countWords(t.Function.Name) + countWords(t.Function.Description)
}

// promptUsage computes prompt tokens and the cache hit of req in the cache
// of account, and remembers its prefixes there. Prefix keys chain the
// account, the model, the tools and each message: one bounded cache holds
// every account's prefixes, and an account never hits another's.
func (s *Server) promptUsage(req *chatRequest, account string) (prompt, hit int) {
	c := s.cache
	var h maphash.Hash
	if c.enabled() {
		h.SetSeed(c.seed)
		writeField(&h, 'K', account)
		writeField(&h, 'M', req.Model)
	}
	for i := range req.Tools {
		t := &req.Tools[i]
		prompt += toolTokens(t)
		if c.enabled() {
			writeField(&h, 'T', t.Function.Name)
			writeField(&h, 'D', t.Function.Description)
			_, _ = h.Write(t.Function.Parameters)
			_ = h.WriteByte(0xff)
		}
	}
	for i := range req.Messages {
		m := &req.Messages[i]
		prompt += messageTokens(m)
		if !c.enabled() {
			continue
		}
		writeMessage(&h, m)
		if c.testAndSet(h.Sum64()) {
			hit = prompt
		}
	}
	return prompt, hit
}

// writeField hashes a tagged string. Decoded JSON strings are valid UTF-8,
// which never contains 0xff, so 0xff ends a field unambiguously.
func writeField(h *maphash.Hash, tag byte, s string) {
	_ = h.WriteByte(tag)
	_, _ = h.WriteString(s)
	_ = h.WriteByte(0xff)
}

func writeMessage(h *maphash.Hash, m *message) {
	writeField(h, 'r', m.Role)
	for _, p := range m.Content.parts {
		writeField(h, 'c', p)
	}
	if m.ReasoningContent != nil {
		writeField(h, 'R', *m.ReasoningContent)
	}
	for i := range m.ToolCalls {
		tc := &m.ToolCalls[i]
		writeField(h, 'i', tc.ID)
		writeField(h, 'f', tc.Function.Name)
		writeField(h, 'a', tc.Function.Arguments)
	}
	writeField(h, 't', m.ToolCallID)
	writeField(h, 'n', m.Name)
	_ = h.WriteByte(0xfe) // end of message
}

// cacheShards spreads the prompt cache's lock.
const cacheShards = 16

// prefixCache is a bounded set of prefix hashes. Each shard keeps two
// generations: lookups hit either, inserts go to the current one, and when
// the current one fills up it becomes the old one and the old one is dropped.
// That bounds memory at the configured entries and approximates LRU cheaply.
type prefixCache struct {
	seed     maphash.Seed
	perShard int // generation size; 0: disabled
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu       sync.Mutex
	cur, old map[uint64]struct{}
	_        [40]byte // keep shards on separate cache lines
}

func newPrefixCache(entries int) *prefixCache {
	c := &prefixCache{seed: maphash.MakeSeed()}
	if entries > 0 {
		c.perShard = max(1, entries/cacheShards/2)
	}
	c.reset()
	return c
}

func (c *prefixCache) enabled() bool { return c.perShard > 0 }

func (c *prefixCache) reset() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		sh.cur, sh.old = map[uint64]struct{}{}, nil
		sh.mu.Unlock()
	}
}

// testAndSet remembers key and reports whether it was already known.
func (c *prefixCache) testAndSet(key uint64) bool {
	sh := &c.shards[key%cacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.cur[key]; ok {
		return true
	}
	_, seen := sh.old[key]
	if len(sh.cur) >= c.perShard {
		sh.old, sh.cur = sh.cur, make(map[uint64]struct{}, c.perShard)
	}
	sh.cur[key] = struct{}{}
	return seen
}
