package redisretry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/pkg/redisretry"
	"github.com/qyai/qyai/testkit/redisbusy"
)

// reply is an error reply as go-redis returns it (it implements goredis.Error).
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

var _ goredis.Error = reply("")

func TestIsTransient(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		err             error
		server, transit bool
	}{
		{"nil", nil, false, false},
		{"loading", reply("LOADING Redis is loading the dataset in memory"), true, true},
		{"busy", reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."), true, true},
		{"masterdown", reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), true, true},
		{"tryagain", reply("TRYAGAIN Multiple keys request during rehashing of slot"), true, true},
		{"clusterdown", reply("CLUSTERDOWN The cluster is down"), true, true},
		{"wrapped loading", fmt.Errorf("redis create key: %w", reply("LOADING Redis is loading the dataset in memory")), true, true},
		{"execabort joined with loading", errors.Join(reply("EXECABORT Transaction discarded because of previous errors."),
			reply("LOADING Redis is loading the dataset in memory")), true, true},
		{"execabort alone", reply("EXECABORT Transaction discarded because of previous errors."), false, false},
		{"wrong type", reply("WRONGTYPE Operation against a key holding the wrong kind of value"), false, false},
		{"prefix only as a word", reply("BUSYKEY Target key name already exists."), false, false},
		{"not a reply", errors.New("LOADING but not from a server"), false, false},
		{"eof", io.EOF, false, true},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), false, true},
		{"deadline", context.DeadlineExceeded, false, true},
		{"nil reply", goredis.Nil, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := redisretry.IsServerTransient(tt.err); got != tt.server {
				t.Errorf("IsServerTransient(%v) = %v, want %v", tt.err, got, tt.server)
			}
			if got := redisretry.IsTransient(tt.err); got != tt.transit {
				t.Errorf("IsTransient(%v) = %v, want %v", tt.err, got, tt.transit)
			}
		})
	}
}

func TestDoStopsAtTheDeadline(t *testing.T) {
	t.Parallel()
	busy := reply("BUSY Redis is busy running a script.")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	calls := 0
	err := redisretry.Do(ctx, redisretry.IsServerTransient, func(context.Context) error {
		calls++
		return busy
	})
	if !errors.Is(err, busy) {
		t.Fatalf("Do = %v, want the last BUSY reply", err)
	}
	if calls < 2 {
		t.Fatalf("fn called %d times, want retries", calls)
	}
	other := reply("WRONGTYPE Operation against a key holding the wrong kind of value")
	calls = 0
	err = redisretry.Do(t.Context(), redisretry.IsServerTransient, func(context.Context) error {
		calls++
		return other
	})
	if !errors.Is(err, other) || calls != 1 {
		t.Fatalf("Do = %v after %d calls, want WRONGTYPE after 1", err, calls)
	}
}

// recorder is a hook below redisretry.Hook that records the reply of every
// attempt, so a test can wait until the server has refused at least once.
type recorder struct {
	mu   sync.Mutex
	errs []error
}

func (r *recorder) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (r *recorder) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		r.add(err)
		return err
	}
}

func (r *recorder) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		err := next(ctx, cmds)
		r.add(err)
		return err
	}
}

func (r *recorder) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// refused reports whether some attempt got a reply with prefix.
func (r *recorder) refused(prefix string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.errs {
		if goredis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// busyServer makes the Redis at addr answer BUSY to every other client
// (redisbusy.Start) and checks that its real reply is classified as
// transient.
func busyServer(t *testing.T, addr string) (kill func()) {
	t.Helper()
	kill = redisbusy.Start(t, addr)
	probe := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = probe.Close() })
	err := probe.Get(t.Context(), "k").Err()
	if !goredis.HasErrorPrefix(err, "BUSY") || !redisretry.IsServerTransient(err) || !redisretry.IsTransient(err) {
		t.Fatalf("the busy server's reply %v is not a BUSY classified as transient", err)
	}
	return kill
}

func TestHookRetriesBusyServer(t *testing.T) {
	t.Parallel()
	srv := scripts.Redis(t)
	ctx := t.Context()
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := &recorder{}
	rdb.AddHook(redisretry.Hook{})
	rdb.AddHook(rec)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	t.Run("bound expires", func(t *testing.T) {
		kill := busyServer(t, srv.Addr)
		defer kill()
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		err := rdb.Get(cctx, "k").Err()
		cancel()
		if !redisretry.IsServerTransient(err) {
			t.Fatalf("GET on a busy server = %v, want the BUSY reply", err)
		}
		cctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err = rdb.TxPipelined(cctx, func(p goredis.Pipeliner) error {
			p.Set(cctx, "k", "w", 0)
			return nil
		})
		if !goredis.HasErrorPrefix(err, "EXECABORT") || !redisretry.IsTransient(err) {
			t.Fatalf("MULTI/EXEC on a busy server = %v, want EXECABORT joined with BUSY", err)
		}
	})

	t.Run("server frees up", func(t *testing.T) {
		kill := busyServer(t, srv.Addr)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		type result struct {
			v   string
			err error
		}
		got := make(chan result, 1)
		go func() {
			v, err := rdb.Get(cctx, "k").Result()
			got <- result{v, err}
		}()
		for end := time.Now().Add(10 * time.Second); !rec.refused("BUSY"); {
			if time.Now().After(end) {
				rec.mu.Lock()
				t.Fatalf("the GET never saw BUSY: %v", rec.errs)
			}
			time.Sleep(5 * time.Millisecond)
		}
		kill()
		r := <-got
		if r.err != nil || r.v != "v" {
			t.Fatalf("GET across a busy script = %q, %v; want v", r.v, r.err)
		}
	})
}
