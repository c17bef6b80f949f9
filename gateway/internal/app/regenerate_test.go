package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/qyai/qyai/gateway/internal/config"
)

// TestRegenerateForwarded: POST /v1/dashboard/key/regenerate at the
// gateway's base URL reaches admin with the caller's Authorization, and
// admin's answers come back as they are: the new key with Cache-Control,
// and a 429 with its Retry-After. (admin's own behaviour, and the old key
// refused by every gateway, are tested in admin and deploy/e2e against the
// real services; this stand-in only records what the gateway forwards.)
func TestRegenerateForwarded(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		n := len(seen)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n > 1 {
			w.Header().Set("Retry-After", "42")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"error":{"message":"Rate limit reached for key regenerations","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}`))
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(`{"key":"sk-new","key_prefix":"sk-new..."}`))
	}))
	t.Cleanup(admin.Close)
	h := startGateway(t, func(c *config.Config) { c.AdminURL = admin.URL })
	post := func() (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, h.url+"/v1/dashboard/key/regenerate", nil)
		req.Header.Set("Authorization", "Bearer sk-current")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	code, hdr, body := post()
	if code != http.StatusOK || body != `{"key":"sk-new","key_prefix":"sk-new..."}` || hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("regenerate through the gateway: %d %q %s", code, hdr.Get("Cache-Control"), body)
	}
	code, hdr, body = post()
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "42" || !strings.Contains(body, `"rate_limit_error"`) {
		t.Errorf("admin's 429 through the gateway: %d Retry-After %q %s", code, hdr.Get("Retry-After"), body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != "POST /v1/dashboard/key/regenerate Bearer sk-current" {
		t.Errorf("admin received %q", seen)
	}
	// GET is not a route: the usual 405, admin not asked.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, h.url+"/v1/dashboard/key/regenerate", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || len(seen) != 2 {
		t.Errorf("GET: %d (admin asked %d times)", resp.StatusCode, len(seen))
	}
}
