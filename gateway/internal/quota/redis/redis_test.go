package redis

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/quota"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/testkit/testenv"
)

func newLimiter(t *testing.T) (*quota.Limiter, *goredis.Client, *testenv.Server) {
	t.Helper()
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, PoolSize: 64, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return quota.NewLimiter(NewStore(rdb, time.Second), 1, time.Now), rdb, srv
}

// admitMany runs n admissions at once and counts the outcomes.
func admitMany(l *quota.Limiter, rec *apikey.Record, n int) (allowed, rate, quotaRefusals int64) {
	var wg sync.WaitGroup
	var a, r, q atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := l.Admit(context.Background(), rec, fmt.Sprintf("req-%d", i))
			switch {
			case d.Allowed:
				a.Add(1)
			case d.Reason == quota.ReasonRate:
				r.Add(1)
			case d.Reason == quota.ReasonQuota:
				q.Add(1)
			}
		}()
	}
	wg.Wait()
	return a.Load(), r.Load(), q.Load()
}

func TestRPMExactUnderConcurrency(t *testing.T) {
	l, _, _ := newLimiter(t)
	rec := &apikey.Record{ID: "key_rpm", RPM: 30, MonthlyLimit: 1000}
	allowed, rate, q := admitMany(l, rec, 200)
	if allowed != 30 || rate != 170 || q != 0 {
		t.Fatalf("allowed %d rate-limited %d quota %d; want 30/170/0", allowed, rate, q)
	}
	d := l.Admit(t.Context(), rec, "one-more")
	if d.Allowed || d.Reason != quota.ReasonRate || d.Remaining != 0 || d.Limit != 30 {
		t.Errorf("decision after the window filled: %+v", d)
	}
	if d.RetryAfter <= 0 || d.RetryAfter > quota.Window {
		t.Errorf("retry after %v, want within the window", d.RetryAfter)
	}
}

func TestMonthlyQuotaExactAndReleased(t *testing.T) {
	l, rdb, _ := newLimiter(t)
	rec := &apikey.Record{ID: "key_month", RPM: 1000, MonthlyLimit: 50}
	allowed, rate, q := admitMany(l, rec, 120)
	if allowed != 50 || q != 70 || rate != 0 {
		t.Fatalf("allowed %d quota-refused %d rate %d; want 50/70/0", allowed, q, rate)
	}
	month := quota.MonthOf(time.Now())
	if n, _ := rdb.Get(t.Context(), apikey.MonthCounterKey(rec.ID, month)).Int64(); n != 50 {
		t.Errorf("monthly counter %d, want 50", n)
	}
	d := l.Admit(t.Context(), rec, "refused")
	if d.Reason != quota.ReasonQuota || d.RetryAfter <= 0 {
		t.Errorf("want insufficient_quota with a retry-after, got %+v", d)
	}

	// A released reservation is given back, exactly once.
	rec2 := &apikey.Record{ID: "key_release", RPM: 2, MonthlyLimit: 2}
	d1 := l.Admit(t.Context(), rec2, "a")
	d2 := l.Admit(t.Context(), rec2, "b")
	if !d1.Allowed || !d2.Allowed || d2.Remaining != 0 {
		t.Fatalf("first two: %+v %+v", d1, d2)
	}
	l.Release(t.Context(), rec2.ID, d2)
	l.Release(t.Context(), rec2.ID, d2) // twice: no effect
	d3 := l.Admit(t.Context(), rec2, "c")
	if !d3.Allowed || d3.MonthlyUsed != 2 {
		t.Errorf("after release: %+v", d3)
	}
	if d4 := l.Admit(t.Context(), rec2, "d"); d4.Allowed {
		t.Errorf("double release gave back two units: %+v", d4)
	}
}

// TestRedisDownFallsBackToLocalShare stops the real Redis: admissions must
// not fail or hang, and follow this replica's share of the limit.
func TestRedisDownFallsBackToLocalShare(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	l := quota.NewLimiter(NewStore(rdb, 50*time.Millisecond), 3, time.Now)
	rec := &apikey.Record{ID: "key_down", RPM: 30, MonthlyLimit: 1000}
	if d := l.Admit(t.Context(), rec, "warm"); !d.Allowed || d.Degraded {
		t.Fatalf("with redis up: %+v", d)
	}
	srv.Stop(t)
	start := time.Now()
	allowed := 0
	for i := range 20 {
		d := l.Admit(t.Context(), rec, fmt.Sprintf("r%d", i))
		if !d.Degraded {
			t.Fatalf("decision not marked degraded with redis down: %+v", d)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 10 { // 30 RPM shared by 3 replicas
		t.Errorf("allowed %d during the outage, want this replica's share 10", allowed)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("20 admissions took %v with redis down: something waits too long", el)
	}
	srv.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := l.Admit(t.Context(), &apikey.Record{ID: "key_back", RPM: 5, MonthlyLimit: 5}, "back")
		if !d.Degraded && d.Allowed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("limiter did not recover after redis came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTokensPerMinute: a key with a TPM is refused once the tokens of the
// last minute reach it, with headers-worth numbers in the decision.
func TestTokensPerMinute(t *testing.T) {
	l, _, _ := newLimiter(t)
	rec := &apikey.Record{ID: "key_tpm", RPM: 1000, MonthlyLimit: 1000, TPM: 100}
	d := l.Admit(t.Context(), rec, "t1")
	if !d.Allowed || d.TokensLimit != 100 || d.TokensRemaining != 100 {
		t.Fatalf("first: %+v", d)
	}
	l.AddTokens(t.Context(), rec.ID, 60)
	// (A few tokens of slack: crossing a minute boundary mid-test weights
	// the older bucket slightly below 1.)
	if d := l.Admit(t.Context(), rec, "t2"); !d.Allowed || d.TokensRemaining > 45 {
		t.Fatalf("after 60 tokens: %+v", d)
	}
	l.AddTokens(t.Context(), rec.ID, 50)
	d = l.Admit(t.Context(), rec, "t3")
	if d.Allowed || d.Reason != quota.ReasonTokens || d.TokensRemaining != 0 || d.RetryAfter <= 0 {
		t.Fatalf("after 110 tokens: %+v", d)
	}
	// A refusal for tokens takes no RPM slot and no monthly unit.
	if d.MonthlyUsed != 2 {
		t.Errorf("monthly used %d, want 2", d.MonthlyUsed)
	}
	// Keys without a TPM never read token buckets.
	plain := &apikey.Record{ID: "key_plain", RPM: 10, MonthlyLimit: 10}
	if d := l.Admit(t.Context(), plain, "p"); !d.Allowed || d.TokensLimit != 0 {
		t.Errorf("plain key: %+v", d)
	}
}
