package proxy

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/testkit/upstreamsim"
)

// keyLog records which upstream key each chat request presented.
type keyLog struct {
	mu   sync.Mutex
	keys []string
}

func (l *keyLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chat/completions" {
			l.mu.Lock()
			l.keys = append(l.keys, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
			l.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (l *keyLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.keys
	l.keys = nil
	return out
}

// poolHandler is a handler in front of one simulator with four upstream
// keys (four accounts, four prompt caches) as a four-member pool.
func poolHandler(t *testing.T, affinity bool) (*Handler, *recorder, *keyLog) {
	t.Helper()
	keys := []string{"sk-up-1", "sk-up-2", "sk-up-3", "sk-up-4"}
	log := &keyLog{}
	sim := upstreamsim.New(upstreamsim.Config{APIKeys: keys, InstanceID: "pool"})
	ts := httptest.NewServer(log.wrap(sim))
	t.Cleanup(ts.Close)
	ms := make([]Member, len(keys))
	for i, k := range keys {
		ms[i] = Member{BaseURL: ts.URL, APIKey: k, Weight: 1}
	}
	cat, err := catalog.NewHolder("")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	return &Handler{
		Catalog: cat,
		Upstream: NewUpstream(UpstreamConfig{
			Members:        ms,
			ConnectTimeout: time.Second, FirstByteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, MaxConns: 4,
			Affinity: affinity,
		}),
		Pub: rec, Log: slog.New(slog.DiscardHandler),
		Instance: "test", MaxBody: 1 << 20, Now: time.Now,
	}, rec, log
}

// converse runs a conversation of turns turns as a client does, each
// request repeating the whole history, and returns its prompt and
// cache-hit tokens as metered.
func converse(t *testing.T, h *Handler, rec *recorder, conv, turns int) (prompt, hit int64) {
	t.Helper()
	msgs := []map[string]string{{"role": "system", "content": "You are a careful assistant. Conversation " + fmt.Sprint(conv) + "."}}
	for turn := range turns {
		msgs = append(msgs, map[string]string{"role": "user", "content": fmt.Sprintf("Question %d of conversation %d?", turn, conv)})
		body, _ := json.Marshal(map[string]any{"model": "deepseek-v4-flash", "messages": msgs})
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(string(body)))
		if err := h.Chat(w, r, Request{Key: &apikey.Record{ID: "client-key"}, Start: time.Now()}); err != nil {
			t.Fatalf("turn %d: %v", turn, err)
		}
		if w.Code != http.StatusOK {
			t.Fatalf("turn %d: status %d: %s", turn, w.Code, w.Body)
		}
		var resp struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || len(resp.Choices) != 1 {
			t.Fatalf("turn %d: answer %s: %v", turn, w.Body, err)
		}
		msgs = append(msgs, map[string]string{"role": "assistant", "content": resp.Choices[0].Message.Content})
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.evs) != turns {
		t.Fatalf("%d usage events for %d turns", len(rec.evs), turns)
	}
	for i, ev := range rec.evs {
		if i > 0 && ev.CacheHitTokens < rec.evs[i-1].PromptTokens && h.Upstream.cfg.Affinity {
			t.Errorf("turn %d: %d cache-hit tokens, want at least the previous turn's prompt (%d)", i, ev.CacheHitTokens, rec.evs[i-1].PromptTokens)
		}
		if ev.CacheHitTokens+ev.CacheMissTokens != ev.PromptTokens {
			t.Errorf("turn %d: hit %d + miss %d != prompt %d", i, ev.CacheHitTokens, ev.CacheMissTokens, ev.PromptTokens)
		}
		prompt += ev.PromptTokens
		hit += ev.CacheHitTokens
	}
	rec.evs = nil
	return prompt, hit
}

func TestAffinityConversationStaysOnOneMember(t *testing.T) {
	h, rec, log := poolHandler(t, true)
	used := map[string]bool{}
	var prompt, hit int64
	for conv := range 8 {
		p, c := converse(t, h, rec, conv, 5)
		prompt, hit = prompt+p, hit+c
		keys := log.take()
		if len(keys) != 5 {
			t.Fatalf("conversation %d: %d upstream requests, want 5", conv, len(keys))
		}
		for _, k := range keys[1:] {
			if k != keys[0] {
				t.Fatalf("conversation %d went to several upstream keys: %v", conv, keys)
			}
		}
		used[keys[0]] = true
	}
	if len(used) < 2 {
		t.Errorf("8 conversations all on %v: sessions are not spread over the pool", used)
	}
	t.Logf("affinity: %d of %d prompt tokens were cache hits", hit, prompt)

	// The same workload by round robin scatters each conversation and
	// loses most of the hits.
	rr, rrRec, rrLog := poolHandler(t, false)
	var rrPrompt, rrHit int64
	for conv := range 8 {
		p, c := converse(t, rr, rrRec, conv, 5)
		rrPrompt, rrHit = rrPrompt+p, rrHit+c
	}
	if keys := rrLog.take(); len(keys) != 40 {
		t.Fatalf("%d upstream requests, want 40", len(keys))
	}
	t.Logf("round robin: %d of %d prompt tokens were cache hits", rrHit, rrPrompt)
	if prompt != rrPrompt || hit <= rrHit {
		t.Errorf("affinity hit %d of %d tokens, round robin %d of %d: want the same prompts and more hits with affinity", hit, prompt, rrHit, rrPrompt)
	}
}

// TestAffinityRetryGoesToTheNextMember: a member that fails moves its
// session to other members for the retries, never back to one already
// tried, and the session stays home while its member is healthy.
func TestAffinityRetryGoesToTheNextMember(t *testing.T) {
	h, _, log := poolHandler(t, true)
	h.Upstream.cfg.Retries = 2
	send := func() int {
		t.Helper()
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions",
			strings.NewReader(`{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hello"}]}`))
		r.Header.Set(SessionHeader, "conversation-1")
		if err := h.Chat(w, r, Request{Key: &apikey.Record{ID: "client-key"}, Start: time.Now()}); err != nil {
			t.Fatalf("Chat: %v", err)
		}
		return w.Code
	}
	if code := send(); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	home := log.take()[0]
	// The simulator answers the next two requests 503: each retry goes to
	// a key not tried yet.
	base := strings.TrimSuffix(h.Upstream.pool.members[0].url, "/chat/completions")
	freq, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/_sim/faults", strings.NewReader(`{"status":503,"count":2}`))
	if err != nil {
		t.Fatal(err)
	}
	fault, err := http.DefaultClient.Do(freq)
	if err != nil {
		t.Fatal(err)
	}
	_ = fault.Body.Close()
	if code := send(); code != http.StatusOK {
		t.Fatalf("status %d after a retry", code)
	}
	keys := log.take()
	if len(keys) != 3 || keys[0] != home || keys[1] == home || keys[2] == home || keys[2] == keys[1] {
		t.Fatalf("attempts went to %v, want %s then two other keys", keys, home)
	}
	if send(); log.take()[0] != home {
		t.Errorf("the session left %s although its member is healthy", home)
	}
}
