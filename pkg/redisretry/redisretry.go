// Package redisretry tells the Redis errors that mean "not now" (a server
// still loading its data, blocked in a script, failing over, or a dropped
// connection) from the ones that mean "never", and retries the first kind
// within the caller's deadline.
//
// The services install Hook on their go-redis clients, so that every command
// and pipeline is retried at the client level, and map whatever IsTransient
// still reports once the deadline is spent to their "unavailable" answers
// (a 503, or the gateway's degraded mode) rather than to an internal error.
package redisretry

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// serverPrefixes are the error replies with which a Redis server refuses a
// command it did not execute, because of its state rather than the command:
// loading the dataset, blocked by a long script (BUSY), a replica whose
// primary is down, a cluster resharding or without quorum.
var serverPrefixes = [...]string{"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"}

// IsServerTransient reports whether err is (or wraps) an error reply of a
// Redis server that refused a command because of its state (LOADING, BUSY,
// MASTERDOWN, TRYAGAIN, CLUSTERDOWN). The command was not executed, so it is
// safe to send again.
func IsServerTransient(err error) bool {
	var re goredis.Error
	if errors.As(err, &re) && refusal(re.Error()) {
		return true
	}
	// errors.As stops at the first reply, and the EXECABORT that Hook joins
	// with its cause comes first: look into joined errors too.
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			if IsServerTransient(e) {
				return true
			}
		}
	}
	return false
}

// refusal reports whether msg starts with one of serverPrefixes.
func refusal(msg string) bool {
	for _, p := range serverPrefixes {
		if msg == p || strings.HasPrefix(msg, p+" ") {
			return true
		}
	}
	return false
}

// IsTransient reports whether err means Redis could not serve the call now
// but may shortly: a server-state refusal (see IsServerTransient), a
// transaction aborted by one (see Hook), a timeout or a broken or refused
// connection.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if IsServerTransient(err) {
		return true
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// Backoff bounds between two attempts. Loading a large append-only file
// takes about a second per 50 MB, a busy script is killed within seconds:
// the pause grows to at most maxBackoff so that a call ends soon after the
// server is back.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = 100 * time.Millisecond
	// unboundedAttempts bounds the attempts of a call whose context has no
	// deadline (every service call has one; this keeps a forgotten one finite).
	unboundedAttempts = 10
)

// Do calls fn until it returns nil or an error for which retryable is false,
// pausing with a growing backoff between attempts. It stops, returning fn's
// last error, when ctx ends or when the next pause would pass ctx's deadline,
// so that the caller sees the server's error rather than a deadline.
func Do(ctx context.Context, retryable func(error) bool, fn func(context.Context) error) error {
	wait := minBackoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		dl, ok := ctx.Deadline()
		if ok && time.Until(dl) <= wait || !ok && attempt >= unboundedAttempts {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// Hook is a go-redis hook (install it with AddHook) that retries, within the
// command's context deadline, every command and pipeline refused with a
// server-state error (IsServerTransient). It leaves connection errors to
// go-redis's own MaxRetries, which each service sets to its latency budget.
//
// A plain pipeline is sent again only when every command in it was refused,
// so that nothing executes twice. A MULTI/EXEC is never sent again here: under
// WATCH the abort has dropped the watched keys, and a blind retry would commit
// without the optimistic check. Its EXECABORT error is instead joined with
// the refusal that caused it, so that IsTransient recognises it and the caller
// (who knows whether it may retry the whole transaction) decides.
type Hook struct{}

var _ goredis.Hook = Hook{}

// DialHook implements goredis.Hook.
func (Hook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

// ProcessHook implements goredis.Hook.
func (Hook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		return Do(ctx, IsServerTransient, func(ctx context.Context) error {
			return next(ctx, cmd)
		})
	}
}

// ProcessPipelineHook implements goredis.Hook.
func (Hook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "multi" {
			return execAbortCause(next(ctx, cmds), cmds)
		}
		return Do(ctx, func(error) bool { return allRefused(cmds) }, func(ctx context.Context) error {
			return next(ctx, cmds)
		})
	}
}

// allRefused reports whether every command of a pipeline failed with a
// server-state error, so none of them was executed.
func allRefused(cmds []goredis.Cmder) bool {
	for _, c := range cmds {
		if !IsServerTransient(c.Err()) {
			return false
		}
	}
	return len(cmds) > 0
}

// execAbortCause joins an EXECABORT with the first server-state refusal of a
// queued command, which is why the transaction was discarded.
func execAbortCause(err error, cmds []goredis.Cmder) error {
	if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
		return err
	}
	for _, c := range cmds {
		if cerr := c.Err(); IsServerTransient(cerr) {
			return errors.Join(err, cerr)
		}
	}
	return err
}

// ClusterHook is Hook for a Redis Cluster client (install it with AddHook on the
// *goredis.ClusterClient, with Reload set to its ReloadState). Besides the
// refusals Hook retries, it retries, within the command's context deadline and
// with the same backoff, every error IsTransient accepts: connection refused or
// reset by a master that died, i/o timeouts while its slots move, CLUSTERDOWN
// and TRYAGAIN during the failover. Before each retry it refreshes the client's
// slot map (Reload, at most every reloadEvery): go-redis follows MOVED and ASK
// by itself, but after a kill -9 no node answers MOVED for the dead master's
// slots, and the client would keep dialling it until its map ages out (10 s).
//
// Unlike Hook, it may send a command again that reached the server before its
// connection broke. Every write the services send through it is idempotent
// (admission and release scripts are keyed by the request's reservation token,
// counters are raised with "set to max", records are written if newer), except
// counters whose double count errs towards refusing (the TPM bucket, admin's
// own rate limit); so the retry trades a possible extra count there for
// availability during a failover. A plain pipeline is sent again only when
// every command in it failed transiently; MULTI/EXEC is never sent again, as
// with Hook. On a single Redis use Hook: its behaviour is unchanged by this type.
type ClusterHook struct {
	// Reload refreshes the slot map (goredis.ClusterClient.ReloadState).
	Reload func(context.Context)
	last   *atomic.Int64 // Unix nanoseconds of the last Reload
}

// NewClusterHook returns a ClusterHook that calls reload before retries.
func NewClusterHook(reload func(context.Context)) ClusterHook {
	return ClusterHook{Reload: reload, last: new(atomic.Int64)}
}

// reloadEvery bounds slot-map refreshes: many callers failing at once share one.
const reloadEvery = 100 * time.Millisecond

var _ goredis.Hook = ClusterHook{}

// DialHook implements goredis.Hook.
func (ClusterHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

// ProcessHook implements goredis.Hook.
func (h ClusterHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		return Do(ctx, h.retryable, h.reloadingRetries(func(ctx context.Context) error { return next(ctx, cmd) }))
	}
}

// ProcessPipelineHook implements goredis.Hook.
func (h ClusterHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "multi" {
			return execAbortCause(next(ctx, cmds), cmds)
		}
		return Do(ctx, func(error) bool { return allTransient(cmds) },
			h.reloadingRetries(func(ctx context.Context) error { return next(ctx, cmds) }))
	}
}

// reloadingRetries returns attempt, refreshing the slot map before every call
// but the first (a retry).
func (h ClusterHook) reloadingRetries(attempt func(context.Context) error) func(context.Context) error {
	first := true
	return func(ctx context.Context) error {
		if !first {
			h.reload(ctx)
		}
		first = false
		return attempt(ctx)
	}
}

// retryable is IsTransient without goredis.Nil and the caller's own cancellation
// (Do stops on ctx.Err() already).
func (ClusterHook) retryable(err error) bool {
	return !errors.Is(err, goredis.Nil) && !errors.Is(err, context.Canceled) && IsTransient(err)
}

func (h ClusterHook) reload(ctx context.Context) {
	if h.Reload == nil {
		return
	}
	if h.last != nil {
		now := time.Now().UnixNano()
		prev := h.last.Load()
		if now-prev < int64(reloadEvery) || !h.last.CompareAndSwap(prev, now) {
			return
		}
	}
	h.Reload(ctx)
}

func allTransient(cmds []goredis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err == nil || errors.Is(err, goredis.Nil) || !IsTransient(err) {
			return false
		}
	}
	return len(cmds) > 0
}

// AddTo installs the retry hook that fits rdb: ClusterHook (refreshing rdb's slot
// map) on a Redis Cluster client, Hook on any other.
func AddTo(rdb goredis.UniversalClient) {
	if cc, ok := rdb.(*goredis.ClusterClient); ok {
		cc.AddHook(NewClusterHook(cc.ReloadState))
		return
	}
	rdb.AddHook(Hook{})
}
