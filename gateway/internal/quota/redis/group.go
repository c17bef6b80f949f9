package redis

import (
	"context"
	"slices"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// group sends the admissions of concurrent requests to Redis together.
//
// A caller that finds fewer than maxInflight pipelines in flight sends its
// own call at once, so a quiet gateway pays nothing extra. Callers that
// arrive while maxInflight pipelines are in flight queue up; when a
// pipeline returns, its sender hands the whole queue to the first queued
// caller, which sends it as one pipeline. Under load that is one write and
// one read, on the gateway and on Redis, for many admissions instead of one
// each. Every admission is still its own script call, so atomicity and
// idempotency are unchanged; only the round trips are shared.
type group struct {
	rdb         goredis.Cmdable
	script      *goredis.Script
	timeout     time.Duration // of one pipeline
	maxInflight int

	mu       sync.Mutex
	inflight int
	queue    []*call
}

// maxBatch bounds one pipeline; a longer queue is sent in several.
const maxBatch = 256

type call struct {
	keys []string
	args []any
	res  []int64
	err  error
	// batch is set when the call is handed the lead: its goroutine sends
	// these calls (itself first).
	batch []*call
	done  chan struct{} // cap 1: the answer is in, or the lead was handed over
}

func newGroup(rdb goredis.Cmdable, script *goredis.Script, timeout time.Duration, maxInflight int) *group {
	return &group{rdb: rdb, script: script, timeout: timeout, maxInflight: maxInflight}
}

// do runs the script once with keys and args, possibly in a pipeline with
// other callers' runs. It returns when the answer is in or ctx is done;
// a call that was already sent is waited for, which a pipeline's own
// timeout bounds.
func (g *group) do(ctx context.Context, keys []string, args []any) ([]int64, error) {
	c := &call{keys: keys, args: args, done: make(chan struct{}, 1)}
	g.mu.Lock()
	if g.inflight < g.maxInflight {
		g.inflight++
		g.mu.Unlock()
		g.lead([]*call{c})
		return c.res, c.err
	}
	g.queue = append(g.queue, c)
	g.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		g.mu.Lock()
		if i := slices.Index(g.queue, c); i >= 0 {
			g.queue = slices.Delete(g.queue, i, i+1)
			g.mu.Unlock()
			return nil, ctx.Err()
		}
		g.mu.Unlock()
		// Already taken by a sender: the lead is handed over at once, and
		// an answer comes within the pipeline's timeout.
		<-c.done
	}
	if c.batch != nil {
		batch := c.batch
		c.batch = nil
		g.lead(batch)
	}
	return c.res, c.err
}

// lead sends batch (its own call first), answers the others, and hands the
// queue that built up meanwhile to the first queued caller; with no queue
// it gives its pipeline slot back.
func (g *group) lead(batch []*call) {
	g.exec(batch)
	for _, c := range batch[1:] {
		c.done <- struct{}{}
	}
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.inflight--
		g.mu.Unlock()
		return
	}
	n := min(len(g.queue), maxBatch)
	next := slices.Clone(g.queue[:n])
	rest := copy(g.queue, g.queue[n:])
	clear(g.queue[rest:])
	g.queue = g.queue[:rest]
	g.mu.Unlock()
	next[0].batch = next
	next[0].done <- struct{}{}
}

// exec sends batch and fills in every call's answer.
func (g *group) exec(batch []*call) {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	if len(batch) == 1 { // no pipeline needed
		c := batch[0]
		c.res, c.err = g.script.Run(ctx, g.rdb, c.keys, c.args...).Int64Slice()
		return
	}
	cmds := g.pipeline(ctx, batch, false)
	var missing []int // calls that found the script not loaded (Redis restarted or flushed)
	for i, cmd := range cmds {
		if goredis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		again := make([]*call, len(missing))
		for j, i := range missing {
			again[j] = batch[i]
		}
		for j, cmd := range g.pipeline(ctx, again, true) {
			cmds[missing[j]] = cmd
		}
	}
	for i, c := range batch {
		c.res, c.err = cmds[i].Int64Slice()
	}
}

// pipeline sends one script call per element of batch, by hash or, when
// load is set, with the script's text (which loads it).
func (g *group) pipeline(ctx context.Context, batch []*call, load bool) []*goredis.Cmd {
	pipe := g.rdb.Pipeline()
	cmds := make([]*goredis.Cmd, len(batch))
	for i, c := range batch {
		if load {
			cmds[i] = g.script.Eval(ctx, pipe, c.keys, c.args...)
		} else {
			cmds[i] = g.script.EvalSha(ctx, pipe, c.keys, c.args...)
		}
	}
	_, _ = pipe.Exec(ctx) // every command carries its own error
	return cmds
}
