package ledger_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/ledger"
)

// TestWriteThenReadExact drives both halves of the protocol against one
// ClickHouse: events stored with duplicates, rolled up (one run crashing
// between its two inserts), then late events and late copies into hours
// already rolled up. At every step ExactQuery, over periods that start and
// end inside hours, for one key and for all, returns the sums of the
// distinct events of the period, while the buckets it reads are a mix of
// clean aggregates, dirty buckets and partial hours.
func TestWriteThenReadExact(t *testing.T) {
	conn := open(t)
	r := rand.New(rand.NewPCG(7, 8))
	evs := genEvents(r, "w", 2000, 4, base, 20*time.Hour)
	for _, b := range batches(r, evs, 300) {
		insert(t, conn, b...)
	}
	for _, b := range batches(r, pick(r, evs, 400), 150) { // redelivered copies
		insert(t, conn, b...)
	}
	periods := [][2]time.Time{
		{base, base.Add(20 * time.Hour)},                                                 // whole hours only
		{base.Add(17 * time.Minute), base.Add(13*time.Hour + 5*time.Minute)},             // partial hours at both ends
		{base.Add(3*time.Hour + 10*time.Minute), base.Add(3*time.Hour + 50*time.Minute)}, // inside one hour
	}
	check := func(t *testing.T, step string, all []ev) {
		t.Helper()
		for _, p := range periods {
			for _, key := range []string{"", "key-1"} {
				var in []ev
				for _, e := range all {
					if !e.at.Before(p[0]) && e.at.Before(p[1]) && (key == "" || e.key == key) {
						in = append(in, e)
					}
				}
				what := fmt.Sprintf("%s: ExactQuery(key %q, %s..%s)", step, key, p[0].Format(time.Kitchen), p[1].Format(time.Kitchen))
				equal(t, what, exact(t, conn, key, p[0], p[1]), withoutVersions(truth(in...)))
			}
		}
	}
	check(t, "before any rollup", evs)

	// A rollup whose second run dies after its aggregate rows were stored.
	if _, err := ledger.Rollup(t.Context(), &crashConn{Conn: conn, crashAt: 2}, db, ledger.RollupOptions{
		Before: later, Lookback: -1, BucketsPerRun: 5,
	}); err == nil {
		t.Fatal("rollup through crashConn succeeded; the crash was not injected")
	}
	check(t, "after a crashed rollup", evs)
	rollup(t, conn, ledger.RollupOptions{})
	if n := dirty(t, conn); n != 0 {
		t.Fatalf("%d buckets dirty after a full rollup", n)
	}
	check(t, "all clean", evs)

	late := genEvents(r, "late", 300, 4, base, 20*time.Hour)
	insert(t, conn, late...)
	insert(t, conn, pick(r, evs, 100)...)
	all := append(append([]ev{}, evs...), late...)
	if dirty(t, conn) == 0 {
		t.Fatal("late events left every bucket clean")
	}
	check(t, "late events into rolled-up hours", all)
	rollup(t, conn, ledger.RollupOptions{})
	check(t, "rolled up again", all)
}

// exact reads [from, to) through ledger.ExactQuery, grouped as truth is
// but without price versions (ExactColumns has none).
func exact(t testing.TB, conn driver.Conn, key string, from, to time.Time) report {
	t.Helper()
	ctx, q, args, err := ledger.ExactQuery(t.Context(), conn, db, key, from, to,
		"SELECT key_id, toDate(hour) AS day, model, '', sum(requests), sum(prompt_tokens), sum(cache_hit_tokens),"+
			" sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd))"+
			" FROM (%s) GROUP BY key_id, day, model")
	if err != nil {
		t.Fatalf("ExactQuery: %v", err)
	}
	out, err := readArgs(ctx, conn, q, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// withoutVersions merges the groups of r that differ only in price version.
func withoutVersions(r report) report {
	out := report{}
	for g, s := range r {
		g.version = ""
		o := out[g]
		o.Requests += s.Requests
		o.Prompt += s.Prompt
		o.Hit += s.Hit
		o.Miss += s.Miss
		o.Completion += s.Completion
		o.Reasoning += s.Reasoning
		c := decimal.Zero
		if o.Cost != "" {
			c = decimal.RequireFromString(o.Cost)
		}
		o.Cost = c.Add(decimal.RequireFromString(s.Cost)).String()
		out[g] = o
	}
	return out
}
