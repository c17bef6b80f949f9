package upstreamsim

import (
	"strings"
	"testing"
)

func TestCountWords(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"   \n\t ", 0},
		{"one", 1},
		{"  two words  ", 2},
		{"tabs\tand\nnewlines\r\nand\vform\ffeeds", 6},
		{`{"city": "Paris"}`, 2},
		{"non\u00a0breaking space", 3},
		{"你好世界", 4},
		{"hello你好 world", 4},
		{"こんにちは", 5},
		{"한국어 text", 4},
		{"émigré café", 2},
		{"bad \xff utf8", 3},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := countWords(tt.in); got != tt.want {
				t.Errorf("countWords(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestPromptCache(t *testing.T) {
	const (
		sys = `{"role":"system","content":"You are a careful assistant."}` // 4+5
		u1  = `{"role":"user","content":"What is two plus two?"}`          // 4+5
		a1  = `{"role":"assistant","content":"Four."}`                     // 4+1
		u2  = `{"role":"user","content":"And three plus three?"}`          // 4+4
	)
	req := func(model, extra string, msgs ...string) string {
		return `{"model":"` + model + `"` + extra + `,"messages":[` + strings.Join(msgs, ",") + `]}`
	}
	const flash, pro = "deepseek-v4-flash", "deepseek-v4-pro"
	tools := `,"tools":` + weatherTools
	steps := []struct {
		name        string
		body        string
		reset       bool
		prompt, hit int
	}{
		{"first", req(flash, "", sys, u1), false, 18, 0},
		{"same again", req(flash, "", sys, u1), false, 18, 18},
		{"conversation goes on", req(flash, "", sys, u1, a1, u2), false, 31, 18},
		{"shared system prompt", req(flash, "", sys, u2), false, 17, 9},
		{"other model", req(pro, "", sys, u1), false, 18, 0},
		{"thinking does not change the key", req(flash, `,"thinking":{"type":"enabled"}`, sys, u1, a1, u2), false, 31, 31},
		{"tools change the key", req(flash, tools, sys, u1), false, weatherToolsTokens + 18, 0},
		{"tools counted in the hit", req(flash, tools, sys, u1, a1), false, weatherToolsTokens + 23, weatherToolsTokens + 18},
		{"different first message", req(flash, "", u1, sys), false, 18, 0},
		{"after reset", req(flash, "", sys, u1), true, 18, 0},
	}
	s, base := newSim(t, Config{})
	for _, st := range steps {
		// Steps share one simulator: each depends on the ones before.
		t.Run(st.name, func(t *testing.T) {
			if st.reset {
				s.Reset()
			}
			status, b := chat(t, base, st.body)
			if status != 200 {
				t.Fatalf("status %d: %s", status, b)
			}
			u := decodeCompletion(t, b).Usage
			checkUsage(t, u)
			if u.PromptTokens != st.prompt || u.PromptCacheHitTokens != st.hit {
				t.Errorf("prompt %d hit %d, want %d %d", u.PromptTokens, u.PromptCacheHitTokens, st.prompt, st.hit)
			}
		})
	}

	t.Run("disabled", func(t *testing.T) {
		_, base := newSim(t, Config{CacheEntries: -1})
		for range 2 {
			_, b := chat(t, base, req(flash, "", sys, u1))
			if u := decodeCompletion(t, b).Usage; u.PromptCacheHitTokens != 0 || u.PromptCacheMissTokens != 18 {
				t.Errorf("usage %+v", u)
			}
		}
	})
}

func TestPrefixCacheBounded(t *testing.T) {
	tests := []struct {
		entries, max int
	}{
		{64, 64},
		{1000, 1000},
		{1, cacheShards * 2}, // at least one entry per generation and shard
	}
	for _, tt := range tests {
		t.Run(itoa(tt.entries), func(t *testing.T) {
			c := newPrefixCache(tt.entries)
			const golden = 0x9e3779b97f4a7c15 // spreads keys over shards
			var last uint64
			for k := range uint64(100000) {
				last = k * golden
				c.testAndSet(last)
			}
			total := 0
			for i := range c.shards {
				total += len(c.shards[i].cur) + len(c.shards[i].old)
			}
			if total > tt.max {
				t.Errorf("%d entries kept, bound %d", total, tt.max)
			}
			// The most recent key is still known.
			if !c.testAndSet(last) {
				t.Error("most recent key forgotten")
			}
		})
	}
}
