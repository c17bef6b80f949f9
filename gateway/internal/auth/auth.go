// Package auth verifies API keys. A presented key is hashed (HMAC with the
// server pepper) and looked up in the key store; verified keys are cached
// locally for a short TTL so the hot path usually makes no store call, and
// admin changes evict them through Invalidate (driven by Redis pub/sub).
//
// A revoke is seen within about a second, always:
//   - a lookup that was in flight when Invalidate ran does not cache its
//     (possibly stale) answer: every Invalidate bumps a generation, and a
//     result is stored only if the generation is the one noted before the
//     store was asked;
//   - while the change feed is not known to work (SetWatched(false): the
//     subscription is down, half-open or not yet confirmed), a cached key is
//     trusted for at most UnwatchedTTL after it was verified, not the TTL.
//
// Unknown keys are remembered too (a negative cache, NegativeTTL, at most
// MaxNegative hashes), so that a flood of random well-formed keys does not
// cost Redis one lookup each. Creating a key publishes its id on the change
// feed, and every Invalidate forgets all unknown hashes (the id does not
// say which hash it had), so a new key works at once; while the feed is
// not known to work, an unknown hash is remembered for UnwatchedTTL at
// most, the same bound as a revoke.
//
// When the store is unreachable, keys verified before keep working from the
// cache even past their TTL (stale-if-error), up to a maximum age
// (WithStaleMaxAge); unknown keys, and keys older than that, get
// ErrUnavailable rather than being refused as invalid.
package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

var (
	// ErrNoKey means the request carried no bearer token.
	ErrNoKey = errors.New("no api key")
	// ErrInvalidKey means the key is unknown, malformed, revoked or disabled.
	ErrInvalidKey = errors.New("invalid api key")
	// ErrUnavailable means the key store could not be asked.
	ErrUnavailable = errors.New("key store unavailable")
	// ErrNotFound is returned by a Store for an unknown hash.
	ErrNotFound = errors.New("key not found")
	// errTooStale is why a cached key is not used during an outage.
	errTooStale = errors.New("cached key older than the stale-if-error limit")
)

// UnwatchedTTL bounds how long a cached key is trusted, from its
// verification, while the change feed is not known to work (or the TTL, if
// shorter). It is the revoke bound in that state.
const UnwatchedTTL = time.Second

// NegativeTTL is how long a hash the store called unknown is
// refused without asking again.
const NegativeTTL = 2 * time.Second

// MaxNegative bounds the negative cache; beyond it the oldest entries are
// dropped (FIFO, which is oldest-expiring too since the TTL is fixed).
const MaxNegative = 16384

// Store finds key records by key hash.
type Store interface {
	Lookup(ctx context.Context, hash string) (*apikey.Record, error)
}

type entry struct {
	rec      *apikey.Record
	verified time.Time // when the store last said the key is active
	expires  time.Time
}

// Verifier checks presented keys.
type Verifier struct {
	store    Store
	pepper   []byte
	ttl      time.Duration
	staleMax time.Duration // 0: no limit
	now      func() time.Time

	mu      sync.RWMutex
	cache   map[string]entry // by key hash
	gen     uint64           // bumped by every Invalidate
	watched bool             // the change feed is known to deliver
	neg     negCache         // unknown hashes, under mu

	// Concurrent misses for one key share one store lookup, so a burst on
	// a cold key costs Redis one round trip, not one per request.
	flightMu sync.Mutex
	flights  map[string]*flight
}

type flight struct {
	gen  uint64 // v.gen before the store was asked
	done chan struct{}
	rec  *apikey.Record
	err  error
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithStaleMaxAge caps stale-if-error: during a store outage a cached key
// is used only if it was verified at most d ago. Zero (the default) means
// no cap.
func WithStaleMaxAge(d time.Duration) Option {
	return func(v *Verifier) { v.staleMax = d }
}

// NewVerifier returns a verifier; now is the clock. It starts unwatched
// (see SetWatched).
func NewVerifier(store Store, pepper string, ttl time.Duration, now func() time.Time, opts ...Option) *Verifier {
	v := &Verifier{store: store, pepper: []byte(pepper), ttl: ttl, now: now, cache: map[string]entry{}, flights: map[string]*flight{},
		neg: newNegCache(MaxNegative)}
	for _, o := range opts {
		o(v)
	}
	return v
}

// BearerToken extracts the token of an Authorization header value.
func BearerToken(header string) (string, error) {
	const p = "Bearer "
	if len(header) <= len(p) || !strings.EqualFold(header[:len(p)], p) {
		return "", ErrNoKey
	}
	return strings.TrimSpace(header[len(p):]), nil
}

// Verify returns the record of an active key.
func (v *Verifier) Verify(ctx context.Context, key string) (*apikey.Record, error) {
	return v.VerifyGated(ctx, key, nil)
}

// VerifyGated is Verify, except that gate (if not nil) runs just before the
// store would be asked: when it returns an error, the store is not asked
// and that error is returned as is. Keys answered from the cache, positive
// or negative, never reach the gate; it is how the caller refuses clients
// that failed too often without making a paying key from the cache wait.
func (v *Verifier) VerifyGated(ctx context.Context, key string, gate func() error) (*apikey.Record, error) {
	if err := apikey.CheckFormat(key); err != nil {
		return nil, ErrInvalidKey
	}
	hash := apikey.Hash(v.pepper, key)
	now := v.now()
	v.mu.RLock()
	e, cached := v.cache[hash]
	fresh := cached && v.trusted(e, now)
	unknown := !fresh && v.neg.has(hash, now, v.negTTL())
	v.mu.RUnlock()
	if fresh {
		return e.rec, nil
	}
	if unknown {
		return nil, ErrInvalidKey
	}
	if gate != nil {
		if err := gate(); err != nil {
			return nil, err
		}
	}
	rec, err := v.lookup(ctx, hash)
	switch {
	case errors.Is(err, ErrNotFound):
		v.evictHash(hash)
		return nil, ErrInvalidKey
	case err != nil:
		return v.stale(hash, now, err)
	case rec.Hash != hash || !rec.Active():
		v.evictHash(hash)
		return nil, ErrInvalidKey
	}
	return rec, nil
}

// trusted reports whether a cached entry may be used without asking the
// store. Callers hold v.mu.
func (v *Verifier) trusted(e entry, now time.Time) bool {
	if !now.Before(e.expires) {
		return false
	}
	return v.watched || now.Sub(e.verified) < min(v.ttl, UnwatchedTTL)
}

// negTTL is how long an unknown hash is remembered now: shorter while the
// change feed (which tells of a newly created key) is not known to work.
// Callers hold v.mu.
func (v *Verifier) negTTL() time.Duration {
	if v.watched {
		return NegativeTTL
	}
	return min(NegativeTTL, UnwatchedTTL)
}

// stale answers a failed lookup from the cache (stale-if-error: the key was
// valid moments ago). The cache is read again: an Invalidate that ran while
// the lookup failed must win.
func (v *Verifier) stale(hash string, now time.Time, err error) (*apikey.Record, error) {
	v.mu.RLock()
	e, ok := v.cache[hash]
	v.mu.RUnlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case v.staleMax > 0 && now.Sub(e.verified) > v.staleMax:
		return nil, fmt.Errorf("%w: %w: %w", ErrUnavailable, errTooStale, err)
	}
	return e.rec, nil
}

// lookup asks the store once for all concurrent callers with the same hash,
// retrying once: a lookup is idempotent, and a single slow answer should
// not turn a valid key into a 503. The flight caches an active record
// itself, and only if no Invalidate ran since it started; a caller that
// arrives after an Invalidate does not join an older flight.
func (v *Verifier) lookup(ctx context.Context, hash string) (*apikey.Record, error) {
	v.mu.RLock()
	gen := v.gen
	v.mu.RUnlock()
	v.flightMu.Lock()
	if f, ok := v.flights[hash]; ok && f.gen == gen {
		v.flightMu.Unlock()
		select {
		case <-f.done:
			return f.rec, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A flight that ended just now cached its answer before it left.
	v.mu.RLock()
	e, cached := v.cache[hash]
	fresh := cached && v.trusted(e, v.now())
	v.mu.RUnlock()
	if fresh {
		v.flightMu.Unlock()
		return e.rec, nil
	}
	f := &flight{gen: gen, done: make(chan struct{})}
	v.flights[hash] = f
	v.flightMu.Unlock()

	f.rec, f.err = v.store.Lookup(ctx, hash)
	if f.err != nil && !errors.Is(f.err, ErrNotFound) && ctx.Err() == nil {
		f.rec, f.err = v.store.Lookup(ctx, hash)
	}
	switch {
	case f.err == nil && f.rec.Hash == hash && f.rec.Active():
		now := v.now()
		v.mu.Lock()
		if v.gen == f.gen {
			v.cache[hash] = entry{rec: f.rec, verified: now, expires: now.Add(v.ttl)}
		}
		v.mu.Unlock()
	case errors.Is(f.err, ErrNotFound):
		// Remembered only if no Invalidate (a key created meanwhile, say)
		// ran since the store was asked. Inactive records are not: a
		// revoked key is asked about again, as before (the per-address
		// failure limit covers replays of one).
		now := v.now()
		v.mu.Lock()
		if v.gen == f.gen {
			v.neg.add(hash, now)
		}
		v.mu.Unlock()
	}
	v.flightMu.Lock()
	if v.flights[hash] == f {
		delete(v.flights, hash)
	}
	v.flightMu.Unlock()
	close(f.done)
	return f.rec, f.err
}

// Invalidate forgets every cached key with the id (after an admin change),
// and keeps lookups already in flight from caching what they read. An empty
// id, after notifications may have been missed, makes every cached key be
// looked up again before it is trusted, but keeps it as the stale-if-error
// answer (within KEY_STALE_MAX_AGE) should that lookup fail: nothing says
// it changed, and dropping it would turn a slow Redis into 503s.
// Every call also forgets every unknown hash whatever the id: a created or
// rotated key publishes only its id, not its hash, and key changes are rare
// enough for that.
func (v *Verifier) Invalidate(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gen++
	v.neg.clear()
	for h, e := range v.cache {
		switch {
		case id == "":
			e.expires = time.Time{}
			v.cache[h] = e
		case e.rec.ID == id:
			delete(v.cache, h)
		}
	}
}

// SetWatched tells the verifier whether the change feed that calls
// Invalidate is known to work. While it is not, cached keys are trusted for
// UnwatchedTTL at most. Whoever sets it back to true must first Invalidate
// everything, since changes may have been missed.
func (v *Verifier) SetWatched(ok bool) {
	v.mu.Lock()
	v.watched = ok
	v.mu.Unlock()
}

// Watched reports what SetWatched set last.
func (v *Verifier) Watched() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.watched
}

func (v *Verifier) evictHash(hash string) {
	v.mu.Lock()
	delete(v.cache, hash)
	v.mu.Unlock()
}

// negCache is a size-capped set of unknown hashes with the time each was
// learnt. A ring of the hashes in insertion order bounds it: adding to a
// full ring drops the oldest slot's hash. A hash added twice holds two
// slots and leaves at the first one's turn, early, which is harmless in a
// cache; the map never holds more hashes than the ring has slots.
type negCache struct {
	at   map[string]time.Time
	ring []string
	next int
}

func newNegCache(size int) negCache {
	return negCache{at: make(map[string]time.Time), ring: make([]string, size)}
}

func (n *negCache) has(hash string, now time.Time, ttl time.Duration) bool {
	t, ok := n.at[hash]
	return ok && now.Sub(t) < ttl
}

func (n *negCache) add(hash string, now time.Time) {
	if old := n.ring[n.next]; old != "" {
		delete(n.at, old)
	}
	n.ring[n.next] = hash
	n.next = (n.next + 1) % len(n.ring)
	n.at[hash] = now
}

func (n *negCache) clear() {
	clear(n.at)
	clear(n.ring)
	n.next = 0
}

func (n *negCache) len() int { return len(n.at) }
