// Package redis is the Redis store of package quota: one Lua script per
// admission, touching only keys tagged with the key id, so it runs in one
// hash slot of a Redis Cluster.
//
// Keys:
//
//	qyai:rl:{<key id>}              sorted set: the RPM window, one member per admitted request, scored by ms
//	qyai:quota:{<key id>}:<YYYYMM>  integer: requests admitted in that UTC month
//	qyai:tpm:{<key id>}:<minute>    integer: tokens of requests finished in that minute (keys with a TPM only)
//
// (names from package apikey, which documents the whole Redis layout).
package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/quota"
	"github.com/qyai/qyai/pkg/apikey"
)

// admitScript takes an RPM slot and a monthly unit together or neither.
// It reads the clock from Redis so that every replica shares one clock. It
// is idempotent per token (the request's reservation id): a call that timed
// out on the client but ran on the server is retried safely, and answers
// "admitted" again without counting twice.
var admitScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local lim = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local n = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = now
if n > 0 then oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
local tpm = tonumber(ARGV[6])
local tok = 0
if tpm > 0 then
  local prev = tonumber(redis.call('GET', KEYS[4]) or '0')
  local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
  tok = math.floor(prev * (1 - tonumber(ARGV[7])) + cur)
end
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return {0, n, oldest, used, now, tok} end
if n >= rpm then return {1, n, oldest, used, now, tok} end
if tpm > 0 and tok >= tpm then return {3, n, oldest, used, now, tok} end
if used >= lim then return {2, n, oldest, used, now, tok} end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], win)
used = redis.call('INCR', KEYS[2])
if used == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return {0, n + 1, oldest, used, now, tok}
`)

// addTokensScript counts a finished request's tokens in its minute bucket.
var addTokensScript = goredis.NewScript(`
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 180)
return 1
`)

// releaseScript gives back a reservation, once.
var releaseScript = goredis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used > 0 then redis.call('DECR', KEYS[2]) end
  return 1
end
return 0
`)

// Store implements quota.Store.
type Store struct {
	rdb     goredis.Cmdable
	timeout time.Duration
	admits  *group
}

// attempts is how often an admission is tried before the store counts as
// unreachable. Retrying is safe because the script is idempotent per token;
// it keeps a momentarily slow Redis (a burst on a busy machine) from
// sending requests to the inexact local fallback.
const attempts = 3

// admitPipelines is how many admission pipelines one store keeps in
// flight; admissions that arrive meanwhile share the next one (see group).
const admitPipelines = 2

// NewStore returns a store whose every call attempt is bounded by timeout.
func NewStore(rdb goredis.Cmdable, timeout time.Duration) *Store {
	return &Store{rdb: rdb, timeout: timeout, admits: newGroup(rdb, admitScript, timeout, admitPipelines)}
}

// Admit implements quota.Store.
func (s *Store) Admit(ctx context.Context, a quota.Admission) (quota.Decision, error) {
	var res []int64
	var err error
	keyID := a.KeyID
	minute := a.At.Unix() / 60
	frac := float64(a.At.Unix()%60) / 60
	keys := []string{apikey.WindowKey(keyID), apikey.MonthCounterKey(keyID, a.Month),
		apikey.TokensKey(keyID, minute), apikey.TokensKey(keyID, minute-1)}
	args := []any{quota.Window.Milliseconds(), a.RPM, a.Monthly, a.Token, int64(a.MonthTTL.Seconds()), a.TPM, frac}
	for range attempts {
		actx, cancel := context.WithTimeout(ctx, s.timeout)
		res, err = s.admits.do(actx, keys, args)
		cancel()
		if err == nil || ctx.Err() != nil || !isTimeout(err) {
			break
		}
	}
	if err != nil {
		return quota.Decision{}, fmt.Errorf("%w: admit: %w", quota.ErrUnavailable, err)
	}
	code, n, oldest, used, now, tok := res[0], res[1], res[2], res[3], res[4], res[5]
	d := quota.Decision{
		Allowed:      code == 0,
		Limit:        a.RPM,
		Remaining:    max(0, a.RPM-n),
		Reset:        time.Duration(oldest+quota.Window.Milliseconds()-now) * time.Millisecond,
		MonthlyUsed:  used,
		MonthlyLimit: a.Monthly,
		TokensLimit:  a.TPM,
	}
	if a.TPM > 0 {
		d.TokensRemaining = max(0, a.TPM-tok)
		d.TokensReset = time.Duration(60-a.At.Unix()%60) * time.Second
	}
	switch code {
	case 1:
		d.Reason, d.RetryAfter = quota.ReasonRate, d.Reset
	case 2:
		d.Reason = quota.ReasonQuota
	case 3:
		d.Reason, d.RetryAfter = quota.ReasonTokens, d.TokensReset
	}
	return d, nil
}

// AddTokens implements quota.Store.
func (s *Store) AddTokens(ctx context.Context, keyID string, at time.Time, tokens int64) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	if err := addTokensScript.Run(ctx, s.rdb, []string{apikey.TokensKey(keyID, at.Unix()/60)}, tokens).Err(); err != nil {
		return fmt.Errorf("add tokens: %w", err)
	}
	return nil
}

// isTimeout reports whether err is a timeout (worth retrying) rather than a
// refused connection (Redis down: fall back at once).
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Release implements quota.Store.
func (s *Store) Release(ctx context.Context, keyID, month, token string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	if err := releaseScript.Run(ctx, s.rdb, []string{apikey.WindowKey(keyID), apikey.MonthCounterKey(keyID, month)}, token).Err(); err != nil {
		return fmt.Errorf("release quota: %w", err)
	}
	return nil
}
