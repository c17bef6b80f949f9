package auth

import (
	"net"
	"sync"
	"time"
)

// FailLimiter limits failed key verifications per client address, so that
// one client sending random keys cannot make the gateway ask Redis for
// each: a token bucket per address holds limit failures and refills at
// limit per window; an address whose bucket is empty is refused (429)
// before its next key reaches the store. Keys verified from the cache are
// not refused (see Verifier.VerifyGated), so a paying key keeps working
// from an address that someone else behind the same proxy abuses.
//
// Memory is bounded: at most maxAddrs addresses are tracked; a new one
// evicts the one tracked longest (an attacker cycling through that many
// addresses gets a fresh budget for each, which is no worse than having
// that many addresses). Each replica counts on its own.
type FailLimiter struct {
	limit  float64
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	ring    []string // tracked addresses in insertion order
	next    int
}

type bucket struct {
	tokens float64
	at     time.Time // when tokens was computed
}

// DefaultMaxAddrs is the number of addresses a FailLimiter tracks unless
// told otherwise.
const DefaultMaxAddrs = 65536

// NewFailLimiter allows limit failures per window per address, tracking at
// most maxAddrs addresses; now is the clock. A limit of 0 or less disables
// it (Blocked always says no).
func NewFailLimiter(limit int, window time.Duration, maxAddrs int, now func() time.Time) *FailLimiter {
	return &FailLimiter{
		limit: float64(limit), window: window, now: now,
		buckets: make(map[string]*bucket), ring: make([]string, max(maxAddrs, 1)),
	}
}

// refill brings b up to now. Callers hold l.mu.
func (l *FailLimiter) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.limit, b.tokens+l.limit*d.Seconds()/l.window.Seconds())
		b.at = now
	}
}

// Blocked reports whether addr has no failures left, and how long until it
// has one again.
func (l *FailLimiter) Blocked(addr string) (retryAfter time.Duration, blocked bool) {
	if l == nil || l.limit <= 0 {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		return 0, false
	}
	now := l.now()
	l.refill(b, now)
	if b.tokens >= 1 {
		return 0, false
	}
	return time.Duration((1 - b.tokens) / l.limit * float64(l.window)), true
}

// Fail records a failed verification from addr.
func (l *FailLimiter) Fail(addr string) {
	if l == nil || l.limit <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[addr]
	if !ok {
		if old := l.ring[l.next]; old != "" {
			delete(l.buckets, old)
		}
		l.ring[l.next] = addr
		l.next = (l.next + 1) % len(l.ring)
		b = &bucket{tokens: l.limit, at: now}
		l.buckets[addr] = b
	}
	l.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

// Tracked is how many addresses are tracked now.
func (l *FailLimiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// ClientKey is the unit failures are counted per: the IPv4 address, or the
// /64 of an IPv6 address (one host usually holds a whole /64).
func ClientKey(ip string) string {
	p := net.ParseIP(ip)
	if p == nil {
		return ip
	}
	if v4 := p.To4(); v4 != nil {
		return v4.String()
	}
	return p.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
