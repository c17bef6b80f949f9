package redis

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/auth"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/testkit/testenv"
)

const pepper = "test-pepper"

// gatedStore wraps the real Redis store: it counts lookups and, when armed,
// holds the next lookup's answer (read from Redis) until released, which is
// a reply still in flight.
type gatedStore struct {
	inner   auth.Store
	calls   atomic.Int64
	armed   atomic.Bool
	held    chan struct{} // a held lookup has its answer
	release chan struct{}
}

func newGatedStore(inner auth.Store) *gatedStore {
	return &gatedStore{inner: inner, held: make(chan struct{}, 1), release: make(chan struct{})}
}

func (s *gatedStore) Lookup(ctx context.Context, hash string) (*apikey.Record, error) {
	s.calls.Add(1)
	rec, err := s.inner.Lookup(ctx, hash)
	if s.armed.CompareAndSwap(true, false) {
		s.held <- struct{}{}
		<-s.release
	}
	return rec, err
}

// clock is an injectable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	srv   *testenv.Server
	rdb   *goredis.Client
	store *gatedStore
	clock *clock
	v     *auth.Verifier
}

func newEnv(t *testing.T, opts ...auth.Option) *env {
	t.Helper()
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	e := &env{srv: srv, rdb: rdb, store: newGatedStore(NewStore(rdb, 2*time.Second)), clock: &clock{now: time.Unix(1_000_000, 0)}}
	e.v = auth.NewVerifier(e.store, pepper, 30*time.Second, e.clock.Now, opts...)
	return e
}

// addKey writes an active key record the way admin does and returns the key.
func (e *env) addKey(t *testing.T, id string) string {
	t.Helper()
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	e.put(t, &apikey.Record{ID: id, Hash: apikey.Hash([]byte(pepper), key), Status: apikey.StatusActive})
	return key
}

func (e *env) put(t *testing.T, rec *apikey.Record) {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Set(t.Context(), apikey.AuthKey(rec.Hash), b, 0).Err(); err != nil {
		t.Fatalf("write key record: %v", err)
	}
}

// revoke marks the key revoked in Redis and publishes the change, as admin does.
func (e *env) revoke(t *testing.T, id, key string) {
	t.Helper()
	e.put(t, &apikey.Record{ID: id, Hash: apikey.Hash([]byte(pepper), key), Status: apikey.StatusRevoked})
	if err := e.rdb.Publish(t.Context(), apikey.ChangedChannel, id).Err(); err != nil {
		t.Fatalf("publish change: %v", err)
	}
}

func (e *env) verify(t *testing.T, key string) error {
	t.Helper()
	_, err := e.v.Verify(t.Context(), key)
	return err
}

func waitHeld(t *testing.T, s *gatedStore) {
	t.Helper()
	select {
	case <-s.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the store lookup was not reached within 10s")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRevokeDuringLookup revokes a key while a lookup of it holds the old,
// active answer: the lookup must not cache it, so the next request sees the
// revoke at once instead of after KEY_CACHE_TTL.
func TestRevokeDuringLookup(t *testing.T) {
	tests := []struct {
		name string
		// during runs while the first lookup is held, after the revoke; it
		// returns what the test then checks.
		during func(t *testing.T, e *env, key string) error
	}{
		{name: "next request after the flight", during: func(t *testing.T, e *env, key string) error { return nil }},
		{name: "request arriving after the revoke does not join the older flight", during: func(t *testing.T, e *env, key string) error {
			// Runs while the first flight is still held: it must ask Redis
			// itself. Joining the held flight would wait for it: the deadline
			// turns that into a failure instead of a hang.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err := e.v.Verify(ctx, key)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.v.SetWatched(true) // the full TTL applies: only the generation can save us
			key := e.addKey(t, "k1")

			e.store.armed.Store(true)
			first := make(chan error, 1)
			go func() {
				_, err := e.v.Verify(context.WithoutCancel(t.Context()), key)
				first <- err
			}()
			waitHeld(t, e.store) // the lookup has read the active record
			e.revoke(t, "k1", key)
			e.v.Invalidate("k1") // what Listen does on the published change
			if err := tc.during(t, e, key); err != nil && !errors.Is(err, auth.ErrInvalidKey) {
				t.Fatalf("request during the held lookup: %v, want ErrInvalidKey", err)
			}
			close(e.store.release)
			if err := <-first; err != nil {
				t.Fatalf("the lookup that raced the revoke: %v (it read the key active)", err)
			}

			calls := e.store.calls.Load()
			if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
				t.Errorf("after the revoke: %v, want ErrInvalidKey (the stale record was cached)", err)
			}
			if e.store.calls.Load() == calls {
				t.Error("the request after the revoke did not ask the store")
			}
		})
	}
}

// TestConcurrentJoinersRespectInvalidate: callers that joined a flight
// before the revoke get its answer, but none of them caches it.
func TestConcurrentJoinersRespectInvalidate(t *testing.T) {
	e := newEnv(t)
	e.v.SetWatched(true)
	key := e.addKey(t, "k1")
	e.store.armed.Store(true)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _, _ = e.v.Verify(context.WithoutCancel(t.Context()), key) })
	}
	waitHeld(t, e.store)
	e.revoke(t, "k1", key)
	e.v.Invalidate("k1")
	close(e.store.release)
	wg.Wait()
	if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
		t.Errorf("after the revoke: %v, want ErrInvalidKey", err)
	}
}

// TestStaleIfErrorMaxAge stops Redis: a cached key keeps working while it
// was verified less than the cap ago, and beyond it gets ErrUnavailable.
func TestStaleIfErrorMaxAge(t *testing.T) {
	e := newEnv(t, auth.WithStaleMaxAge(15*time.Minute))
	key := e.addKey(t, "k1")
	if err := e.verify(t, key); err != nil {
		t.Fatal(err)
	}
	e.srv.Stop(t)
	e.clock.Add(14 * time.Minute)
	if err := e.verify(t, key); err != nil {
		t.Errorf("14 min after verification, Redis down: %v, want the cached key", err)
	}
	e.clock.Add(2 * time.Minute)
	if err := e.verify(t, key); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("16 min after verification, Redis down: %v, want ErrUnavailable", err)
	}
	e.srv.Start(t)
	// Redis answers again; its data went with the process (no persistence).
	e.put(t, &apikey.Record{ID: "k1", Hash: apikey.Hash([]byte(pepper), key), Status: apikey.StatusActive})
	if err := e.verify(t, key); err != nil {
		t.Errorf("after Redis is back: %v", err)
	}
}

// recorder is a Watcher that logs what Listen tells the verifier.
type recorder struct {
	v      *auth.Verifier
	mu     sync.Mutex
	events []string
}

func (r *recorder) Invalidate(id string) {
	r.v.Invalidate(id)
	r.mu.Lock()
	r.events = append(r.events, "invalidate:"+id)
	r.mu.Unlock()
}

func (r *recorder) SetWatched(ok bool) {
	r.v.SetWatched(ok)
	r.mu.Lock()
	r.events = append(r.events, map[bool]string{true: "watched", false: "unwatched"}[ok])
	r.mu.Unlock()
}

func (r *recorder) since(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events[min(n, len(r.events)):]...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// listen runs Listen on rdb until the test ends.
func listen(t *testing.T, rdb goredis.UniversalClient, w Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Listen(ctx, rdb, w, slog.New(slog.NewTextHandler(t.Output(), nil)))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// TestListenSubscriptionKilled kills the subscription's connection on the
// real Redis: Listen reports it unwatched, subscribes again, evicts
// everything (changes may have been missed) and reports it watched.
func TestListenSubscriptionKilled(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{v: e.v}
	listen(t, e.rdb, rec)
	waitFor(t, "the subscription", e.v.Watched)
	key := e.addKey(t, "k1")
	if err := e.verify(t, key); err != nil {
		t.Fatal(err)
	}
	mark := rec.len()
	if err := e.rdb.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Err(); err != nil {
		t.Fatalf("client kill: %v", err)
	}
	waitFor(t, "unwatched, then watched again", func() bool {
		ev := rec.since(mark)
		return len(ev) >= 3 && ev[len(ev)-1] == "watched"
	})
	ev := rec.since(mark)
	if ev[0] != "unwatched" || ev[len(ev)-2] != "invalidate:" {
		t.Errorf("events after the kill %v, want unwatched ... invalidate: watched", ev)
	}
	calls := e.store.calls.Load()
	if err := e.verify(t, key); err != nil || e.store.calls.Load() == calls {
		t.Errorf("after the resubscription: err %v, store asked %v, want the cache emptied", err, e.store.calls.Load() != calls)
	}
	// The new subscription delivers changes.
	e.revoke(t, "k1", key)
	waitFor(t, "the revoke through the new subscription", func() bool {
		return errors.Is(e.verify(t, key), auth.ErrInvalidKey)
	})
}

// TestListenHalfOpen makes the subscription's connection silently drop
// everything (a half-open TCP connection, through a proxy to the real
// Redis): Listen notices within a few ping intervals, cached keys are then
// trusted for UnwatchedTTL only, so a revoke whose notification is lost is
// still seen; when connections work again Listen resubscribes and evicts
// everything.
func TestListenHalfOpen(t *testing.T) {
	e := newEnv(t)
	px := newBlackholeProxy(t, e.srv.Addr)
	sub := goredis.NewClient(&goredis.Options{Addr: px.addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = sub.Close() })
	listen(t, sub, e.v)
	waitFor(t, "the subscription", e.v.Watched)

	revoked := e.addKey(t, "k-revoked")
	fresh := e.addKey(t, "k-fresh")
	if err := e.verify(t, revoked); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Second)
	calls := e.store.calls.Load()
	if err := e.verify(t, revoked); err != nil || e.store.calls.Load() != calls {
		t.Fatalf("watched: a key verified 2s ago was not served from the cache (err %v)", err)
	}

	px.blackhole(true)
	waitFor(t, "the half-open subscription to be noticed", func() bool { return !e.v.Watched() })
	e.revoke(t, "k-revoked", revoked) // the notification is lost
	if err := e.verify(t, revoked); !errors.Is(err, auth.ErrInvalidKey) {
		t.Errorf("unwatched: a key verified 2s ago and revoked since: %v, want ErrInvalidKey", err)
	}
	// The bound itself: trusted for less than UnwatchedTTL from verification.
	if err := e.verify(t, fresh); err != nil {
		t.Fatal(err)
	}
	calls = e.store.calls.Load()
	e.clock.Add(auth.UnwatchedTTL / 2)
	if err := e.verify(t, fresh); err != nil || e.store.calls.Load() != calls {
		t.Errorf("unwatched, verified %v ago: err %v, store asked %v, want the cache", auth.UnwatchedTTL/2, err, e.store.calls.Load() != calls)
	}
	e.clock.Add(auth.UnwatchedTTL / 2)
	if err := e.verify(t, fresh); err != nil || e.store.calls.Load() == calls {
		t.Errorf("unwatched, verified %v ago: err %v, store asked %v, want the store", auth.UnwatchedTTL, err, e.store.calls.Load() != calls)
	}

	px.blackhole(false)
	waitFor(t, "the subscription to recover", e.v.Watched)
	calls = e.store.calls.Load()
	if err := e.verify(t, fresh); err != nil || e.store.calls.Load() == calls {
		t.Errorf("after recovery: err %v, store asked %v, want the cache emptied", err, e.store.calls.Load() != calls)
	}
}

// blackholeProxy forwards TCP to a real server; while black-holed, every
// connection open then or accepted then swallows all bytes both ways and
// stays open, like a peer that vanished without a FIN.
type blackholeProxy struct {
	ln   net.Listener
	hole atomic.Bool
	mu   sync.Mutex
	dead map[net.Conn]bool // black-holed for good: their byte stream is cut
	wg   sync.WaitGroup
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	ln, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, dead: map[net.Conn]bool{}}
	var conns []net.Conn
	var cmu sync.Mutex
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			cmu.Lock()
			conns = append(conns, c, u)
			cmu.Unlock()
			p.mu.Lock()
			if p.hole.Load() {
				p.dead[c] = true
			}
			p.mu.Unlock()
			p.wg.Go(func() { p.pipe(c, u, c) })
			p.wg.Go(func() { p.pipe(u, c, c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		cmu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		cmu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) addr() string { return p.ln.Addr().String() }

// blackhole turns the black hole on (every open connection is cut for
// good) or off (new connections work).
func (p *blackholeProxy) blackhole(on bool) {
	p.mu.Lock()
	p.hole.Store(on)
	p.mu.Unlock()
}

// pipe copies src to dst for the client connection c, dropping the bytes
// once c is black-holed.
func (p *blackholeProxy) pipe(src, dst, c net.Conn) {
	defer func() { _, _ = src.Close(), dst.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if p.hole.Load() {
				p.dead[c] = true
			}
			dead := p.dead[c]
			p.mu.Unlock()
			if !dead {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil { // EOF or closed: the deferred Close tells the other side
			return
		}
	}
}
