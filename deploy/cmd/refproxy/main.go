// Command refproxy is a bare HTTP reverse proxy that `make bench` measures
// next to the gateway, as a reference. It is not a product component: it
// has no authentication, rate limits, metering or request logging, only
// net/http/httputil.ReverseProxy in front of one upstream, so its numbers
// are the floor of what any Go reverse proxy costs on the machine the
// benchmark runs on.
//
// Environment (both required):
//
//	REFPROXY_ADDR      listen address, e.g. 127.0.0.1:8095
//	REFPROXY_UPSTREAM  base URL of the upstream, e.g. http://127.0.0.1:8090
//
// Every request is forwarded with its path, query and headers
// (Authorization included) as they are, except GET /healthz, which refproxy
// answers itself with 200. SIGINT or SIGTERM shuts it down gracefully.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "refproxy:", err)
		os.Exit(1)
	}
}

// run is the whole program, with its environment passed in. When listening is
// not nil, run calls it with the bound address once it accepts connections (tests
// listen on port 0 and need the real port). It returns nil once ctx is done and
// the server has shut down.
func run(ctx context.Context, getenv func(string) string, stderr io.Writer, listening func(net.Addr)) error {
	addr, upstream := getenv("REFPROXY_ADDR"), getenv("REFPROXY_UPSTREAM")
	if addr == "" {
		return errors.New("REFPROXY_ADDR is required")
	}
	target, err := parseUpstream(upstream)
	if err != nil {
		return err
	}
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	errLog := log.New(stderr, "refproxy: ", log.LstdFlags)
	srv := &http.Server{
		Handler:           newHandler(target, errLog),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if listening != nil {
		listening(ln.Addr())
	}
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// parseUpstream checks that raw is an http(s) base URL.
func parseUpstream(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("REFPROXY_UPSTREAM is required")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("REFPROXY_UPSTREAM: %q is not an http(s) URL", raw)
	}
	return u, nil
}

// newHandler answers GET /healthz and forwards everything else to target.
// It is a plain function rather than a ServeMux so that paths reach the
// upstream exactly as they came, never cleaned or redirected.
func newHandler(target *url.URL, errLog *log.Logger) http.Handler {
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
		},
		Transport: &http.Transport{
			Proxy:               nil, // never an HTTP_PROXY from the environment
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
		},
		ErrorLog: errLog,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "ok\n")
			return
		}
		proxy.ServeHTTP(w, r)
	})
}
