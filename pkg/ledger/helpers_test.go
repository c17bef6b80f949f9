package ledger_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/pricing"
)

const db = "qyai"

// open starts a ClickHouse server, applies the schema and returns a
// connection to it.
func open(t *testing.T) driver.Conn {
	t.Helper()
	ch := scripts.ClickHouse(t)
	conn, err := chschema.Open(t.Context(), chschema.Options{Addr: ch.Addr, Database: db, User: "default"})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := chschema.Apply(t.Context(), conn, db, chschema.ApplyOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	return conn
}

// ev is one usage event as the meter stores it.
type ev struct {
	id, key, model, upstream  string
	at                        time.Time
	prompt, hit, miss, out    uint64
	reasoning                 uint64
	cost                      pricing.NanoUSD
	version                   string // price version; empty when unpriced
	usageSource, outcome, gwy string
}

var testModels = []string{"deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v4-flash", "gpt-4o", "deepseek-v9-unknown"}

// genEvents returns n distinct events with ids prefix-0.., spread over
// keys, models (one alias, one unpriced) and the hours of [from, from+span),
// priced with the shipped price table.
func genEvents(r *rand.Rand, prefix string, n, keys int, from time.Time, span time.Duration) []ev {
	tb := pricing.Default()
	out := make([]ev, n)
	for i := range out {
		model := testModels[r.IntN(len(testModels))]
		upstream := model
		if model == "gpt-4o" {
			upstream = "deepseek-v4-flash" // an alias, priced as its upstream model
		}
		hit, miss, completion := uint64(r.IntN(5000)), uint64(r.IntN(5000)), uint64(r.IntN(3000))
		at := from.Add(time.Duration(r.Int64N(int64(span)))).Truncate(time.Second)
		e := ev{
			id: fmt.Sprintf("%s-%d", prefix, i), key: fmt.Sprintf("key-%d", r.IntN(keys)),
			model: model, upstream: upstream, at: at,
			prompt: hit + miss, hit: hit, miss: miss, out: completion, reasoning: completion / 3,
			usageSource: "reported", outcome: "completed", gwy: "gw-1",
		}
		cost, version, err := tb.Cost(upstream, at, pricing.Tokens{CacheHit: int64(hit), CacheMiss: int64(miss), Completion: int64(completion)})
		if err == nil {
			e.cost, e.version = cost, version
		}
		out[i] = e
	}
	return out
}

// insert writes evs in one batch, as the meter does.
func insert(t testing.TB, conn driver.Conn, evs ...ev) {
	t.Helper()
	if err := insertErr(t.Context(), conn, evs...); err != nil {
		t.Fatal(err)
	}
}

func insertErr(ctx context.Context, conn driver.Conn, evs ...ev) error {
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".usage_events (event_id, request_id, started_at, finished_at,"+
		" key_id, key_prefix, tier, model, upstream_model, thinking, stream, status, error_type, outcome,"+
		" prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, usage_source,"+
		" latency_ms, ttft_ms, gateway, trace_id, price_version, cost_usd, schema_version)")
	if err != nil {
		return fmt.Errorf("prepare batch: %w", err)
	}
	for _, e := range evs {
		if err := batch.Append(e.id, "req-"+e.id, e.at, e.at.Add(time.Second), e.key, "sk-abcd", "pro", e.model, e.upstream,
			uint8(0), uint8(1), uint16(200), "", e.outcome, e.prompt, e.hit, e.miss, e.out, e.reasoning, e.usageSource,
			uint32(1000), uint32(100), e.gwy, "", e.version, decimal.New(int64(e.cost), -9), uint8(1)); err != nil {
			return fmt.Errorf("append %s: %w", e.id, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("send batch of %d: %w", len(evs), err)
	}
	return nil
}

// group is the unit finance reads: one key, UTC day, model and price version.
type group struct{ key, day, model, version string }

type sums struct {
	Requests, Prompt, Hit, Miss, Completion, Reasoning uint64
	Cost                                               string // exact decimal USD
}

type report map[group]sums

func (r report) String() string {
	var b strings.Builder
	for _, g := range slices.SortedFunc(maps.Keys(r), func(a, b group) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	}) {
		fmt.Fprintf(&b, "  %v: %+v\n", g, r[g])
	}
	return b.String()
}

// truth is what finance must read: the sums over DISTINCT events (by id).
func truth(evs ...ev) report {
	seen := map[string]bool{}
	costs := map[group]pricing.NanoUSD{}
	out := report{}
	for _, e := range evs {
		if seen[e.id] {
			continue
		}
		seen[e.id] = true
		g := group{e.key, e.at.UTC().Format(time.DateOnly), e.model, e.version}
		s := out[g]
		s.Requests++
		s.Prompt += e.prompt
		s.Hit += e.hit
		s.Miss += e.miss
		s.Completion += e.out
		s.Reasoning += e.reasoning
		out[g] = s
		costs[g] += e.cost
	}
	for g, c := range costs {
		s := out[g]
		s.Cost = decimal.New(int64(c), -9).String()
		out[g] = s
	}
	return out
}

// read runs a query returning (key, day, model, version, requests, prompt,
// hit, miss, completion, reasoning, toString(cost)) rows.
func read(t testing.TB, conn driver.Conn, q string) report {
	t.Helper()
	out, err := readErr(conn, q)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readErr(conn driver.Conn, q string) (report, error) {
	return readArgs(context.Background(), conn, q)
}

// readArgs is readErr with a context (which may carry external tables) and
// query arguments.
func readArgs(ctx context.Context, conn driver.Conn, q string, args ...any) (report, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	defer func() { _ = rows.Close() }()
	out := report{}
	for rows.Next() {
		var g group
		var s sums
		var day time.Time
		if err := rows.Scan(&g.key, &day, &g.model, &g.version, &s.Requests, &s.Prompt, &s.Hit, &s.Miss,
			&s.Completion, &s.Reasoning, &s.Cost); err != nil {
			return nil, err
		}
		g.day = day.Format(time.DateOnly)
		s.Cost = decimal.RequireFromString(s.Cost).String()
		out[g] = s
	}
	return out, rows.Err()
}

const sumCols = "count(), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens)," +
	" sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd))"

// viewQuery reads the exact view usage_hourly, as finance does.
const viewQuery = "SELECT key_id, toDate(hour) AS day, model, price_version," +
	" sum(requests), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens)," +
	" sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd))" +
	" FROM " + db + ".usage_hourly GROUP BY key_id, day, model, price_version"

func viaView(t testing.TB, conn driver.Conn) report { return read(t, conn, viewQuery) }

// viaFinal reads usage_events FINAL: the reference the aggregates must match.
func viaFinal(t testing.TB, conn driver.Conn) report {
	return read(t, conn, "SELECT key_id, toDate(started_at, 'UTC') AS day, model, price_version, "+sumCols+
		" FROM "+db+".usage_events FINAL GROUP BY key_id, day, model, price_version")
}

// viaAggregatesOnly reads usage_rollup_hourly alone, at each bucket's
// ledger version: with every bucket clean it must equal the truth by
// itself (this proves the aggregate table is exact, not only the view).
func viaAggregatesOnly(t testing.TB, conn driver.Conn) report {
	return read(t, conn, "SELECT key_id, toDate(hour) AS day, model, price_version,"+
		" sum(requests), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),"+
		" sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd))"+
		" FROM "+db+".usage_rollup_hourly"+
		" WHERE (key_id, hour, version) IN (SELECT key_id, hour, argMax(version, inserted_rows) FROM "+db+".usage_rollup_ledger GROUP BY key_id, hour)"+
		" GROUP BY key_id, day, model, price_version")
}

// dirty counts buckets that readers take from usage_events.
func dirty(t testing.TB, conn driver.Conn) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM "+db+".usage_rollup_state WHERE clean = 0").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// equal fails the test when got differs from want, naming the first groups
// that differ.
func equal(t testing.TB, what string, got, want report) {
	t.Helper()
	if len(want) == 0 {
		t.Fatalf("%s: the expected report is empty: the test seeds nothing", what)
	}
	var diffs []string
	for g, w := range want {
		if got[g] != w {
			diffs = append(diffs, fmt.Sprintf("%v: got %+v want %+v", g, got[g], w))
		}
	}
	for g, s := range got {
		if _, ok := want[g]; !ok {
			diffs = append(diffs, fmt.Sprintf("%v: unexpected %+v", g, s))
		}
	}
	if len(diffs) > 0 {
		slices.Sort(diffs)
		t.Fatalf("%s differs from the distinct events in %d groups, e.g.:\n%s", what, len(diffs),
			strings.Join(diffs[:min(5, len(diffs))], "\n"))
	}
}

// pick returns k events of evs chosen at random (possibly repeated).
func pick(r *rand.Rand, evs []ev, k int) []ev {
	out := make([]ev, k)
	for i := range out {
		out[i] = evs[r.IntN(len(evs))]
	}
	return out
}

// batches splits evs into batches of random sizes in [1, maxSize].
func batches(r *rand.Rand, evs []ev, maxSize int) [][]ev {
	var out [][]ev
	for len(evs) > 0 {
		n := min(len(evs), 1+r.IntN(maxSize))
		out = append(out, evs[:n])
		evs = evs[n:]
	}
	return out
}
