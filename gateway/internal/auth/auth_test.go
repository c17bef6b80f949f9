package auth

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

// countingStore is a unit-test Store over a map; the Redis store itself
// is exercised against a real Redis in the app and end-to-end tests.
type countingStore struct {
	recs    map[string]*apikey.Record
	calls   atomic.Int64
	fail    atomic.Bool
	release chan struct{}
}

func (s *countingStore) Lookup(ctx context.Context, hash string) (*apikey.Record, error) {
	s.calls.Add(1)
	if s.release != nil {
		<-s.release
	}
	if s.fail.Load() {
		return nil, errors.New("redis: connection refused")
	}
	if r, ok := s.recs[hash]; ok {
		c := *r
		return &c, nil
	}
	return nil, ErrNotFound
}

func setup(t *testing.T) (*Verifier, *countingStore, string, *time.Time) {
	t.Helper()
	key, _ := apikey.Generate()
	h := apikey.Hash([]byte("p"), key)
	st := &countingStore{recs: map[string]*apikey.Record{h: {ID: "k1", Hash: h, Status: apikey.StatusActive}}}
	now := time.Unix(1000, 0)
	v := NewVerifier(st, "p", 30*time.Second, func() time.Time { return now })
	return v, st, key, &now
}

func TestVerify(t *testing.T) {
	v, st, key, now := setup(t)
	for _, bad := range []string{"", "sk-short", "nope-" + key, key + "x"} {
		if _, err := v.Verify(t.Context(), bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
	if _, err := v.Verify(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	calls := st.calls.Load()
	if _, err := v.Verify(t.Context(), key); err != nil || st.calls.Load() != calls {
		t.Errorf("cached key asked the store again (err %v)", err)
	}
	// Store down: the cached key keeps working even past its TTL.
	st.fail.Store(true)
	*now = now.Add(time.Hour)
	if _, err := v.Verify(t.Context(), key); err != nil {
		t.Errorf("stale-if-error: %v", err)
	}
	other, _ := apikey.Generate()
	if _, err := v.Verify(t.Context(), other); !errors.Is(err, ErrUnavailable) {
		t.Errorf("unknown key with the store down: %v, want ErrUnavailable", err)
	}
	// Invalidation forces a fresh lookup.
	st.fail.Store(false)
	v.Invalidate("k1")
	st.recs = map[string]*apikey.Record{}
	if _, err := v.Verify(t.Context(), key); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("revoked key: %v", err)
	}
}

func TestConcurrentMissesShareOneLookup(t *testing.T) {
	v, st, key, _ := setup(t)
	st.release = make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := v.Verify(t.Context(), key); err == nil {
				ok.Add(1)
			}
		}()
	}
	// Wait for the flight to reach the store, with a deadline so that a Verify
	// that never looks up fails the test instead of hanging it.
	deadline := time.Now().Add(5 * time.Second)
	for st.calls.Load() == 0 {
		if time.Now().After(deadline) {
			close(st.release)
			t.Fatal("no store lookup within 5s of 50 concurrent Verify calls")
		}
		time.Sleep(time.Millisecond)
	}
	// Callers that arrive after the flight ends find the cache filled: one
	// lookup either way.
	close(st.release)
	wg.Wait()
	if ok.Load() != 50 || st.calls.Load() != 1 {
		t.Errorf("%d verified with %d lookups, want 50 with 1", ok.Load(), st.calls.Load())
	}
}

func TestBearerToken(t *testing.T) {
	for in, want := range map[string]string{"Bearer sk-x": "sk-x", "bearer sk-y ": "sk-y", "Bearer ": "", "Basic x": "", "": ""} {
		got, err := BearerToken(in)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
}

// TestNegCacheBounded adds far more unknown hashes than the cache holds:
// it never holds more than its size, and keeps the newest.
func TestNegCacheBounded(t *testing.T) {
	n := newNegCache(100)
	now := time.Unix(1_000_000, 0)
	for i := range 10_000 {
		n.add(strconv.Itoa(i), now)
		if n.len() > 100 {
			t.Fatalf("after %d adds the cache holds %d hashes, want at most 100", i+1, n.len())
		}
	}
	if !n.has("9999", now, time.Second) || n.has("0", now, time.Second) {
		t.Error("the cache did not keep the newest hashes")
	}
	n.add("9999", now) // a hash added twice holds two slots, one entry
	if n.len() > 100 {
		t.Errorf("re-adding a hash: %d entries, want at most 100", n.len())
	}
}

// TestFailLimiter: limit failures, then blocked with the time to the next
// allowed one; other addresses are not affected; the bucket refills.
func TestFailLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewFailLimiter(3, time.Minute, 10, func() time.Time { return now })
	for range 3 {
		if _, blocked := l.Blocked("a"); blocked {
			t.Fatal("blocked before the limit")
		}
		l.Fail("a")
	}
	wait, blocked := l.Blocked("a")
	if !blocked || wait != 20*time.Second {
		t.Fatalf("after 3 failures: blocked %v, retry after %v; want true, 20s", blocked, wait)
	}
	if _, blocked := l.Blocked("b"); blocked {
		t.Error("another address is blocked")
	}
	now = now.Add(20 * time.Second)
	if _, blocked := l.Blocked("a"); blocked {
		t.Error("still blocked after a refill")
	}
}

// TestFailLimiterBounded: failures from many more addresses than the cap
// never track more than the cap.
func TestFailLimiterBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := NewFailLimiter(1, time.Minute, 50, func() time.Time { return now })
	for i := range 5_000 {
		l.Fail("10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256))
		if l.Tracked() > 50 {
			t.Fatalf("after %d addresses %d are tracked, want at most 50", i+1, l.Tracked())
		}
	}
	if _, blocked := l.Blocked("10.0.19.135"); !blocked { // the last one
		t.Error("the newest address is not blocked")
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"not-an-ip":            "not-an-ip",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
