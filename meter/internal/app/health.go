package app

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// pinger is the store side of readiness.
type pinger interface {
	Ping(ctx context.Context) error
}

// health answers /healthz (the process is alive) and /readyz (NATS is
// connected and ClickHouse answers; false until startup finished).
type health struct {
	deps atomic.Pointer[readyDeps]
}

type readyDeps struct {
	nc    *nats.Conn
	store pinger
}

func (h *health) ready(nc *nats.Conn, store pinger) {
	h.deps.Store(&readyDeps{nc: nc, store: store})
}

func (h *health) routes(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		d := h.deps.Load()
		switch {
		case d == nil:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		case !d.nc.IsConnected():
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
		default:
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if err := d.store.Ping(ctx); err != nil {
				http.Error(w, "clickhouse unreachable", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	mux.Handle("GET /metrics", metrics)
	return mux
}
