package clickhouse_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/admin/internal/billing"
	chstore "github.com/qyai/qyai/admin/internal/billing/clickhouse"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/ledger"
	"github.com/qyai/qyai/pkg/pricing"
)

const db = "qyai"

type env struct {
	conn  driver.Conn
	store *chstore.Store
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ch := scripts.ClickHouse(t)
	c := chstore.NewConnector(chschema.Options{Addr: ch.Addr, Database: db}, chschema.ApplyOptions{},
		slog.New(slog.DiscardHandler))
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("connect to clickhouse: %v", err)
	}
	conn, err := c.Conn()
	if err != nil {
		t.Fatal(err)
	}
	return &env{conn: conn, store: chstore.NewStore(c, db, 30*time.Second)}
}

// ev is one stored usage event.
type ev struct {
	id, key, model string
	at             time.Time
	hit, miss, out uint64
	cost           pricing.NanoUSD
	version        string
}

var models = []string{"deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v9-unknown"}

// gen returns n distinct events over keys and [from, from+span).
func gen(r *rand.Rand, prefix string, n, keys int, from time.Time, span time.Duration) []ev {
	tb := pricing.Default()
	out := make([]ev, n)
	for i := range out {
		e := ev{
			id: fmt.Sprintf("%s-%d", prefix, i), key: fmt.Sprintf("key-%d", r.IntN(keys)), model: models[r.IntN(len(models))],
			at:  from.Add(time.Duration(r.Int64N(int64(span)))).Truncate(time.Second),
			hit: uint64(r.IntN(4000)), miss: uint64(r.IntN(4000)), out: uint64(r.IntN(2000)),
		}
		if c, v, err := tb.Cost(e.model, e.at, pricing.Tokens{CacheHit: int64(e.hit), CacheMiss: int64(e.miss), Completion: int64(e.out)}); err == nil {
			e.cost, e.version = c, v
		}
		out[i] = e
	}
	return out
}

func (e *env) insert(t testing.TB, evs ...ev) {
	t.Helper()
	batch, err := e.conn.PrepareBatch(t.Context(), "INSERT INTO "+db+".usage_events (event_id, started_at, key_id,"+
		" model, upstream_model, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens,"+
		" price_version, cost_usd, schema_version)")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range evs {
		if err := batch.Append(v.id, v.at, v.key, v.model, v.model, v.hit+v.miss, v.hit, v.miss, v.out, v.out/2,
			v.version, decimal.New(int64(v.cost), -9), uint8(1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
}

func (e *env) rollup(t testing.TB, before time.Time) ledger.RollupStats {
	t.Helper()
	st, err := ledger.Rollup(t.Context(), e.conn, db, ledger.RollupOptions{Before: before, Lookback: -1})
	if err != nil {
		t.Fatalf("rollup: %v", err)
	}
	return st
}

// expect computes the report of the distinct events in [from, to).
func expect(evs []ev, keyID string, from, to time.Time, groupBy string) []billing.Row {
	seen := map[string]bool{}
	byGroup := map[string]*billing.Row{}
	costs := map[string]pricing.NanoUSD{}
	for _, e := range evs {
		if seen[e.id] || e.at.Before(from) || !e.at.Before(to) || (keyID != "" && e.key != keyID) {
			continue
		}
		seen[e.id] = true
		g := map[string]string{billing.GroupByDay: e.at.UTC().Format(time.DateOnly), billing.GroupByModel: e.model,
			billing.GroupByKey: e.key}[groupBy]
		r := byGroup[g]
		if r == nil {
			r = &billing.Row{Group: g}
			byGroup[g] = r
		}
		r.Requests++
		r.PromptTokens += e.hit + e.miss
		r.CacheHitTokens += e.hit
		r.CacheMissTokens += e.miss
		r.CompletionTokens += e.out
		r.ReasoningTokens += e.out / 2
		costs[g] += e.cost
	}
	out := []billing.Row{}
	for g, r := range byGroup {
		r.CostUSD = decimal.New(int64(costs[g]), -9)
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out
}

func sameRows(got, want []billing.Row) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows, want %d:\n got %+v\nwant %+v", len(got), len(want), got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.CostUSD.Equal(w.CostUSD) {
			return fmt.Errorf("row %s: cost %s, want %s", w.Group, g.CostUSD, w.CostUSD)
		}
		g.CostUSD, w.CostUSD = decimal.Zero, decimal.Zero
		if g != w {
			return fmt.Errorf("row %s: got %+v, want %+v", w.Group, got[i], want[i])
		}
	}
	return nil
}

// period is one question the billing endpoints ask.
type period struct {
	name     string
	key      string
	from, to time.Time
}

var (
	march = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	april = time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
)

var periods = []period{
	{name: "one key, month", key: "key-1", from: march, to: april},
	{name: "all keys, month", from: march, to: april},
	{name: "one key, one day", key: "key-2", from: march.AddDate(0, 0, 29), to: march.AddDate(0, 0, 30)},
	{name: "all keys, two months", from: march, to: april.AddDate(0, 1, 0)},
	{name: "bounds inside hours", key: "key-0", from: march.AddDate(0, 0, 29).Add(90 * time.Minute),
		to: april.Add(3*time.Hour + 17*time.Minute + 5*time.Second)},
	{name: "less than an hour", from: march.AddDate(0, 0, 30).Add(-50 * time.Minute), to: march.AddDate(0, 0, 30).Add(-10 * time.Minute)},
}

// check compares every period and grouping, and KeyTotals, with the distinct events.
func (e *env) check(t *testing.T, evs []ev) {
	t.Helper()
	for _, p := range periods {
		for _, g := range []string{billing.GroupByDay, billing.GroupByModel, billing.GroupByKey} {
			got, err := e.store.Usage(t.Context(), billing.Query{KeyID: p.key, From: p.from, To: p.to, GroupBy: g})
			if err != nil {
				t.Fatalf("%s by %s: %v", p.name, g, err)
			}
			if err := sameRows(got, expect(evs, p.key, p.from, p.to, g)); err != nil {
				t.Fatalf("%s by %s: %v", p.name, g, err)
			}
		}
		if p.key == "" {
			continue
		}
		tot, err := e.store.KeyTotals(t.Context(), p.key, p.from, p.to)
		if err != nil {
			t.Fatal(err)
		}
		var want billing.Totals
		for _, r := range expect(evs, p.key, p.from, p.to, billing.GroupByKey) {
			want = billing.Totals{Requests: r.Requests, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens}
		}
		if tot != want {
			t.Fatalf("%s: KeyTotals %+v, want %+v", p.name, tot, want)
		}
	}
}

// TestStoreExact: before any rollup (all from usage_events), after it
// (from the aggregates), after redeliveries and late events (changed hours
// from usage_events again), and after the next rollup, every report equals
// the distinct events. Then usage_events is emptied: the reports still
// hold, so they really came from the aggregates.
func TestStoreExact(t *testing.T) {
	e := newEnv(t)
	r := rand.New(rand.NewPCG(11, 12))
	start := march.AddDate(0, 0, 29) // 30 March: the data spans into April
	evs := gen(r, "s", 3000, 4, start, 60*time.Hour)
	e.insert(t, evs[:2000]...)
	e.insert(t, evs[1500:]...)   // overlapping redelivery
	e.insert(t, evs[100:300]...) // and another
	t.Run("before the rollup", func(t *testing.T) { e.check(t, evs) })

	// The rollup closes every hour up to 30 hours after start; later hours
	// stay with usage_events.
	if st := e.rollup(t, start.Add(30*time.Hour)); st.Buckets == 0 {
		t.Fatal("rollup did nothing")
	}
	t.Run("half rolled up", func(t *testing.T) { e.check(t, evs) })

	late := gen(r, "late", 200, 4, start, 60*time.Hour)
	e.insert(t, late...)
	e.insert(t, evs[:400]...)
	all := append(append([]ev{}, evs...), late...)
	t.Run("redelivered and late", func(t *testing.T) { e.check(t, all) })

	e.rollup(t, start.Add(100*time.Hour))
	t.Run("all rolled up", func(t *testing.T) { e.check(t, all) })

	if err := e.conn.Exec(t.Context(), "TRUNCATE TABLE "+db+".usage_events"); err != nil {
		t.Fatal(err)
	}
	t.Run("from the aggregates alone", func(t *testing.T) {
		for _, p := range periods {
			if p.name == "bounds inside hours" || p.name == "less than an hour" {
				continue // partial hours are read from usage_events, now empty
			}
			got, err := e.store.Usage(t.Context(), billing.Query{KeyID: p.key, From: p.from, To: p.to, GroupBy: billing.GroupByModel})
			if err != nil {
				t.Fatal(err)
			}
			if err := sameRows(got, expect(all, p.key, p.from, p.to, billing.GroupByModel)); err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
		}
	})
}

// TestStoreLiveReads: while writers store new and redelivered events and
// rollups run, every KeyTotals lies between the distinct events stored
// before it began and those whose insert had begun when it ended.
func TestStoreLiveReads(t *testing.T) {
	e := newEnv(t)
	r := rand.New(rand.NewPCG(13, 14))
	start := march.AddDate(0, 0, 30).Add(-6 * time.Hour)
	evs := gen(r, "l", 3000, 2, start, 8*time.Hour)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var bg sync.WaitGroup
	var bgErr atomic.Value
	fail := func(err error) { bgErr.CompareAndSwap(nil, err) }
	for range 2 {
		bg.Go(func() {
			for ctx.Err() == nil {
				if _, err := ledger.Rollup(ctx, e.conn, db, ledger.RollupOptions{Before: april.AddDate(0, 1, 0), Lookback: -1}); err != nil && ctx.Err() == nil {
					fail(err)
					return
				}
			}
		})
	}
	var mu sync.Mutex
	var stored, begun []ev
	var reads atomic.Int64
	bg.Go(func() {
		for ctx.Err() == nil {
			mu.Lock()
			lo := expect(stored, "key-0", march, april, billing.GroupByKey)
			mu.Unlock()
			got, err := e.store.KeyTotals(ctx, "key-0", march, april)
			if err != nil {
				if ctx.Err() == nil {
					fail(err)
				}
				return
			}
			mu.Lock()
			hi := expect(begun, "key-0", march, april, billing.GroupByKey)
			mu.Unlock()
			var l, h billing.Row
			if len(lo) > 0 {
				l = lo[0]
			}
			if len(hi) > 0 {
				h = hi[0]
			}
			if got.Requests < l.Requests || got.Requests > h.Requests || got.PromptTokens < l.PromptTokens ||
				got.PromptTokens > h.PromptTokens || got.CompletionTokens < l.CompletionTokens || got.CompletionTokens > h.CompletionTokens {
				fail(fmt.Errorf("live KeyTotals %+v outside [%+v, %+v]", got, l, h))
				return
			}
			reads.Add(1)
		}
	})
	for _, b := range [][]ev{evs[:1000], evs[500:1500], evs[1000:2000], evs[:300], evs[2000:], evs[1200:2600]} {
		for i := 0; i < len(b); i += 50 {
			chunk := b[i:min(i+50, len(b))]
			mu.Lock()
			begun = append(begun, chunk...)
			mu.Unlock()
			e.insert(t, chunk...)
			mu.Lock()
			stored = append(stored, chunk...)
			mu.Unlock()
		}
	}
	stop()
	bg.Wait()
	if err, _ := bgErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("no live read completed")
	}
	e.rollup(t, april.AddDate(0, 1, 0))
	e.check(t, evs)
}
