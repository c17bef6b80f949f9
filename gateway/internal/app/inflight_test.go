package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStopHTTPAwaitsHandlers: past the drain deadline stopHTTP cancels the
// requests still running and returns only after their handlers did, even
// when a handler takes its time to wrap up after the cancellation (as a
// handler publishing its usage event does); a handler that never returns
// holds it for the grace period only.
func TestStopHTTPAwaitsHandlers(t *testing.T) {
	tests := []struct {
		name         string
		stuck        bool // the handler ignores the cancellation
		wantFinished bool
	}{
		{name: "cancelled handler awaited", wantFinished: true},
		{name: "stuck handler bounded by the grace", stuck: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan struct{})
			sawCancel := make(chan struct{})
			release := make(chan struct{})
			var releaseOnce sync.Once
			releaseHandler := func() { releaseOnce.Do(func() { close(release) }) }
			t.Cleanup(releaseHandler)
			var finished atomic.Bool
			reqCtx, cancelRequests := context.WithCancel(t.Context())
			defer cancelRequests()
			var running inflight
			srv := &http.Server{
				Handler: running.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					close(started)
					<-r.Context().Done()
					close(sawCancel)
					<-release // the wrap-up after the cancellation
					finished.Store(true)
				})),
				BaseContext: func(net.Listener) context.Context { return reqCtx },
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()

			resp, err := http.Get("http://" + ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = resp.Body.Close() }()
			go func() { _, _ = io.Copy(io.Discard, resp.Body) }()
			<-started
			if !tt.stuck {
				// Let the handler go on only once stopHTTP has cancelled it:
				// it then finishes after the cancellation, never before.
				go func() { <-sawCancel; releaseHandler() }()
			}
			grace := 5 * time.Second
			if tt.stuck {
				grace = 50 * time.Millisecond
			}
			stopHTTP(t.Context(), srv, &running, cancelRequests, time.Now().Add(50*time.Millisecond), grace, slog.New(slog.DiscardHandler))
			if got := finished.Load(); got != tt.wantFinished {
				t.Errorf("handler finished before stopHTTP returned: %v, want %v", got, tt.wantFinished)
			}
			select {
			case <-sawCancel:
			case <-time.After(10 * time.Second):
				t.Error("the request was not cancelled")
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve = %v", err)
			}
		})
	}
}
