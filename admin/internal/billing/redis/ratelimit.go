// Package redis is the Redis rate limit of the public dashboard endpoints:
// a fixed one-minute window per key, shared by every admin replica, so that
// a key cannot make ClickHouse run its billing queries, or regenerate
// itself, without limit. Each endpoint family counts in its own window
// (the limiter's name).
package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// incr counts one request in the window KEYS[1], which expires ARGV[1]
// milliseconds after its first request, and returns the count.
var incr = goredis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

// Limiter allows a number of requests per key per UTC minute.
type Limiter struct {
	rdb     goredis.UniversalClient
	name    string
	rpm     int64
	timeout time.Duration
	now     func() time.Time
}

// Names of the limiters admin runs: the counters of one name are
// qyai:<name>-rpm:{<key id>}:<unix minute>.
const (
	Billing    = "billing"
	Regenerate = "regenerate"
)

// NewLimiter allows rpm requests per key per minute in the windows of name
// (Billing, Regenerate); every Redis call is bounded by timeout; now is the
// clock.
func NewLimiter(rdb goredis.UniversalClient, name string, rpm int, timeout time.Duration, now func() time.Time) *Limiter {
	return &Limiter{rdb: rdb, name: name, rpm: int64(rpm), timeout: timeout, now: now}
}

// windowKey is the counter of a key's window; the braces are the key's
// Redis Cluster hash tag, as for its other state (apikey.RecordKey).
func (l *Limiter) windowKey(keyID string, minute int64) string {
	return "qyai:" + l.name + "-rpm:{" + keyID + "}:" + strconv.FormatInt(minute, 10)
}

// Allow takes one request of keyID's window. When the window is full it
// returns false and the time until the next window.
func (l *Limiter) Allow(ctx context.Context, keyID string) (retryAfter time.Duration, ok bool, err error) {
	now := l.now()
	minute := now.Unix() / 60
	next := time.Unix((minute+1)*60, 0)
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	// The counter outlives its window a little, so that clocks a few
	// seconds apart between replicas do not restart it.
	n, err := incr.Run(ctx, l.rdb, []string{l.windowKey(keyID, minute)}, (2 * time.Minute).Milliseconds()).Int64()
	if err != nil {
		return 0, false, fmt.Errorf("count %s request in redis: %w", l.name, err)
	}
	if n > l.rpm {
		return next.Sub(now), false, nil
	}
	return 0, true, nil
}
