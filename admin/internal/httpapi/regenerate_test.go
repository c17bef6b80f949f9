package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	auditredis "github.com/qyai/qyai/admin/internal/audit/redis"
	billingredis "github.com/qyai/qyai/admin/internal/billing/redis"
	"github.com/qyai/qyai/admin/internal/httpapi"
	"github.com/qyai/qyai/pkg/apikey"
)

const regeneratePath = "/v1/dashboard/key/regenerate"

// regenerate asks for a new key with key; it returns the status, the body
// and, on 200, the answer decoded.
func (e *env) regenerate(t *testing.T, key string) (int, http.Header, []byte, regenerated) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+regeneratePath, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("regenerate: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	var out regenerated
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("decode regenerate answer %s: %v", body, err)
		}
	}
	return resp.StatusCode, resp.Header, body, out
}

type regenerated struct {
	Key       string `json:"key"`
	KeyPrefix string `json:"key_prefix"`
}

// TestRegenerate: the holder of a key replaces it with the key itself. The
// answer holds only the new key and its prefix; the old key stops working
// (on billing and for regenerating again) and its auth entry is gone; the
// id, limits and status stay, so usage stays attributed to the same key;
// the change is audited with the key holder as actor; keys never reach the
// logs.
func TestRegenerate(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	k := e.createKey(t, `{"name":"holder","tier":"pro","rpm":7}`)

	code, h, body, got := e.regenerate(t, k.Key)
	if code != http.StatusOK {
		t.Fatalf("regenerate: %d %s", code, body)
	}
	if names := fieldNames(t, body); !sameSet(names, []string{"key", "key_prefix"}) {
		t.Errorf("answer fields %v, want key and key_prefix", names)
	}
	if apikey.CheckFormat(got.Key) != nil || got.Key == k.Key || got.KeyPrefix != apikey.DisplayPrefix(got.Key) {
		t.Fatalf("answer key_prefix %q with a new key that is malformed or the old one", got.KeyPrefix)
	}
	if cc := h.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}

	// The old key is refused everywhere admin checks keys; the new one works.
	code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+k.Key, "")
	expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
	code, _, body, _ = e.regenerate(t, k.Key)
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
	if code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+got.Key, ""); code != http.StatusOK {
		t.Fatalf("billing with the regenerated key: %d %s", code, b)
	}
	if liveAuthEntry(t, e, apikey.Hash(pepper, k.Key)) {
		t.Error("the old key's auth entry survives regeneration")
	}
	if !liveAuthEntry(t, e, apikey.Hash(pepper, got.Key)) {
		t.Error("no auth entry for the regenerated key")
	}

	// Same key id, limits and status: billing history stays with it.
	code, b = e.admin(t, "GET", "/admin/v1/keys/"+k.ID, "")
	if code != http.StatusOK || fieldString(t, b, "key_prefix") != got.KeyPrefix || fieldString(t, b, "status") != "active" ||
		fieldString(t, b, "name") != "holder" || !strings.Contains(string(b), `"rpm":7`) {
		t.Errorf("the key after regeneration: %d %s", code, b)
	}

	// Audited: action regenerate, the key holder as actor, hash replaced.
	pending, err := auditredis.New(e.rdb, timeout).Oldest(ctx, 100)
	if err != nil || len(pending) != 2 {
		t.Fatalf("audit entries: %d (%v), want create and regenerate", len(pending), err)
	}
	en := pending[1].Entry
	if en.Action != "regenerate" || en.Actor != "key:"+k.ID || en.KeyID != k.ID || en.Revision != 2 ||
		en.Before == nil || en.Before.Hash != apikey.Hash(pepper, k.Key) || en.After.Hash != apikey.Hash(pepper, got.Key) {
		t.Errorf("audit entry %s by %s of %s rev %d", en.Action, en.Actor, en.KeyID, en.Revision)
	}

	logs := e.logs.String()
	if !strings.Contains(logs, "key regenerated") {
		t.Error("no log line for the regeneration")
	}
	if strings.Contains(logs, k.Key) || strings.Contains(logs, got.Key) {
		t.Error("a key reached the logs")
	}
}

// TestRegenerateRefused: no key, a malformed, unknown, disabled or revoked
// key get 401 in the OpenAI shape; nothing changes.
func TestRegenerateRefused(t *testing.T) {
	e := newEnv(t)
	disabled := e.createKey(t, `{"name":"d","tier":"basic"}`)
	revoked := e.createKey(t, `{"name":"r","tier":"basic"}`)
	if code, b := e.admin(t, "POST", "/admin/v1/keys/"+disabled.ID+"/disable", ""); code != http.StatusOK {
		t.Fatalf("disable: %d %s", code, b)
	}
	if code, b := e.admin(t, "DELETE", "/admin/v1/keys/"+revoked.ID, ""); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, b)
	}
	for _, tc := range []struct{ name, key string }{
		{"no key", ""},
		{"malformed", "not-a-key"},
		{"unknown", "sk-" + strings.Repeat("a", 48)},
		{"disabled", disabled.Key},
		{"revoked", revoked.Key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body, _ := e.regenerate(t, tc.key)
			expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
		})
	}
	code, b := e.admin(t, "GET", "/admin/v1/keys/"+disabled.ID, "")
	if code != http.StatusOK || fieldString(t, b, "key_prefix") != disabled.KeyPrefix {
		t.Errorf("the disabled key changed: %s", b)
	}
	code, b = e.do(t, "GET", regeneratePath, "Bearer "+disabled.Key, "")
	expectError(t, code, b, http.StatusMethodNotAllowed, "invalid_request_error", "")
}

// TestRegenerateRateLimit: a key may regenerate REGENERATE_RPM times a
// minute, counted by key id, so the new keys share the old one's budget;
// beyond it 429 rate_limit_error with Retry-After, and the key presented
// keeps working; another key is not affected; the next minute it may again.
func TestRegenerateRateLimit(t *testing.T) {
	lim := &lateLimiter{}
	e := newEnvWith(t, func(d *httpapi.Deps) { d.RegenerateLimit = lim })
	at := now.Add(20 * time.Second) // 40 s before the next minute
	lim.l = billingredis.NewLimiter(e.rdb, billingredis.Regenerate, 2, timeout, func() time.Time { return at })
	a := e.createKey(t, `{"name":"a","tier":"basic"}`)
	b := e.createKey(t, `{"name":"b","tier":"basic"}`)

	key := a.Key
	for i := range 2 {
		code, _, body, got := e.regenerate(t, key)
		if code != http.StatusOK {
			t.Fatalf("regeneration %d within the limit: %d %s", i, code, body)
		}
		key = got.Key
	}
	code, h, body, _ := e.regenerate(t, key)
	expectError(t, code, body, http.StatusTooManyRequests, "rate_limit_error", "")
	if ra := h.Get("Retry-After"); ra != "40" {
		t.Errorf("Retry-After %q, want 40 (the next minute)", ra)
	}
	if !strings.Contains(string(body), `"code":"rate_limit_exceeded"`) {
		t.Errorf("429 body %s lacks code rate_limit_exceeded", body)
	}
	if code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+key, ""); code != http.StatusOK {
		t.Errorf("the key refused a regeneration stops working: %d %s", code, b)
	}
	if code, _, body, _ := e.regenerate(t, b.Key); code != http.StatusOK {
		t.Errorf("another key: %d %s", code, body)
	}
	// An unknown key is refused as before, without taking a budget.
	code, _, body, _ = e.regenerate(t, "sk-"+strings.Repeat("b", 48))
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")

	at = at.Add(40 * time.Second)
	if code, _, body, _ := e.regenerate(t, key); code != http.StatusOK {
		t.Errorf("the next minute: %d %s", code, body)
	}
}

// TestRegenerateConcurrent: the same key regenerated by several requests at
// once yields exactly one new key; the others are refused as the old key
// no longer proves anything once the first one committed.
func TestRegenerateConcurrent(t *testing.T) {
	e := newEnv(t)
	k := e.createKey(t, `{"name":"race","tier":"basic"}`)
	const n = 6
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
		keys  []string
	)
	for range n {
		wg.Go(func() {
			code, _, _, got := e.regenerate(t, k.Key)
			mu.Lock()
			defer mu.Unlock()
			codes[code]++
			if code == http.StatusOK {
				keys = append(keys, got.Key)
			}
		})
	}
	wg.Wait()
	if codes[http.StatusOK] != 1 || codes[http.StatusUnauthorized] != n-1 {
		t.Fatalf("statuses %v, want one 200 and %d 401", codes, n-1)
	}
	if code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+keys[0], ""); code != http.StatusOK {
		t.Errorf("the one regenerated key: %d %s", code, b)
	}
}

// TestRegenerateRacesOperatorRotate: a key holder's regenerate and an
// operator's rotate of the same key at once. Whatever the order, exactly one
// key works afterwards, and it is the one the last committed change issued:
// a regenerate that lost the race is refused (401), never a second live key.
func TestRegenerateRacesOperatorRotate(t *testing.T) {
	e := newEnv(t)
	for round := range 5 {
		k := e.createKey(t, `{"name":"race","tier":"basic"}`)
		var (
			wg        sync.WaitGroup
			regenCode int
			regenKey  string
			rotCode   int
			rotBody   []byte
		)
		wg.Go(func() {
			code, _, _, got := e.regenerate(t, k.Key)
			regenCode, regenKey = code, got.Key
		})
		wg.Go(func() { rotCode, rotBody = e.admin(t, "POST", "/admin/v1/keys/"+k.ID+"/rotate", "") })
		wg.Wait()
		if rotCode != http.StatusOK {
			t.Fatalf("round %d: rotate %d %s", round, rotCode, rotBody)
		}
		if regenCode != http.StatusOK && regenCode != http.StatusUnauthorized {
			t.Fatalf("round %d: regenerate %d, want 200 or 401", round, regenCode)
		}
		live := 0
		for _, key := range []string{k.Key, regenKey, fieldString(t, rotBody, "key")} {
			if key != "" && liveAuthEntry(t, e, apikey.Hash(pepper, key)) {
				live++
			}
		}
		if live != 1 {
			t.Errorf("round %d (regenerate %d): %d live keys, want exactly 1", round, regenCode, live)
		}
		code, b := e.admin(t, "GET", "/admin/v1/keys/"+k.ID, "")
		prefix := fieldString(t, b, "key_prefix")
		rotPrefix := fieldString(t, rotBody, "key_prefix")
		if code != http.StatusOK || (prefix != rotPrefix && (regenKey == "" || prefix != apikey.DisplayPrefix(regenKey))) {
			t.Errorf("round %d: the key shows prefix %q, issued neither by rotate nor regenerate", round, prefix)
		}
	}
}
