package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// echoScript answers with its argument, and counts its calls in Redis.
var echoScript = goredis.NewScript(`redis.call('INCR', KEYS[1]) return {tonumber(ARGV[1])}`)

// countingHook counts pipelines and single commands sent to Redis.
type countingHook struct {
	mu                sync.Mutex
	pipelines, single int
	largest           int
}

func (h *countingHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *countingHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.mu.Lock()
		h.single++
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *countingHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		h.mu.Lock()
		h.pipelines++
		h.largest = max(h.largest, len(cmds))
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestGroupSharesRoundTrips: 400 concurrent calls through a group with one
// pipeline in flight each get their own answer, every script ran exactly
// once per call, and the calls shared pipelines.
func TestGroupSharesRoundTrips(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	hook := &countingHook{}
	rdb.AddHook(hook)
	g := newGroup(rdb, echoScript, 5*time.Second, 1)

	const n = 400
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			res, err := g.do(t.Context(), []string{"group:calls"}, []any{i})
			switch {
			case err != nil:
				errs <- err
			case len(res) != 1 || res[0] != int64(i):
				errs <- fmt.Errorf("call %d got %v", i, res)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, _ := rdb.Get(t.Context(), "group:calls").Int(); got != n {
		t.Errorf("the script ran %d times for %d calls", got, n)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.pipelines == 0 || hook.largest < 2 {
		t.Errorf("no call shared a round trip: %d pipelines, largest %d, %d single commands", hook.pipelines, hook.largest, hook.single)
	}
	if g.inflight != 0 || len(g.queue) != 0 {
		t.Errorf("group not idle after the calls: %d in flight, %d queued", g.inflight, len(g.queue))
	}
	t.Logf("%d calls: %d pipelines (largest %d), %d single commands", n, hook.pipelines, hook.largest, hook.single)
}

// TestGroupReloadsFlushedScript: after SCRIPT FLUSH (a Redis restart or
// failover loses loaded scripts), calls in a pipeline still succeed.
func TestGroupReloadsFlushedScript(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGroup(rdb, echoScript, 5*time.Second, 1)
	batch := make([]*call, 5)
	for i := range batch {
		batch[i] = &call{keys: []string{"group:flushed"}, args: []any{i}, done: make(chan struct{}, 1)}
	}
	for round := range 2 {
		if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		g.exec(batch)
		for i, c := range batch {
			if c.err != nil || len(c.res) != 1 || c.res[0] != int64(i) {
				t.Fatalf("round %d call %d: %v %v", round, i, c.res, c.err)
			}
		}
	}
	if got, _ := rdb.Get(t.Context(), "group:flushed").Int(); got != 10 {
		t.Errorf("the script ran %d times, want 10", got)
	}
}

// TestGroupQueuedCallerGivesUp: a caller queued behind a stuck pipeline
// returns when its context ends, and the queue forgets it.
func TestGroupQueuedCallerGivesUp(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGroup(rdb, echoScript, 5*time.Second, 1)
	g.inflight = 1 // a pipeline that never returns holds the only slot

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := g.do(ctx, []string{"group:stuck"}, []any{1})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued call ended with %v, want its deadline", err)
	}
	if len(g.queue) != 0 {
		t.Errorf("%d calls left in the queue", len(g.queue))
	}
}
