// Package quota enforces each key's request limits: requests per minute
// (a sliding window) and requests per UTC calendar month. Admission is one
// atomic step: a request either takes an RPM slot and a monthly unit
// together or takes nothing. A request that is admitted but then refused or
// failed before it reached the upstream gives both back with Release.
//
// What counts against the monthly quota: every request admitted and not
// released, i.e. every request that reached the upstream, whatever the
// upstream answered (a 5xx from the provider still counts, because the
// provider may have done the work); not counted: requests refused by
// authentication, validation, permission or the limits themselves, and
// requests that never reached the upstream (connection refused on every
// pool member, client gone before sending).
package quota

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

// Reasons a request is refused. ReasonTokens is reported to clients with
// the code rate_limit_exceeded, as OpenAI does for token limits.
const (
	ReasonRate   = "rate_limit_exceeded"
	ReasonQuota  = "insufficient_quota"
	ReasonTokens = "tokens_per_minute"
)

// Window is the RPM window.
const Window = time.Minute

// ErrUnavailable means the shared limit state could not be reached.
var ErrUnavailable = errors.New("limit store unavailable")

// Decision is the outcome of an admission, with what the response headers
// report.
type Decision struct {
	Allowed bool
	Reason  string // when refused: ReasonRate or ReasonQuota

	Limit     int64         // RPM limit
	Remaining int64         // RPM slots left after this request
	Reset     time.Duration // until the oldest slot in the window frees
	// RetryAfter is set on refusals.
	RetryAfter time.Duration

	MonthlyUsed  int64
	MonthlyLimit int64

	// TokensLimit is the key's TPM (0: none); TokensRemaining and
	// TokensReset describe the current minute's window.
	TokensLimit     int64
	TokensRemaining int64
	TokensReset     time.Duration

	// Degraded means the shared store was down and a local per-replica
	// share of the limits was applied instead.
	Degraded bool

	// Token identifies the reservation for Release.
	Token string
	Month string
}

// Admission is one request asking for a slot.
type Admission struct {
	KeyID        string
	RPM, Monthly int64
	TPM          int64 // 0: no token limit
	Month, Token string
	MonthTTL     time.Duration
	At           time.Time
}

// Store is the shared limit state (Redis in production).
type Store interface {
	Admit(ctx context.Context, a Admission) (Decision, error)
	Release(ctx context.Context, keyID, month, token string) error
	AddTokens(ctx context.Context, keyID string, at time.Time, tokens int64) error
}

// Limiter admits requests against the shared store, falling back to a
// local share of each limit when the store is unreachable. After a failure
// it stops asking the store for downFor, so that an outage costs requests
// no timeout, and lets one probe through at a time until the store answers.
type Limiter struct {
	store    Store
	fallback *local
	now      func() time.Time

	downUntil atomic.Int64 // unix nanos; the store is skipped until then
	probing   atomic.Bool
	degraded  atomic.Int64 // admissions decided by the local fallback
}

// Fallback reports whether the limiter currently decides without the store
// (its last call failed and it has not answered since), and how many
// admissions the local fallback decided so far: the signals of the "Redis
// fallback active" alert.
func (l *Limiter) Fallback() (active bool, admissions int64) {
	return l.downUntil.Load() != 0, l.degraded.Load()
}

// downFor is how long the store is skipped after it failed.
const downFor = 500 * time.Millisecond

// NewLimiter returns a limiter. replicas is how many gateways share the
// limits: during a store outage each allows 1/replicas of them.
func NewLimiter(store Store, replicas int, now func() time.Time) *Limiter {
	return &Limiter{store: store, fallback: newLocal(replicas, now), now: now}
}

// MonthOf is the billing month of t: "YYYYMM" in UTC.
func MonthOf(t time.Time) string { return apikey.Month(t) }

// untilNextMonth is how long until the next UTC month starts.
func untilNextMonth(t time.Time) time.Duration {
	t = t.UTC()
	next := time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	return next.Sub(t)
}

// Admit decides whether the key may send a request now.
func (l *Limiter) Admit(ctx context.Context, rec *apikey.Record, token string) Decision {
	now := l.now()
	month := MonthOf(now)
	// Keep a month's counter a little past its month, for billing checks.
	ttl := untilNextMonth(now) + 35*24*time.Hour
	var d Decision
	err := ErrUnavailable
	if l.shouldAsk(now) {
		d, err = l.store.Admit(ctx, Admission{KeyID: rec.ID, RPM: rec.RPM, Monthly: rec.MonthlyLimit, TPM: rec.TPM,
			Month: month, Token: token, MonthTTL: ttl, At: now})
		l.probing.Store(false)
		if err != nil && ctx.Err() == nil {
			l.downUntil.Store(l.now().Add(downFor).UnixNano())
		} else if err == nil {
			l.downUntil.Store(0)
		}
	}
	if err != nil {
		d = l.fallback.admit(rec, month)
		d.Degraded = true
		l.degraded.Add(1)
	} else {
		l.fallback.remember(rec.ID, month, d.MonthlyUsed)
	}
	d.Token, d.Month = token, month
	if !d.Allowed && d.Reason == ReasonQuota {
		d.RetryAfter = untilNextMonth(now)
	}
	return d
}

// shouldAsk reports whether to ask the store: always while it is up; while
// it is down, only past downUntil and only one caller at a time (the probe).
func (l *Limiter) shouldAsk(now time.Time) bool {
	until := l.downUntil.Load()
	if until == 0 {
		return true
	}
	if now.UnixNano() < until {
		return false
	}
	return l.probing.CompareAndSwap(false, true)
}

// AddTokens counts a finished request's tokens against its key's TPM. It
// is called only for keys with a TPM, after the response, off the request
// path. TPM is enforced at admission against the tokens of the last minute
// (two one-minute buckets, the older one weighted by how much of it is
// still inside the window): a request is refused once the window is full,
// so a key can exceed its TPM by at most the requests already in flight.
// While Redis is unreachable TPM is not enforced.
func (l *Limiter) AddTokens(ctx context.Context, keyID string, tokens int64) {
	if tokens <= 0 {
		return
	}
	_ = l.store.AddTokens(ctx, keyID, l.now(), tokens)
}

// Release gives back an admitted request that never reached the upstream.
func (l *Limiter) Release(ctx context.Context, keyID string, d Decision) {
	if !d.Allowed {
		return
	}
	if d.Degraded {
		l.fallback.release(keyID, d.Month)
		return
	}
	// Best effort: a failed release over-counts by one, never under-counts.
	_ = l.store.Release(ctx, keyID, d.Month, d.Token)
}
