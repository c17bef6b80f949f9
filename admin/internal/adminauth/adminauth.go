// Package adminauth guards the admin API: named bearer tokens compared in
// constant time, and a limit on failed attempts per client address.
//
// The limit lives in the memory of each admin replica: with N replicas
// behind a load balancer a client gets up to N times the attempts. Admin
// tokens are long random strings, so the limit is there to stop noise and
// to make guessing visible, not to be exact. A valid token is accepted even
// from a client over the limit (see the admin httpapi's requireAdmin), so a
// client behind the same load balancer cannot lock operators out.
package adminauth

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"sync"
	"time"
)

// Token is one admin token and the name that the audit trail records for
// whoever uses it.
type Token struct {
	Name   string
	Secret string
}

// Tokens identifies presented admin tokens.
type Tokens struct {
	names []string
	sums  [][sha256.Size]byte
}

// NewTokens returns the set of ts.
func NewTokens(ts []Token) *Tokens {
	t := &Tokens{}
	for _, x := range ts {
		t.names = append(t.names, x.Name)
		t.sums = append(t.sums, sha256.Sum256([]byte(x.Secret)))
	}
	return t
}

// Identify returns the name of the token presented. It compares SHA-256
// digests in constant time with every configured token, without stopping
// at a match, so that neither the content, the length nor the position of
// a token leaks through timing.
func (t *Tokens) Identify(presented string) (name string, ok bool) {
	sum := sha256.Sum256([]byte(presented))
	match := -1
	for i := range t.sums {
		if subtle.ConstantTimeCompare(sum[:], t.sums[i][:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", false
	}
	return t.names[match], true
}

// maxClients bounds the memory of a Limiter. Beyond it, new clients are not
// tracked (an attacker with that many addresses gets the same few tries
// from each anyway).
const maxClients = 100_000

// Limiter counts failed attempts per client in a sliding window: after Max
// failures within Window, a client is refused until the oldest of them is
// Window old.
type Limiter struct {
	max    int
	window time.Duration
	now    func() time.Time

	mu       sync.Mutex
	failures map[string][]time.Time // within the window, oldest first
	sweepAt  time.Time
}

// NewLimiter returns a Limiter allowing max failures per window; now is the
// clock.
func NewLimiter(max int, window time.Duration, now func() time.Time) *Limiter {
	return &Limiter{max: max, window: window, now: now, failures: map[string][]time.Time{}}
}

// Blocked reports whether client may not try now, and when it may.
func (l *Limiter) Blocked(client string) (retryAfter time.Duration, blocked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blocked(client, l.now())
}

func (l *Limiter) blocked(client string, now time.Time) (time.Duration, bool) {
	f := l.recent(client, now)
	if len(f) < l.max {
		return 0, false
	}
	return f[len(f)-l.max].Add(l.window).Sub(now), true
}

// Fail records a failed attempt of client and reports whether the client is
// blocked now.
func (l *Limiter) Fail(client string) (retryAfter time.Duration, blocked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.After(l.sweepAt) {
		l.sweep(now)
	}
	f := l.recent(client, now)
	if f == nil && len(l.failures) >= maxClients {
		return 0, false
	}
	l.failures[client] = append(f, now)
	return l.blocked(client, now)
}

// recent drops the client's failures that left the window.
func (l *Limiter) recent(client string, now time.Time) []time.Time {
	f := l.failures[client]
	i := 0
	for i < len(f) && !f[i].After(now.Add(-l.window)) {
		i++
	}
	if i == len(f) {
		delete(l.failures, client)
		return nil
	}
	// Keep at most max: older failures cannot change the answer.
	f = f[max(i, len(f)-l.max):]
	l.failures[client] = f
	return f
}

// sweep forgets clients without recent failures, once per window.
func (l *Limiter) sweep(now time.Time) {
	for c := range l.failures {
		l.recent(c, now)
	}
	l.sweepAt = now.Add(l.window)
}

// ClientKey is the unit that failures are counted per: the IPv4 address, or
// the /64 of an IPv6 address (one host usually holds a whole /64).
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
