package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/pkg/apikey"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (any of 127.0.0.0/8 on Linux), as a client at another address.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func (h *harness) postFrom(t *testing.T, c *http.Client, key string) result {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}

// TestAuthFailureLimit: an address that sent AUTH_FAIL_LIMIT unknown keys
// gets 429 with Retry-After for its next uncached key, without Redis being
// asked; paying keys from other addresses, and a cached paying key from
// the same address (say behind the same proxy), keep working.
func TestAuthFailureLimit(t *testing.T) {
	h := startGateway(t, func(c *config.Config) {
		c.AuthFailLimit = 5
		c.AuthFailWindow = time.Hour // refills one failure per 12 minutes: none during the test
	})
	attacker := clientFrom(t, "127.0.0.2")
	paying := h.addKey(t, "paying")
	if r := h.post(t, paying, `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`); r.status != http.StatusOK {
		t.Fatalf("paying key before the attack: %d %s", r.status, r.body)
	}
	for i := range 5 {
		key, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if r := h.postFrom(t, attacker, key); r.status != http.StatusUnauthorized {
			t.Fatalf("unknown key %d: %d %s, want 401", i, r.status, r.body)
		}
	}
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	r := h.postFrom(t, attacker, key)
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("unknown key over the limit: %d %s, want 429", r.status, r.body)
	}
	if secs, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || secs < 1 {
		t.Errorf("Retry-After = %q, want a positive number of seconds", r.header.Get("Retry-After"))
	}
	if typ, _, _ := errorOf(t, r.body); typ != "rate_limit_error" {
		t.Errorf("error type %q, want rate_limit_error (body %s)", typ, r.body)
	}
	if !strings.Contains(r.body, `"code":"too_many_failed_attempts"`) {
		t.Errorf("body %s lacks code too_many_failed_attempts", r.body)
	}

	// Another address, with a key never seen (so Redis is asked).
	fresh := h.addKey(t, "fresh")
	if r := h.postFrom(t, clientFrom(t, "127.0.0.3"), fresh); r.status != http.StatusOK {
		t.Errorf("uncached paying key from another address: %d %s", r.status, r.body)
	}
	if r := h.post(t, paying, `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`); r.status != http.StatusOK {
		t.Errorf("paying key from another address: %d %s", r.status, r.body)
	}
	// The blocked address itself: a cached paying key is not refused.
	if r := h.postFrom(t, attacker, paying); r.status != http.StatusOK {
		t.Errorf("cached paying key from the blocked address: %d %s", r.status, r.body)
	}
}

// TestAuthFailureLimitBilling: keys that admin refuses on the forwarded
// billing endpoint count against the address too; over the limit the
// gateway answers 429 without asking admin.
func TestAuthFailureLimitBilling(t *testing.T) {
	var asked atomic.Int64
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"message":"Invalid API key provided","type":"authentication_error","param":null,"code":null}}`))
	}))
	t.Cleanup(admin.Close)
	h := startGateway(t, func(c *config.Config) {
		c.AdminURL = admin.URL
		c.AuthFailLimit = 3
		c.AuthFailWindow = time.Hour
	})
	attacker := clientFrom(t, "127.0.0.2")
	get := func(c *http.Client) (int, http.Header) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, h.url+"/v1/dashboard/billing/usage", nil)
		req.Header.Set("Authorization", "Bearer sk-guess")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	for i := range 3 {
		if code, _ := get(attacker); code != http.StatusUnauthorized {
			t.Fatalf("billing request %d: %d, want 401 from admin", i, code)
		}
	}
	code, hdr := get(attacker)
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
		t.Fatalf("over the limit: %d, Retry-After %q; want 429 with Retry-After", code, hdr.Get("Retry-After"))
	}
	if n := asked.Load(); n != 3 {
		t.Errorf("admin was asked %d times, want 3 (not for the refused request)", n)
	}
	// The budget is shared with the chat endpoint.
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if r := h.postFrom(t, attacker, key); r.status != http.StatusTooManyRequests {
		t.Errorf("chat with an unknown key from the blocked address: %d, want 429", r.status)
	}
	if code, _ := get(http.DefaultClient); code != http.StatusUnauthorized {
		t.Errorf("another address: %d, want admin's 401", code)
	}
}
