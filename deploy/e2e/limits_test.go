package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// chat sends one small chat completion to a gateway.
func chat(t *testing.T, base, key, content string) (int, http.Header, string) {
	t.Helper()
	body := `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"` + content + `"}]}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("chat: %v", err)
		return 0, nil, ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// burst sends n requests at once, spread over the gateways, and counts
// statuses and 429 codes.
func burst(t *testing.T, s *stack, key string, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	out := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, hdr, body := chat(t, s.gatewayURLs[i%len(s.gatewayURLs)], key, fmt.Sprintf("burst %d", i))
			k := fmt.Sprint(code)
			if code == 429 {
				switch {
				case strings.Contains(body, `"code":"rate_limit_exceeded"`):
					k = "429 rate_limit_exceeded"
				case strings.Contains(body, `"code":"insufficient_quota"`):
					k = "429 insufficient_quota"
				}
				if hdr.Get("Retry-After") == "" {
					t.Errorf("429 without retry-after")
				}
			}
			if code != 0 && (hdr.Get("X-Ratelimit-Limit-Requests") == "" || hdr.Get("X-Ratelimit-Remaining-Requests") == "" || hdr.Get("X-Ratelimit-Reset-Requests") == "") {
				t.Errorf("status %d without x-ratelimit headers", code)
			}
			mu.Lock()
			out[k]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// checkLimitsExact: a key with RPM 30 gets exactly 30 of 200 concurrent
// requests spread over s's gateways, and one with a monthly limit of 50 exactly
// 50 of 120 (the upstream sees 50). It returns the monthly key; where names the
// setup in the messages.
func checkLimitsExact(t *testing.T, s *stack, where string) createdKey {
	t.Helper()
	rpmKey := s.createKey(t, `{"name":"rpm30","tier":"pro"}`)
	got := burst(t, s, rpmKey.Key, 200)
	if got["200"] != 30 || got["429 rate_limit_exceeded"] != 170 {
		t.Errorf("RPM 30 across %s: %v, want exactly 30 x 200 and 170 x 429 rate_limit_exceeded", where, got)
	}
	t.Logf("RPM 30, 200 concurrent requests over %s: %v", where, got)

	before := s.simStats(t).Requests
	quotaKey := s.createKey(t, `{"name":"month50","tier":"enterprise","rpm":1000,"monthly_limit":50}`)
	got = burst(t, s, quotaKey.Key, 120)
	reached := s.simStats(t).Requests - before
	if got["200"] != 50 || got["429 insufficient_quota"] != 70 || reached != 50 {
		t.Errorf("monthly limit 50 across %s: %v, upstream reached %d times; want exactly 50", where, got, reached)
	}
	t.Logf("monthly limit 50, 120 concurrent requests over %s: %v, upstream reached %d times", where, got, reached)
	return quotaKey
}

// TestLimitsExactAcrossThreeGateways: three gateway processes share one
// Redis; the limits hold for all of them together, exactly.
func TestLimitsExactAcrossThreeGateways(t *testing.T) {
	s := startStack(t, 3)
	quotaKey := checkLimitsExact(t, s, "3 gateways")

	// Tokens per minute: once the last minute's tokens reach the key's TPM,
	// requests are refused with rate_limit_exceeded until the window moves.
	tpmKey := s.createKey(t, `{"name":"tpm50","tier":"enterprise","tpm":50}`)
	refused := false
	for i := 0; i < 20 && !refused; i++ {
		code, hdr, body := chat(t, s.gatewayURLs[i%3], tpmKey.Key, fmt.Sprintf("tokens %d", i))
		if hdr.Get("X-Ratelimit-Limit-Tokens") != "50" {
			t.Fatalf("x-ratelimit-limit-tokens = %q", hdr.Get("X-Ratelimit-Limit-Tokens"))
		}
		switch {
		case code == 429 && strings.Contains(body, "Rate limit reached for tokens") && strings.Contains(body, `"code":"rate_limit_exceeded"`):
			refused = true
		case code != 200:
			t.Fatalf("request %d: %d %s", i, code, body)
		}
		time.Sleep(50 * time.Millisecond) // tokens are counted after each response, off the request path
	}
	if !refused {
		t.Error("a key with tpm 50 was never refused in 20 requests of ~25 tokens")
	}

	// Billing agrees with enforcement.
	var bu billingUsage
	getJSON(t, s.gatewayURLs[1]+"/v1/dashboard/billing/usage", quotaKey.Key, &bu)
	if bu.MonthlyRequests != 50 || bu.MonthlyLimit != 50 || bu.Remaining != 0 || bu.UsagePercent != 100 {
		t.Errorf("billing after the quota was used up: %+v", bu)
	}
}

// TestRevokeAndRotateReachEveryReplicaWithinOneSecond warms every
// gateway's key cache (30 s TTL), then revokes or rotates through admin,
// or regenerates as the key holder at a gateway: every replica must refuse
// the old key within a second.
func TestRevokeAndRotateReachEveryReplicaWithinOneSecond(t *testing.T) {
	s := startStack(t, 3)
	admin := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, s.adminURL+path, nil)
		req.Header.Set("Authorization", "Bearer "+s.adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	warm := func(key string) {
		for _, g := range s.gatewayURLs {
			if code, _, body := chat(t, g, key, "warm"); code != 200 {
				t.Fatalf("warm-up on %s: %d %s", g, code, body)
			}
		}
	}

	revoked := s.createKey(t, `{"name":"to-revoke","tier":"enterprise"}`)
	warm(revoked.Key)
	if code, body := admin(http.MethodDelete, "/admin/v1/keys/"+revoked.ID); code != 204 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	refusedEverywhereWithin(t, s.gatewayURLs, revoked.Key, time.Now(), time.Second)

	rotated := s.createKey(t, `{"name":"to-rotate","tier":"enterprise"}`)
	warm(rotated.Key)
	code, body := admin(http.MethodPost, "/admin/v1/keys/"+rotated.ID+"/rotate")
	if code != 200 {
		t.Fatalf("rotate: %d %s", code, body)
	}
	refusedEverywhereWithin(t, s.gatewayURLs, rotated.Key, time.Now(), time.Second)
	var nk createdKey
	if err := jsonUnmarshal(body, &nk); err != nil || nk.Key == "" || nk.Key == rotated.Key {
		t.Fatalf("rotate answer %s", body)
	}
	for _, g := range s.gatewayURLs {
		if code, _, b := chat(t, g, nk.Key, "new key"); code != 200 {
			t.Errorf("%s refuses the rotated key: %d %s", g, code, b)
		}
	}

	// The key holder regenerates the key at a gateway's base URL, with the
	// key itself: the same bound on every replica, the same key id.
	held := s.createKey(t, `{"name":"to-regenerate","tier":"enterprise"}`)
	warm(held.Key)
	code, hdr, body := regenerate(t, s.gatewayURLs[1], held.Key)
	answered := time.Now()
	if code != 200 || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("regenerate: %d %s", code, body)
	}
	refusedEverywhereWithin(t, s.gatewayURLs, held.Key, answered, time.Second)
	var rk struct {
		Key       string `json:"key"`
		KeyPrefix string `json:"key_prefix"`
	}
	if err := jsonUnmarshal(body, &rk); err != nil || !strings.HasPrefix(rk.Key, "sk-") || rk.Key == held.Key {
		t.Fatalf("regenerate answer: %v", err)
	}
	for _, g := range s.gatewayURLs {
		if code, _, b := chat(t, g, rk.Key, "regenerated"); code != 200 {
			t.Errorf("%s refuses the regenerated key: %d %s", g, code, b)
		}
	}
	// Usage before and after stays with the key: the warm-up requests
	// and the ones with the new key count together (a poll of the old key
	// answered before the change reached its gateway counts too).
	var bu billingUsage
	getJSON(t, s.gatewayURLs[len(s.gatewayURLs)-1]+"/v1/dashboard/billing/usage", rk.Key, &bu)
	if n := int64(2 * len(s.gatewayURLs)); bu.MonthlyRequests < n || bu.KeyPrefix != rk.KeyPrefix {
		t.Errorf("billing with the regenerated key: %d requests (want at least %d), prefix %q (want %q)", bu.MonthlyRequests, n, bu.KeyPrefix, rk.KeyPrefix)
	}
}

// regenerate asks the gateway at base to regenerate key.
func regenerate(t *testing.T, base, key string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/v1/dashboard/key/regenerate", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("regenerate: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// refusedEverywhereWithin polls every gateway until it refuses key with
// 401, and fails the test when one still accepts it limit after since (when
// the change was answered).
func refusedEverywhereWithin(t *testing.T, gateways []string, key string, since time.Time, limit time.Duration) {
	t.Helper()
	for _, g := range gateways {
		for {
			code, _, _ := chat(t, g, key, "after")
			if code == 401 {
				break
			}
			if time.Since(since) > limit {
				t.Errorf("%s still answers %d to the old key %v after the change", g, code, time.Since(since))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
