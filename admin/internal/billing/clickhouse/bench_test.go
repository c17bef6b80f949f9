package clickhouse_test

import (
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qyai/qyai/admin/internal/billing"
	"github.com/qyai/qyai/pkg/ledger"
)

var benchEvents = flag.Int("bench-events", 10_000_000, "usage events seeded by BenchmarkBilling")

// BenchmarkBilling measures what the public billing endpoint asks
// (KeyTotals of the current UTC month) with -bench-events events in
// ClickHouse: the last 30 days up to now, over 1,000 keys, 30% of them on
// one hot key, every hour up to five minutes ago rolled up as the meter
// does, and background merges settled. It reports p50 and p99 latencies, and the same for the query the
// store used before the aggregates (usage_events FINAL) for comparison.
//
//	go test ./internal/billing/clickhouse -run '^$' -bench Billing -benchtime 300x
func BenchmarkBilling(b *testing.B) {
	e := newEnv(b)
	ctx := b.Context()
	now := time.Now().UTC()
	from := now.Add(-30 * 24 * time.Hour)
	n := *benchEvents
	t0 := time.Now()
	// Seeded server-side: 10M rows through the client would take minutes.
	err := e.conn.Exec(ctx, fmt.Sprintf("INSERT INTO "+db+".usage_events (event_id, request_id, started_at, finished_at,"+
		" key_id, model, upstream_model, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens,"+
		" price_version, cost_usd, schema_version)"+
		" SELECT concat('ev-', toString(number)), concat('req-', toString(number)),"+
		" toDateTime(%d + intDiv(number * %d, %d)) AS t, t + 2,"+
		" concat('key-', toString(if(number %% 10 < 3, 0, number %% 1000))),"+
		" arrayElement(['deepseek-v4-flash', 'deepseek-v4-pro', 'deepseek-v4-flash'], number %% 3 + 1) AS m, m,"+
		" 1000, 600, 400, 250, '2026-01-01', toDecimal64('0.001403000', 9), 1 FROM numbers(%d)",
		from.Unix(), int64(now.Sub(from).Seconds()), n, n))
	if err != nil {
		b.Fatalf("seed: %v", err)
	}
	seeded := time.Since(t0)
	t0 = time.Now()
	var buckets, runs int
	for {
		st, err := ledger.Rollup(ctx, e.conn, db, ledger.RollupOptions{Before: now.Add(-5 * time.Minute), Lookback: -1})
		if err != nil {
			b.Fatalf("rollup: %v", err)
		}
		buckets, runs = buckets+st.Buckets, runs+st.Runs
		if !st.Pending {
			break
		}
	}
	b.Logf("seeded %d events in %s; rolled up %d buckets in %d runs in %s", n, seeded.Round(time.Second),
		buckets, runs, time.Since(t0).Round(time.Second))
	// Measure the steady state, not the merges of ten million fresh rows.
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		var merges uint64
		if err := e.conn.QueryRow(ctx, "SELECT count() FROM system.merges").Scan(&merges); err != nil {
			b.Fatal(err)
		}
		if merges == 0 {
			break
		}
	}
	monthStart, monthEnd := billing.MonthBounds(now)

	// measure runs fn b.N times, or at most limit times (the old query takes
	// a second per call on the hot key).
	measure := func(b *testing.B, limit int, fn func() error) {
		n := min(b.N, limit)
		lat := make([]time.Duration, 0, n)
		b.ResetTimer()
		for range n {
			t := time.Now()
			if err := fn(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
		}
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(q(0.5), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
	}
	// The finance report over every key: not under the endpoint's budget,
	// measured to keep it in sight.
	b.Run("Usage/all-keys-by-model", func(b *testing.B) {
		measure(b, 5, func() error {
			_, err := e.store.Usage(ctx, billing.Query{From: monthStart, To: monthEnd, GroupBy: billing.GroupByModel})
			return err
		})
	})
	b.Run("raw-FINAL/all-keys-by-model", func(b *testing.B) {
		measure(b, 5, func() error {
			return e.conn.Exec(ctx, "SELECT model, count(), sum(cost_usd) FROM "+db+".usage_events FINAL"+
				" WHERE started_at >= toDateTime(?) AND started_at < toDateTime(?) GROUP BY model FORMAT Null",
				monthStart.Unix(), monthEnd.Unix())
		})
	})
	for _, key := range []string{"key-0", "key-517"} {
		want, err := e.store.KeyTotals(ctx, key, monthStart, monthEnd)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("KeyTotals/"+key, func(b *testing.B) {
			measure(b, b.N, func() error {
				got, err := e.store.KeyTotals(ctx, key, monthStart, monthEnd)
				if err == nil && got != want {
					err = fmt.Errorf("KeyTotals changed: %+v then %+v", want, got)
				}
				return err
			})
		})
		b.Run("raw-FINAL/"+key, func(b *testing.B) {
			measure(b, 20, func() error {
				var got billing.Totals
				err := e.conn.QueryRow(ctx, "SELECT count(), sum(prompt_tokens), sum(completion_tokens) FROM "+db+
					".usage_events FINAL WHERE key_id = ? AND started_at >= toDateTime(?) AND started_at < toDateTime(?)",
					key, monthStart.Unix(), monthEnd.Unix()).Scan(&got.Requests, &got.PromptTokens, &got.CompletionTokens)
				if err == nil && got != want {
					err = fmt.Errorf("FINAL %+v, aggregates %+v", got, want)
				}
				return err
			})
		})
	}
}
