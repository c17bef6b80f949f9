package redis_test

import (
	"context"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/redisretry"
	"github.com/qyai/qyai/pkg/tier"
	"github.com/qyai/qyai/testkit/redisbusy"
)

// refusals is a hook below redisretry.Hook that counts the attempts the
// server refused with a server-state error (BUSY, LOADING, ...), or aborted
// (EXECABORT: it sees a transaction's error before the hook adds the cause).
type refusals struct {
	mu sync.Mutex
	n  int
}

func (r *refusals) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (r *refusals) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error { return r.count(next(ctx, cmd)) }
}

func (r *refusals) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error { return r.count(next(ctx, cmds)) }
}

func (r *refusals) count(err error) error {
	if redisretry.IsServerTransient(err) || goredis.HasErrorPrefix(err, "EXECABORT") {
		r.mu.Lock()
		r.n++
		r.mu.Unlock()
	}
	return err
}

func (r *refusals) seen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n > 0
}

// TestCreateOnBusyRedis: a Redis that refuses commands for its state (here
// BUSY in a script; LOADING after a restart takes the same path) makes Create
// retry within its bound, and fail with an error the HTTP layer answers with
// 503 (redisretry.IsTransient), never an internal error.
func TestCreateOnBusyRedis(t *testing.T) {
	t.Parallel()
	srv := scripts.Redis(t)
	now := func() time.Time { return time.Date(2026, 5, 20, 12, 0, 0, 0, time.UTC) }
	client := func(t *testing.T) (*goredis.Client, *refusals) {
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, DisableIdentity: true})
		t.Cleanup(func() { _ = rdb.Close() })
		rec := &refusals{}
		rdb.AddHook(redisretry.Hook{}) // as admin's app does
		rdb.AddHook(rec)
		return rdb, rec
	}

	t.Run("retried until the server frees up", func(t *testing.T) {
		rdb, rec := client(t)
		svc := keys.NewService(redisstore.New(rdb, 30*time.Second), pepper, tier.Default(), now)
		kill := redisbusy.Start(t, srv.Addr)
		type result struct {
			is  keys.Issued
			err error
		}
		got := make(chan result, 1)
		go func() {
			is, err := svc.Create(t.Context(), "op", keys.CreateRequest{Name: "busy", Tier: "basic"})
			got <- result{is, err}
		}()
		for end := time.Now().Add(10 * time.Second); !rec.seen(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("Create never reached the busy server")
			}
		}
		kill()
		r := <-got
		if r.err != nil {
			t.Fatalf("Create across a busy script: %v", r.err)
		}
		if _, err := svc.Get(t.Context(), r.is.Record.ID); err != nil {
			t.Fatalf("Get the created key: %v", err)
		}
	})

	t.Run("unavailable once the bound expires", func(t *testing.T) {
		rdb, rec := client(t)
		svc := keys.NewService(redisstore.New(rdb, 300*time.Millisecond), pepper, tier.Default(), now)
		redisbusy.Start(t, srv.Addr)
		_, err := svc.Create(t.Context(), "op", keys.CreateRequest{Name: "busy", Tier: "basic"})
		// The last attempt may be cut by the bound itself (an i/o timeout on a
		// loaded machine) rather than answered BUSY: either is transient, a 503.
		if err == nil || !redisretry.IsTransient(err) {
			t.Fatalf("Create on a busy server = %v, want a transient refusal (503)", err)
		}
		if !rec.seen() {
			t.Fatalf("Create failed with %v before the server refused it BUSY", err)
		}
	})
}
