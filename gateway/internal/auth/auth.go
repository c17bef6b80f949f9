// Package auth verifies API keys. A presented key is hashed (HMAC with the
// server pepper) and looked up in the key store; verified keys are cached
// locally for a short TTL so the hot path usually makes no store call, and
// admin changes evict them through Invalidate (driven by Redis pub/sub).
//
// When the store is unreachable, keys verified before keep working from the
// cache even past their TTL (stale-if-error), and unknown keys get
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
)

// Store finds key records by key hash.
type Store interface {
	Lookup(ctx context.Context, hash string) (*apikey.Record, error)
}

type entry struct {
	rec     *apikey.Record
	expires time.Time
}

// Verifier checks presented keys.
type Verifier struct {
	store  Store
	pepper []byte
	ttl    time.Duration
	now    func() time.Time

	mu    sync.RWMutex
	cache map[string]entry // by key hash

	// Concurrent misses for one key share one store lookup, so a burst on
	// a cold key costs Redis one round trip, not one per request.
	flightMu sync.Mutex
	flights  map[string]*flight
}

type flight struct {
	done chan struct{}
	rec  *apikey.Record
	err  error
}

// NewVerifier returns a verifier; now is the clock.
func NewVerifier(store Store, pepper string, ttl time.Duration, now func() time.Time) *Verifier {
	return &Verifier{store: store, pepper: []byte(pepper), ttl: ttl, now: now, cache: map[string]entry{}, flights: map[string]*flight{}}
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
	if err := apikey.CheckFormat(key); err != nil {
		return nil, ErrInvalidKey
	}
	hash := apikey.Hash(v.pepper, key)
	now := v.now()
	v.mu.RLock()
	e, cached := v.cache[hash]
	v.mu.RUnlock()
	if cached && now.Before(e.expires) {
		return e.rec, nil
	}
	rec, err := v.lookup(ctx, hash)
	switch {
	case errors.Is(err, ErrNotFound):
		v.evictHash(hash)
		return nil, ErrInvalidKey
	case err != nil:
		if cached { // stale-if-error: the key was valid moments ago
			return e.rec, nil
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case rec.Hash != hash || !rec.Active():
		v.evictHash(hash)
		return nil, ErrInvalidKey
	}
	v.mu.Lock()
	v.cache[hash] = entry{rec: rec, expires: now.Add(v.ttl)}
	v.mu.Unlock()
	return rec, nil
}

// lookup asks the store once for all concurrent callers with the same hash,
// retrying once: a lookup is idempotent, and a single slow answer should
// not turn a valid key into a 503.
func (v *Verifier) lookup(ctx context.Context, hash string) (*apikey.Record, error) {
	v.flightMu.Lock()
	if f, ok := v.flights[hash]; ok {
		v.flightMu.Unlock()
		select {
		case <-f.done:
			return f.rec, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	v.flights[hash] = f
	v.flightMu.Unlock()

	f.rec, f.err = v.store.Lookup(ctx, hash)
	if f.err != nil && !errors.Is(f.err, ErrNotFound) && ctx.Err() == nil {
		f.rec, f.err = v.store.Lookup(ctx, hash)
	}
	v.flightMu.Lock()
	delete(v.flights, hash)
	v.flightMu.Unlock()
	close(f.done)
	return f.rec, f.err
}

// Invalidate forgets every cached key with the id (after an admin change).
// An empty id forgets everything, e.g. after a missed notification.
func (v *Verifier) Invalidate(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for h, e := range v.cache {
		if id == "" || e.rec.ID == id {
			delete(v.cache, h)
		}
	}
}

func (v *Verifier) evictHash(hash string) {
	v.mu.Lock()
	delete(v.cache, hash)
	v.mu.Unlock()
}
