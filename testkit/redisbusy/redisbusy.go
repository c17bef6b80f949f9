// Package redisbusy makes a real Redis refuse commands for its state, as it
// does while a long script runs: every other client gets BUSY.
package redisbusy

import (
	"context"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Start blocks the Redis at addr in a Lua loop (busy-reply-threshold 10 ms),
// waits until it really answers BUSY, and returns a function that ends the
// loop with SCRIPT KILL and waits until the server is free again. The
// function also runs when the test ends, and only once.
func Start(t testing.TB, addr string) (kill func()) {
	t.Helper()
	// Not t.Context(): kill also runs as a cleanup, after it is cancelled.
	ctx := context.WithoutCancel(t.Context())
	ctl := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = ctl.Close() })
	if err := ctl.ConfigSet(ctx, "busy-reply-threshold", "10").Err(); err != nil {
		t.Fatalf("redisbusy: CONFIG SET busy-reply-threshold: %v", err)
	}
	looper := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = looper.Close() })
	done := make(chan error, 1)
	go func() { done <- looper.Eval(ctx, "while true do end", nil).Err() }()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		err := ctl.Get(ctx, "redisbusy-probe").Err()
		if goredis.HasErrorPrefix(err, "BUSY") {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("redisbusy: Redis never answered BUSY; last GET: %v", err)
		}
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			if err := ctl.ScriptKill(ctx).Err(); err != nil {
				t.Errorf("redisbusy: SCRIPT KILL: %v", err)
				return
			}
			if err := <-done; err == nil {
				t.Error("redisbusy: the looping script ended without an error")
			}
		})
	}
	t.Cleanup(kill)
	return kill
}
