package app

import (
	"context"
	"net/http"
	"sync"
)

// inflight counts the HTTP handlers that are running, so that the drain
// can wait for every one of them to return before it stops the usage
// publisher: http.Server.Shutdown returns at its deadline while handlers
// may still run, and Close does not wait for them at all. A handler
// publishes its request's usage event just before it returns; one that
// returned after the publisher stopped would lose it.
//
// It is a counter under a mutex rather than a sync.WaitGroup because a
// connection accepted just before the listener closed may still start a
// handler while the drain waits, which a WaitGroup forbids (Add from zero
// concurrent with Wait).
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero; nil when nobody waits
}

// wrap counts h's calls while they run.
func (f *inflight) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.add(1)
		defer f.add(-1)
		h.ServeHTTP(w, r)
	})
}

func (f *inflight) add(d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n += d
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

// wait blocks until no handler runs or ctx ends, and returns how many
// still run (0 when all returned). One caller at a time.
func (f *inflight) wait(ctx context.Context) int {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return 0
	}
	idle := make(chan struct{})
	f.idle = idle
	f.mu.Unlock()
	select {
	case <-idle:
		return 0
	case <-ctx.Done():
		f.mu.Lock()
		defer f.mu.Unlock()
		f.idle = nil
		return f.n
	}
}
