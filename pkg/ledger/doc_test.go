package ledger_test

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/ledger"
	"github.com/qyai/qyai/pkg/pricing"
)

// docQueryRE matches a query of docs/clickhouse.md: an HTML comment naming
// it, then a fenced sql block.
var docQueryRE = regexp.MustCompile("(?s)<!-- query: ([a-z_]+) -->\n```sql\n(.*?)\n```")

// docQueries returns every named query of docs/clickhouse.md, and fails the
// test when the page holds an sql block without a name (it would go
// untested).
func docQueries(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "clickhouse.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range docQueryRE.FindAllStringSubmatch(string(b), -1) {
		if _, dup := out[m[1]]; dup {
			t.Fatalf("docs/clickhouse.md: query %q twice", m[1])
		}
		out[m[1]] = m[2]
	}
	if n := strings.Count(string(b), "```sql"); n != len(out) {
		t.Fatalf("docs/clickhouse.md has %d sql blocks but %d named queries: name every block (<!-- query: name -->)", n, len(out))
	}
	return out
}

// TestDocQueries runs every SQL block of docs/clickhouse.md on seeded data
// (March 2026 with neighbours in February and April, duplicates, an alias,
// an unpriced model, estimated usage) and compares each result with the
// value computed from the distinct events: before any rollup, with part of
// the month rolled up, after a full rollup, after late events and
// redeliveries, and after the next rollup.
func TestDocQueries(t *testing.T) {
	queries := docQueries(t)
	ch := scripts.ClickHouse(t)
	conn, err := chschema.Open(t.Context(), chschema.Options{Addr: ch.Addr, Database: db, User: "default"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if err := chschema.Apply(t.Context(), conn, db, chschema.ApplyOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	if err := chschema.SyncPrices(t.Context(), conn, db, "", pricing.Default(), time.Now()); err != nil {
		t.Fatal(err)
	}
	// Twice: every meter start writes the table again.
	if err := chschema.SyncPrices(t.Context(), conn, db, "", pricing.Default(), time.Now()); err != nil {
		t.Fatal(err)
	}

	r := rand.New(rand.NewPCG(21, 22))
	evs := genEvents(r, "d", 3000, 4, time.Date(2026, 2, 27, 0, 0, 0, 0, time.UTC), 40*24*time.Hour)
	for i := range evs {
		if i%7 == 0 {
			evs[i].usageSource, evs[i].outcome = "estimated", "client_cancelled"
		}
	}
	for _, b := range batches(r, evs, 500) {
		insert(t, conn, b...)
	}
	insert(t, conn, pick(r, evs, 700)...)

	run := func(t *testing.T, stored []ev) {
		t.Helper()
		want := docExpectations(stored)
		for _, name := range slices.Sorted(maps.Keys(queries)) {
			got := httpQuery(t, ch.HTTPAddr, queries[name])
			check, ok := want[name]
			if !ok {
				t.Fatalf("query %q of docs/clickhouse.md has no expectation in this test", name)
			}
			if err := check(got); err != nil {
				t.Errorf("query %s: %v", name, err)
			}
			if name != "reconciliation" && name != "rollup_lag" && strings.Count(got, "\n") < 2 {
				t.Errorf("query %s returned %q: the seed does not exercise it", name, got)
			}
		}
	}
	t.Run("before any rollup", func(t *testing.T) { run(t, evs) })
	rollup(t, conn, ledger.RollupOptions{Before: time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC)})
	t.Run("half of March rolled up", func(t *testing.T) { run(t, evs) })
	rollup(t, conn, ledger.RollupOptions{})
	t.Run("all rolled up", func(t *testing.T) {
		run(t, evs)
		if got := httpQuery(t, ch.HTTPAddr, queries["rollup_lag"]); !strings.HasPrefix(got, "0\t") {
			t.Errorf("rollup_lag after a full rollup = %q, want 0 dirty buckets", got)
		}
	})
	late := genEvents(r, "late", 200, 4, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), 31*24*time.Hour)
	insert(t, conn, late...)
	insert(t, conn, pick(r, evs, 300)...)
	all := append(append([]ev{}, evs...), late...)
	t.Run("late events and redeliveries", func(t *testing.T) { run(t, all) })
	rollup(t, conn, ledger.RollupOptions{})
	t.Run("rolled up again", func(t *testing.T) { run(t, all) })
}

// httpQuery runs q over ClickHouse's HTTP interface and returns the
// TabSeparated result.
func httpQuery(t *testing.T, addr, q string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/?database="+db,
		strings.NewReader(q+"\nFORMAT TabSeparated"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("query failed: %s\n%s", b, q)
	}
	return string(b)
}

// docExpectations returns, per query name, a check of its TabSeparated
// result against the distinct events of stored.
func docExpectations(stored []ev) map[string]func(string) error {
	march, april := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	tb := pricing.Default()
	seen := map[string]bool{}
	var inMarch []ev
	for _, e := range stored {
		if !seen[e.id] && !e.at.Before(march) && e.at.Before(april) {
			inMarch = append(inMarch, e)
		}
		seen[e.id] = true
	}
	nano := func(n pricing.NanoUSD) string { return n.String() }

	type acc struct {
		requests, prompt, hit, miss, completion, reasoning, unpriced uint64
		cost, atMiss, atHit                                          pricing.NanoUSD
		versions                                                     map[string]bool
		priced                                                       bool
	}
	group := func(keyOf func(ev) string) map[string]*acc {
		out := map[string]*acc{}
		for _, e := range inMarch {
			k := keyOf(e)
			a := out[k]
			if a == nil {
				a = &acc{versions: map[string]bool{}}
				out[k] = a
			}
			a.requests++
			a.prompt += e.prompt
			a.hit += e.hit
			a.miss += e.miss
			a.completion += e.out
			a.reasoning += e.reasoning
			a.cost += e.cost
			a.versions[e.version] = true
			if e.version == "" {
				a.unpriced++
				continue
			}
			v, _ := tb.At(e.at)
			p := v.Models[e.upstream]
			a.priced = true
			a.atMiss += pricing.NanoUSD(e.hit) * p.InputCacheMiss
			a.atHit += pricing.NanoUSD(e.hit) * p.InputCacheHit
		}
		return out
	}
	lines := func(m map[string]*acc, line func(k string, a *acc) string) string {
		var b strings.Builder
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if l := line(k, m[k]); l != "" {
				b.WriteString(l + "\n")
			}
		}
		return b.String()
	}
	exact := func(want string) func(string) error {
		return func(got string) error {
			if got != want {
				return fmt.Errorf("got\n%s\nwant\n%s", got, want)
			}
			return nil
		}
	}
	versions := func(a *acc) string {
		vs := slices.Sorted(maps.Keys(a.versions))
		for i, v := range vs {
			vs[i] = "'" + v + "'"
		}
		return "[" + strings.Join(vs, ",") + "]"
	}

	return map[string]func(string) error{
		"invoice": exact(lines(group(func(e ev) string { return e.key }), func(k string, a *acc) string {
			return fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d", k, a.requests, a.prompt, a.hit, a.miss,
				a.completion, a.reasoning, nano(a.cost), versions(a), a.unpriced)
		})),
		"invoice_lines": exact(lines(group(func(e ev) string {
			if e.key != "key-1" {
				return ""
			}
			return e.model + "\t" + e.version
		}), func(k string, a *acc) string {
			if k == "" {
				return ""
			}
			return fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%s", k, a.requests, a.hit, a.miss, a.completion, nano(a.cost))
		})),
		"cost_per_model_per_day": exact(lines(group(func(e ev) string {
			return e.at.UTC().Format(time.DateOnly) + "\t" + e.model
		}), func(k string, a *acc) string {
			return fmt.Sprintf("%s\t%d\t%s", k, a.requests, nano(a.cost))
		})),
		"cache_hit_savings": exact(lines(group(func(e ev) string { return e.key }), func(k string, a *acc) string {
			if !a.priced {
				return ""
			}
			// Only the priced rows join the price table.
			var hit uint64
			for _, e := range inMarch {
				if e.key == k && e.version != "" {
					hit += e.hit
				}
			}
			return fmt.Sprintf("%s\t%d\t%s\t%s\t%s", k, hit, nano(a.atMiss), nano(a.atHit), nano(a.atMiss-a.atHit))
		})),
		"reconciliation":            exact("0\t0\t0.000000000\n"),
		"revenue_per_price_version": exact(lines(group(func(e ev) string { return e.version }), func(k string, a *acc) string { return fmt.Sprintf("%s\t%d\t%s", k, a.requests, nano(a.cost)) })),
		"estimated_usage": exact(lines(group(func(e ev) string { return e.usageSource + "\t" + e.outcome }), func(k string, a *acc) string {
			return fmt.Sprintf("%s\t%d\t%d", k, a.requests, a.completion)
		})),
		"rollup_lag": func(got string) error {
			if len(strings.Split(strings.TrimSuffix(got, "\n"), "\t")) != 2 {
				return fmt.Errorf("want one row of 2 columns, got %q", got)
			}
			return nil
		},
	}
}
