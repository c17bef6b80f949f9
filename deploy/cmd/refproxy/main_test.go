package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHandler checks that requests reach the upstream with their path,
// query and Authorization header unchanged, and that /healthz does not.
func TestHandler(t *testing.T) {
	var hits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("X-Seen-Auth", r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.RequestURI())
	}))
	t.Cleanup(upstream.Close)
	target, err := url.Parse(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httptest.NewServer(newHandler(target, log.New(io.Discard, "", 0)))
	t.Cleanup(proxy.Close)

	for _, path := range []string{"/v1/chat/completions", "/chat/completions?x=1", "//a/../b"} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, proxy.URL+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer sk-test")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusTeapot || string(body) != "POST "+path {
			t.Errorf("%s: got %d %q, want 418 %q", path, resp.StatusCode, body, "POST "+path)
		}
		if got := resp.Header.Get("X-Seen-Auth"); got != "Bearer sk-test" {
			t.Errorf("%s: upstream saw Authorization %q", path, got)
		}
	}
	before := hits.Load()
	resp, err := http.Get(proxy.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || hits.Load() != before {
		t.Errorf("/healthz: status %d, upstream hits %d -> %d; want 200 answered by refproxy", resp.StatusCode, before, hits.Load())
	}
}

func TestRunConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{name: "no addr", env: map[string]string{"REFPROXY_UPSTREAM": "http://127.0.0.1:1"}, wantErr: "REFPROXY_ADDR is required"},
		{name: "no upstream", env: map[string]string{"REFPROXY_ADDR": "127.0.0.1:0"}, wantErr: "REFPROXY_UPSTREAM is required"},
		{name: "bad upstream", env: map[string]string{"REFPROXY_ADDR": "127.0.0.1:0", "REFPROXY_UPSTREAM": "127.0.0.1:8090"}, wantErr: "not an http(s) URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), func(k string) string { return tc.env[k] }, io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

// TestRunShutdown checks that run serves /healthz on the address it reports,
// and returns nil once its context is done.
func TestRunShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	env := map[string]string{"REFPROXY_ADDR": "127.0.0.1:0", "REFPROXY_UPSTREAM": "http://127.0.0.1:1"}
	addrs := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) string { return env[k] }, io.Discard, func(a net.Addr) { addrs <- a })
	}()
	var addr net.Addr
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("run did not report a listening address within 5s")
	}
	waitHealthy(t, "http://"+addr.String()+"/healthz", 5*time.Second)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

// waitHealthy polls url until it answers 200, and fails the test when it has
// not within timeout.
func waitHealthy(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: not 200 within %v: %v", url, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
