package upstreamsim

import (
	"net/http"
	"testing"
)

// TestPromptCachePerKey: each upstream key is an account with a prompt cache
// of its own; a request hits only the prefixes its own key sent before, and
// the hit is the tokens of the longest such prefix.
func TestPromptCachePerKey(t *testing.T) {
	_, base := newSim(t, Config{APIKey: "sk-a", APIKeys: []string{"sk-b"}})
	const (
		sys   = `{"role":"system","content":"You are terse."}` // 4 + 3 tokens
		turn1 = `{"role":"user","content":"one two"}`          // 4 + 2
		reply = `{"role":"assistant","content":"three"}`       // 4 + 1
		turn2 = `{"role":"user","content":"four"}`             // 4 + 1
	)
	first := `{"model":"deepseek-v4-flash","messages":[` + sys + `,` + turn1 + `]}`
	second := `{"model":"deepseek-v4-flash","messages":[` + sys + `,` + turn1 + `,` + reply + `,` + turn2 + `]}`
	other := `{"model":"deepseek-v4-flash","messages":[` + sys + `,{"role":"user","content":"else"}]}`
	steps := []struct {
		name      string
		key, body string
		prompt    int
		hit       int
	}{
		{"first turn on a misses", "sk-a", first, 13, 0},
		{"second turn on a hits the first turn", "sk-a", second, 23, 13},
		{"same second turn on b misses: another account", "sk-b", second, 23, 0},
		{"b now has it", "sk-b", second, 23, 23},
		{"another conversation on a hits the system prompt only", "sk-a", other, 12, 7},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			status, body := chat(t, base, st.body, "Authorization", "Bearer "+st.key)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			u := decodeCompletion(t, body).Usage
			checkUsage(t, u)
			if u.PromptTokens != st.prompt || u.PromptCacheHitTokens != st.hit || u.PromptTokensDetails.CachedTokens != st.hit {
				t.Errorf("prompt %d hit %d cached %d, want prompt %d hit %d",
					u.PromptTokens, u.PromptCacheHitTokens, u.PromptTokensDetails.CachedTokens, st.prompt, st.hit)
			}
		})
	}
	t.Run("an unknown key is refused", func(t *testing.T) {
		if status, _ := chat(t, base, first, "Authorization", "Bearer sk-c"); status != http.StatusUnauthorized {
			t.Errorf("status %d, want 401", status)
		}
	})
}

// TestPromptCacheAccountsWithoutAuth: without keys configured every
// distinct bearer key (or none) is still an account of its own.
func TestPromptCacheAccountsWithoutAuth(t *testing.T) {
	_, base := newSim(t, Config{})
	body := `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hello"}]}`
	hit := func(header ...string) int {
		status, b := chat(t, base, body, header...)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, b)
		}
		return decodeCompletion(t, b).Usage.PromptCacheHitTokens
	}
	if h := hit("Authorization", "Bearer x"); h != 0 {
		t.Errorf("first request hit %d", h)
	}
	if h := hit("Authorization", "Bearer y"); h != 0 {
		t.Errorf("another key hit %d: caches are per key", h)
	}
	if h := hit("Authorization", "Bearer x"); h != 5 {
		t.Errorf("same key hit %d, want 5", h)
	}
}
