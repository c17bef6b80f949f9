package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/ledger"
)

// base is the start of the test data: closed hours, well before any Before.
var base = time.Date(2026, 3, 30, 20, 0, 0, 0, time.UTC)

// later is a Before that closes every hour of the test data.
var later = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)

// rollup runs one full rollup and fails the test on error.
func rollup(t testing.TB, conn driver.Conn, opts ledger.RollupOptions) ledger.RollupStats {
	t.Helper()
	if opts.Before.IsZero() {
		opts.Before = later
	}
	if opts.Lookback == 0 {
		opts.Lookback = -1
	}
	st, err := ledger.Rollup(t.Context(), conn, db, opts)
	if err != nil {
		t.Fatalf("rollup: %v", err)
	}
	return st
}

// checkExact asserts that every way of reading usage agrees with the
// distinct events.
func checkExact(t testing.TB, conn driver.Conn, evs []ev, wantClean bool) {
	t.Helper()
	want := truth(evs...)
	equal(t, "usage_events FINAL", viaFinal(t, conn), want)
	equal(t, "view usage_hourly", viaView(t, conn), want)
	if wantClean {
		if n := dirty(t, conn); n != 0 {
			t.Fatalf("%d buckets still dirty after the rollup", n)
		}
		equal(t, "usage_rollup_hourly alone", viaAggregatesOnly(t, conn), want)
	}
}

// TestRollupExactUnderRedelivery: events stored once, then again in other
// batches (a redelivery regroups messages), again after the rollup, and
// late into hours already rolled up: the aggregates always equal the
// distinct events, and every bucket is clean after each rollup.
func TestRollupExactUnderRedelivery(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(1, 2))
	evs := genEvents(r, "e", 3000, 7, base, 30*time.Hour) // spans two months (March and April)

	for _, b := range batches(r, evs, 400) {
		insert(t, conn, b...)
	}
	// Redelivered copies before the first rollup: regrouped, and one batch
	// holding the same event three times.
	for _, b := range batches(r, pick(r, evs, 900), 250) {
		insert(t, conn, b...)
	}
	insert(t, conn, evs[7], evs[7], evs[7])
	checkExact(t, conn, evs, false)

	st := rollup(t, conn, ledger.RollupOptions{})
	if st.Buckets == 0 || st.Pending {
		t.Fatalf("rollup stats %+v: want buckets rolled and nothing pending", st)
	}
	checkExact(t, conn, evs, true)

	t.Run("redelivered after the rollup", func(t *testing.T) {
		for _, b := range batches(r, pick(r, evs, 500), 200) {
			insert(t, conn, b...)
		}
		if dirty(t, conn) == 0 {
			t.Fatal("redelivered copies did not mark their buckets dirty")
		}
		checkExact(t, conn, evs, false) // dirty buckets come from usage_events
		if st := rollup(t, conn, ledger.RollupOptions{}); st.Buckets == 0 {
			t.Fatalf("second rollup did nothing: %+v", st)
		}
		checkExact(t, conn, evs, true)
	})

	t.Run("late events into rolled-up hours", func(t *testing.T) {
		late := genEvents(r, "late", 300, 7, base, 30*time.Hour)
		insert(t, conn, late...)
		insert(t, conn, late[:50]...)
		all := append(append([]ev{}, evs...), late...)
		checkExact(t, conn, all, false)
		rollup(t, conn, ledger.RollupOptions{})
		checkExact(t, conn, all, true)
		// Nothing changed: a rollup now has nothing to do.
		if st := rollup(t, conn, ledger.RollupOptions{}); st.Buckets != 0 {
			t.Errorf("idle rollup recomputed %d buckets", st.Buckets)
		}
	})
}

var errCrash = errors.New("simulated crash between aggregate insert and ledger write")

// crashConn fails the crashAt-th ledger write of a rollup (counting from
// 1), after that run's aggregate rows were stored: what a crash between the
// two inserts leaves behind.
type crashConn struct {
	driver.Conn
	crashAt int32
	ledger  atomic.Int32
}

func (c *crashConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	if strings.Contains(query, ".usage_rollup_ledger") && c.ledger.Add(1) == c.crashAt {
		return nil, errCrash
	}
	return c.Conn.PrepareBatch(ctx, query, opts...)
}

// TestRollupCrashBetweenSteps: a run that stored its aggregate rows and
// died before its ledger rows (and stray rows of a run that died half-way
// through its insert) change nothing a reader sees; the next rollup
// completes the buckets.
func TestRollupCrashBetweenSteps(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(3, 4))
	evs := genEvents(r, "c", 1500, 5, base, 6*time.Hour)
	for _, b := range batches(r, evs, 300) {
		insert(t, conn, b...)
	}

	// A first rollup completes some hours, then crashes on the third run.
	_, err := ledger.Rollup(t.Context(), &crashConn{Conn: conn, crashAt: 3}, db, ledger.RollupOptions{
		Before: later, Lookback: -1, BucketsPerRun: 2,
	})
	if !errors.Is(err, errCrash) {
		t.Fatalf("rollup = %v, want the simulated crash", err)
	}
	var orphans uint64
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM "+db+".usage_rollup_hourly WHERE (key_id, hour, version) NOT IN"+
		" (SELECT key_id, hour, version FROM "+db+".usage_rollup_ledger)").Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans == 0 {
		t.Fatal("the crash left no unconfirmed aggregate rows: the test does not test the crash window")
	}
	// A run that died half-way through its insert: rows under a version no
	// ledger row names, here doubling a clean bucket's numbers.
	if err := conn.Exec(t.Context(), "INSERT INTO "+db+".usage_rollup_hourly SELECT key_id, hour, model, upstream_model,"+
		" price_version, version + 1, requests, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens,"+
		" reasoning_tokens, cost_usd FROM "+db+".usage_rollup_hourly LIMIT 3"); err != nil {
		t.Fatal(err)
	}
	// And the same crashed run's events redelivered meanwhile.
	insert(t, conn, pick(r, evs, 200)...)
	checkExact(t, conn, evs, false)

	rollup(t, conn, ledger.RollupOptions{})
	checkExact(t, conn, evs, true)
}

// TestRollupConcurrent: writers insert new and redelivered events while
// several rollups (as from several meter replicas) run in loops, and a
// reader reads the view all along. Every live read must be exact at some
// instant during the read: no group below the events stored before the
// read began, none above the events whose insert had begun when it ended
// (a bucket lost between the two sources, or counted from both, breaks one
// bound). Whenever the writers pause, with the rollups still running, the
// view equals the distinct events stored; at the end every bucket is clean.
func TestRollupConcurrent(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(5, 6))
	evs := genEvents(r, "x", 4000, 6, base, 8*time.Hour)
	const writers, rollers, rounds = 3, 3, 4

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var bg sync.WaitGroup
	var bgErr atomic.Value
	fail := func(err error) { bgErr.CompareAndSwap(nil, err) }
	var rolled, liveReads atomic.Int64
	for range rollers {
		bg.Go(func() {
			for ctx.Err() == nil {
				st, err := ledger.Rollup(ctx, conn, db, ledger.RollupOptions{Before: later, Lookback: -1, BucketsPerRun: 3})
				if err != nil && ctx.Err() == nil {
					fail(err)
					return
				}
				rolled.Add(int64(st.Buckets))
			}
		})
	}

	// stored: events whose insert returned; begun: events whose insert began.
	var mu sync.Mutex
	var stored, begun []ev
	bg.Go(func() {
		for ctx.Err() == nil {
			mu.Lock()
			before := append([]ev{}, stored...)
			mu.Unlock()
			got, err := readErr(conn, viewQuery)
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			after := append([]ev{}, begun...)
			mu.Unlock()
			if err := within(got, truth(before...), truth(after...)); err != nil {
				fail(err)
				return
			}
			liveReads.Add(1)
		}
	})

	per := len(evs) / rounds
	for round := range rounds {
		fresh := evs[round*per : (round+1)*per]
		mu.Lock()
		old := append([]ev{}, stored...)
		mu.Unlock()
		// Each writer stores its share of the new events plus copies of
		// events stored in earlier rounds (redeliveries).
		var wg sync.WaitGroup
		for w := range writers {
			wr := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			share := fresh[w*len(fresh)/writers : (w+1)*len(fresh)/writers]
			wg.Go(func() {
				todo := append([]ev{}, share...)
				if len(old) > 0 {
					todo = append(todo, pick(wr, old, 200)...)
				}
				wr.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
				for _, b := range batches(wr, todo, 150) {
					mu.Lock()
					begun = append(begun, b...)
					mu.Unlock()
					if err := insertErr(t.Context(), conn, b...); err != nil {
						fail(err)
						return
					}
					mu.Lock()
					stored = append(stored, b...)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if err, _ := bgErr.Load().(error); err != nil {
			t.Fatal(err)
		}
		checkExact(t, conn, evs[:(round+1)*per], false)
	}
	stop()
	bg.Wait()
	if err, _ := bgErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if rolled.Load() == 0 || liveReads.Load() == 0 {
		t.Fatalf("rolled %d buckets and read %d times concurrently: the test raced nothing", rolled.Load(), liveReads.Load())
	}
	t.Logf("%d buckets rolled up and %d live reads during the writes", rolled.Load(), liveReads.Load())
	rollup(t, conn, ledger.RollupOptions{})
	checkExact(t, conn, evs, true)
}

// within reports a group of got outside [lo, hi], field by field.
func within(got, lo, hi report) error {
	for g, h := range hi {
		l, v := lo[g], got[g]
		if v.Requests < l.Requests || v.Requests > h.Requests || v.Prompt < l.Prompt || v.Prompt > h.Prompt ||
			v.Hit < l.Hit || v.Hit > h.Hit || v.Miss < l.Miss || v.Miss > h.Miss ||
			v.Completion < l.Completion || v.Completion > h.Completion ||
			v.Reasoning < l.Reasoning || v.Reasoning > h.Reasoning ||
			dec(v.Cost).LessThan(dec(l.Cost)) || dec(v.Cost).GreaterThan(dec(h.Cost)) {
			return fmt.Errorf("live read of %v = %+v, outside [%+v, %+v]", g, v, l, h)
		}
	}
	for g, v := range got {
		if _, ok := hi[g]; !ok {
			return fmt.Errorf("live read has group %v = %+v that no stored event has", g, v)
		}
	}
	return nil
}

func dec(s string) decimal.Decimal {
	if s == "" {
		return decimal.Zero
	}
	return decimal.RequireFromString(s)
}

// TestRollupBounds: hours that have not ended by Before stay with
// usage_events; Lookback limits the search to buckets that received rows
// lately (by insertion time, whatever the age of the events), and a full
// rollup finds the others; MaxBuckets splits a backlog.
func TestRollupBounds(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(7, 8))
	old := genEvents(r, "old", 100, 2, base, time.Hour)                      // 20:00-21:00 on 30 March
	recent := genEvents(r, "new", 100, 2, base.Add(48*time.Hour), time.Hour) // 20:00-21:00 on 1 April
	insert(t, conn, old...)
	insert(t, conn, recent...)
	all := append(append([]ev{}, old...), recent...)
	// Pretend the old events were inserted two days ago.
	for _, q := range []string{
		"ALTER TABLE " + db + ".usage_inserts DELETE WHERE hour = toDateTime('2026-03-30 20:00:00', 'UTC')",
		"INSERT INTO " + db + ".usage_inserts (key_id, hour, insert_hour, inserted_rows, block_nonce)" +
			" SELECT key_id, toStartOfHour(started_at, 'UTC') AS hour, toStartOfHour(now(), 'UTC') - 172800, count(), 1" +
			" FROM " + db + ".usage_events WHERE event_id LIKE 'old-%' GROUP BY key_id, hour",
	} {
		if err := conn.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	waitMutations(t, conn)

	// Before 20:59 on 1 April: the recent hour has not ended; the old one
	// was inserted too long ago for a 3-hour lookback.
	if st := rollup(t, conn, ledger.RollupOptions{Before: base.Add(48*time.Hour + 59*time.Minute), Lookback: 3 * time.Hour}); st.Buckets != 0 {
		t.Errorf("rollup rolled %d buckets, want none", st.Buckets)
	}
	// Before 21:30: the recent hour (2 buckets) is rolled, still not the old one.
	if st := rollup(t, conn, ledger.RollupOptions{Before: base.Add(49*time.Hour + 30*time.Minute), Lookback: 3 * time.Hour}); st.Buckets != 2 {
		t.Errorf("lookback rollup rolled %d buckets, want the 2 of the recent hour", st.Buckets)
	}
	if n := dirty(t, conn); n != 2 {
		t.Errorf("%d dirty buckets, want the 2 of the old hour", n)
	}
	checkExact(t, conn, all, false)
	// A late copy into the old hour is a recent insertion: found again.
	insert(t, conn, old[0])
	if st := rollup(t, conn, ledger.RollupOptions{Lookback: 3 * time.Hour}); st.Buckets != 1 {
		t.Errorf("lookback rollup after a late copy rolled %d buckets, want its 1", st.Buckets)
	}
	// MaxBuckets: one bucket per call, oldest first; the full search finds
	// the last old bucket.
	if st := rollup(t, conn, ledger.RollupOptions{MaxBuckets: 1}); st.Buckets != 1 || st.Pending {
		t.Errorf("full rollup with MaxBuckets 1 = %+v, want 1 bucket and nothing pending", st)
	}
	checkExact(t, conn, all, true)
}

// waitMutations waits until every ALTER ... DELETE has been applied.
func waitMutations(t *testing.T, conn driver.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n uint64
		if err := conn.QueryRow(t.Context(), "SELECT count() FROM system.mutations WHERE is_done = 0").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mutations still running", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRollupManyKeys: a run over more keys than it names in its WHERE
// clause reads its hours for every key and keeps only its own buckets;
// buckets of the same hours that it does not own are left alone.
func TestRollupManyKeys(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(11, 12))
	evs := genEvents(r, "k", 4000, 1500, base, 3*time.Hour)
	insert(t, conn, evs...)
	// Roll up a third of the buckets first, so that the big run below
	// spans clean buckets it must not touch.
	if st := rollup(t, conn, ledger.RollupOptions{MaxBuckets: 1000}); !st.Pending {
		t.Fatalf("first rollup %+v: want it to stop at 1000 buckets", st)
	}
	var before uint64
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM "+db+".usage_rollup_ledger").Scan(&before); err != nil {
		t.Fatal(err)
	}
	st := rollup(t, conn, ledger.RollupOptions{})
	if st.Runs != 1 || uint64(st.Buckets)+before != uint64(len(truthBuckets(evs))) {
		t.Fatalf("rollup %+v after %d buckets: want one run over the other %d buckets", st, before, len(truthBuckets(evs))-int(before))
	}
	checkExact(t, conn, evs, true)
}

// truthBuckets is the set of (key, hour) buckets of evs.
func truthBuckets(evs []ev) map[string]bool {
	out := map[string]bool{}
	for _, e := range evs {
		out[e.key+"@"+e.at.UTC().Truncate(time.Hour).String()] = true
	}
	return out
}

// TestCounterBackfill: rows stored before migration 2 (when usage_events
// had no counter) are counted by its backfill statement, so they are
// rolled up too; counting some rows twice is harmless.
func TestCounterBackfill(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(9, 10))
	evs := genEvents(r, "b", 500, 3, base, 4*time.Hour)
	insert(t, conn, evs...)
	// Forget the counters, as if the rows predated the materialized view.
	if err := conn.Exec(t.Context(), "TRUNCATE TABLE "+db+".usage_inserts"); err != nil {
		t.Fatal(err)
	}
	if dirty(t, conn) != 0 {
		t.Fatal("truncated counters still list buckets")
	}
	migs, err := chschema.Migrations(db, chschema.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var backfill string
	for _, m := range migs {
		for _, s := range m.Statements {
			if m.Version == 2 && len(s) > 6 && s[:6] == "INSERT" {
				backfill = s
			}
		}
	}
	if backfill == "" {
		t.Fatal("migration 2 has no backfill INSERT")
	}
	// Twice: a concurrent applier, or a migration retried after a crash.
	for range 2 {
		if err := conn.Exec(t.Context(), backfill); err != nil {
			t.Fatalf("backfill: %v", err)
		}
	}
	rollup(t, conn, ledger.RollupOptions{})
	checkExact(t, conn, evs, true)
	insert(t, conn, evs[:10]...)
	checkExact(t, conn, evs, false)
}
