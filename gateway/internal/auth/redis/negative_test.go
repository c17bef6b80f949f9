package redis

import (
	"errors"
	"testing"

	"github.com/qyai/qyai/gateway/internal/auth"
	"github.com/qyai/qyai/pkg/apikey"
)

// TestNegativeCache sends one unknown well-formed key many times: Redis is
// asked once within auth.NegativeTTL, and again after it.
func TestNegativeCache(t *testing.T) {
	e := newEnv(t)
	e.v.SetWatched(true)
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
			t.Fatalf("request %d: %v, want ErrInvalidKey", i, err)
		}
	}
	if got := e.store.calls.Load(); got != 1 {
		t.Fatalf("50 requests with one unknown key asked Redis %d times, want 1", got)
	}
	e.clock.Add(auth.NegativeTTL)
	if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
		t.Fatalf("after the TTL: %v, want ErrInvalidKey", err)
	}
	if got := e.store.calls.Load(); got != 2 {
		t.Fatalf("after the negative TTL Redis was asked %d times in all, want 2", got)
	}
}

// TestNegativeCacheKeyCreated looks a key up before it exists, then creates
// it the way admin does (record, then the id published on the change
// channel): the key works as soon as the change arrives, without the
// negative TTL passing (the injected clock never moves).
func TestNegativeCacheKeyCreated(t *testing.T) {
	e := newEnv(t)
	listen(t, e.rdb, e.v)
	waitFor(t, "the subscription", e.v.Watched)
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
		t.Fatalf("before the key exists: %v, want ErrInvalidKey", err)
	}
	e.put(t, &apikey.Record{ID: "k-new", Hash: apikey.Hash([]byte(pepper), key), Status: apikey.StatusActive})
	if err := e.rdb.Publish(t.Context(), apikey.ChangedChannel, "k-new").Err(); err != nil {
		t.Fatalf("publish change: %v", err)
	}
	waitFor(t, "the created key to verify", func() bool { return e.verify(t, key) == nil })
}

// TestNegativeCacheUnwatched: while the change feed is not known to work
// (a create's notification may be lost), an unknown key is remembered for
// auth.UnwatchedTTL at most.
func TestNegativeCacheUnwatched(t *testing.T) {
	e := newEnv(t) // starts unwatched
	key, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.verify(t, key); !errors.Is(err, auth.ErrInvalidKey) {
		t.Fatalf("before the key exists: %v, want ErrInvalidKey", err)
	}
	e.put(t, &apikey.Record{ID: "k-new", Hash: apikey.Hash([]byte(pepper), key), Status: apikey.StatusActive})
	e.clock.Add(auth.UnwatchedTTL)
	if err := e.verify(t, key); err != nil {
		t.Fatalf("a key created while unwatched, %v later: %v", auth.UnwatchedTTL, err)
	}
}
