package httpapi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/qyai/qyai/admin/internal/adminauth"
	billingredis "github.com/qyai/qyai/admin/internal/billing/redis"
	"github.com/qyai/qyai/admin/internal/httpapi"
)

// lateLimiter forwards to a limiter made once the env's Redis is up.
type lateLimiter struct{ l *billingredis.Limiter }

func (l *lateLimiter) Allow(ctx context.Context, keyID string) (time.Duration, bool, error) {
	return l.l.Allow(ctx, keyID)
}

func (e *env) get(t *testing.T, path, auth string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", e.url+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestBillingRateLimit: a key over its billing requests per minute gets 429
// with Retry-After on both billing endpoints (they share the budget);
// another key is not affected; the next minute the key is served again.
func TestBillingRateLimit(t *testing.T) {
	lim := &lateLimiter{}
	e := newEnvWith(t, func(d *httpapi.Deps) { d.BillingLimit = lim })
	at := now.Add(15 * time.Second) // 45 s before the next minute
	lim.l = billingredis.NewLimiter(e.rdb, billingredis.Billing, 3, timeout, func() time.Time { return at })
	a := e.createKey(t, `{"name":"a","tier":"basic"}`)
	b := e.createKey(t, `{"name":"b","tier":"basic"}`)

	for i, path := range []string{"/v1/dashboard/billing/usage", "/v1/dashboard/billing/daily", "/v1/dashboard/billing/usage"} {
		if code, _, body := e.get(t, path, "Bearer "+a.Key); code != http.StatusOK {
			t.Fatalf("request %d within the limit: %d %s", i, code, body)
		}
	}
	for _, path := range []string{"/v1/dashboard/billing/usage", "/v1/dashboard/billing/daily"} {
		code, h, body := e.get(t, path, "Bearer "+a.Key)
		expectError(t, code, body, http.StatusTooManyRequests, "rate_limit_error", "")
		if ra := h.Get("Retry-After"); ra != "45" {
			t.Errorf("%s: Retry-After %q, want 45 (the next minute)", path, ra)
		}
	}
	if code, _, body := e.get(t, "/v1/dashboard/billing/usage", "Bearer "+b.Key); code != http.StatusOK {
		t.Errorf("another key: %d %s", code, body)
	}
	// An unknown key is refused as before, without taking a budget.
	code, _, body := e.get(t, "/v1/dashboard/billing/usage", "Bearer sk-unknown")
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")

	at = at.Add(45 * time.Second)
	if code, _, body := e.get(t, "/v1/dashboard/billing/usage", "Bearer "+a.Key); code != http.StatusOK {
		t.Errorf("the next minute: %d %s", code, body)
	}
}

// TestAdminNotLockedOut: many wrong tokens from one address (all clients
// share the load balancer's) block that address's wrong tokens, but an
// operator's right token from the same address still succeeds.
func TestAdminNotLockedOut(t *testing.T) {
	e := newEnvWith(t, func(d *httpapi.Deps) {
		d.AuthFailures = adminauth.NewLimiter(5, time.Minute, func() time.Time { return now })
	})
	for i := range 50 {
		var buf [16]byte
		_, _ = rand.Read(buf[:])
		code, _, _ := e.get(t, "/admin/v1/keys", "Bearer "+hex.EncodeToString(buf[:]))
		want := http.StatusUnauthorized
		if i >= 5 {
			want = http.StatusTooManyRequests
		}
		if code != want {
			t.Fatalf("wrong token %d: %d, want %d", i, code, want)
		}
	}
	code, h, _ := e.get(t, "/admin/v1/keys", "Bearer wrong")
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("wrong token from the blocked address: %d, Retry-After %q; want 429 with Retry-After", code, h.Get("Retry-After"))
	}
	for _, tok := range []string{adminToken, aliceToken} {
		if code, _, b := e.get(t, "/admin/v1/keys", "Bearer "+tok); code != http.StatusOK {
			t.Errorf("right token from the blocked address: %d %s, want 200", code, b)
		}
	}
}
