package ledger

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/chschema"
)

// Rollup defaults.
const (
	// DefaultRollupLookback is how far back (in insertion time, by the
	// ClickHouse server's clock) an ordinary rollup looks for buckets that
	// changed, whatever the age of their events. Changes older than that
	// (rollups failing for hours) are found by a full rollup
	// (RollupOptions.Lookback < 0); until then their buckets are read from
	// usage_events, exactly.
	DefaultRollupLookback = 3 * time.Hour
	defaultMaxBuckets     = 200_000
	defaultBucketsPerRun  = 20_000
	// maxKeyFilter is the most keys a run names in its WHERE clause; a run
	// over more keys reads its hours for every key and keeps its buckets.
	maxKeyFilter = 1_000
)

// RollupOptions tunes Rollup.
type RollupOptions struct {
	// Cluster selects the cluster form (inserts through the Distributed
	// tables, synchronously).
	Cluster string
	// Before bounds the buckets rolled up: only hours that ended at or
	// before Before. The meter passes now minus a settle time, so that the
	// current hour (still changing) is left to usage_events. Required.
	Before time.Time
	// Lookback limits the search for changed buckets to those that received
	// rows in the last Lookback (insertion time; events of any age). Zero
	// means DefaultRollupLookback; negative searches every bucket ever
	// stored.
	Lookback time.Duration
	// MaxBuckets bounds the buckets one call rolls up (default 200,000): a
	// large backlog is worked off over several calls, oldest hours first.
	MaxBuckets int
	// BucketsPerRun bounds the buckets recomputed by one run, under one
	// version (default 20,000).
	BucketsPerRun int
	// Now is the clock of rolled_at and of versions; nil means time.Now.
	Now func() time.Time
}

// RollupStats says what one Rollup call did.
type RollupStats struct {
	// Buckets is the number of (key, hour) buckets recomputed and confirmed.
	Buckets int
	// Runs is the number of runs (up to BucketsPerRun buckets each, one
	// version).
	Runs int
	// Pending is true when MaxBuckets stopped the call before every changed
	// bucket was rolled up.
	Pending bool
}

// Bucket is one key's usage in one UTC hour, the unit of the rollup.
type bucket struct {
	hour     time.Time
	keyID    string
	inserted uint64
}

// Rollup brings usage_rollup_hourly up to date for every bucket (key, UTC
// hour) that changed since it was last rolled up, or never was, and ended
// before opts.Before; with ExactQuery it is dedup layer 4 (package doc). It is safe to run concurrently with inserts, with
// readers and with other Rollup calls (in other meter replicas): each run
// is self-contained (see docs/clickhouse.md, "How exactness is
// guaranteed"). For each run of up to BucketsPerRun buckets, oldest hours
// first:
//
//  1. the counter values of the buckets (usage_inserts) are read first,
//     all at once, before anything else;
//  2. SELECT ... FROM usage_events FINAL recomputes the buckets, and their
//     rows are inserted into usage_rollup_hourly under a fresh version;
//  3. only then the ledger (usage_rollup_ledger) records (bucket, version,
//     counter value from step 1, number of aggregate rows).
//
// A failure or crash between the steps leaves aggregate rows that no
// ledger row names, which every reader ignores; the bucket stays dirty
// and is read from usage_events until a later call completes it.
func Rollup(ctx context.Context, conn driver.Conn, db string, opts RollupOptions) (RollupStats, error) {
	var stats RollupStats
	if err := chschema.CheckNames(db, opts.Cluster); err != nil {
		return stats, err
	}
	if opts.Before.IsZero() {
		return stats, errors.New("rollup: RollupOptions.Before is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBuckets <= 0 {
		opts.MaxBuckets = defaultMaxBuckets
	}
	if opts.BucketsPerRun <= 0 {
		opts.BucketsPerRun = defaultBucketsPerRun
	}
	if opts.Lookback == 0 {
		opts.Lookback = DefaultRollupLookback
	}
	if opts.Cluster != "" {
		// "Acked means stored" for the Distributed inserts below, and never
		// a block dropped as a duplicate of another.
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
			"insert_distributed_sync": 1, "insert_deduplicate": 0,
		}))
	}
	// The last hour that may be rolled up is the last one that ended at or
	// before Before.
	last := opts.Before.UTC().Add(-time.Hour).Truncate(time.Hour)
	// Step 1 for every bucket of this call: the counters are read before
	// any aggregate is computed.
	dirty, pending, err := dirtyBuckets(ctx, conn, db, opts.Lookback, last, opts.MaxBuckets)
	if err != nil {
		return stats, err
	}
	stats.Pending = pending
	// Runs of up to BucketsPerRun buckets, in hour order (a run spans
	// several hours when each has few changed buckets, as after a backlog).
	for len(dirty) > 0 {
		n := min(len(dirty), opts.BucketsPerRun)
		run := dirty[:n]
		dirty = dirty[n:]
		if err := rollupRun(ctx, conn, db, run, opts); err != nil {
			return stats, err
		}
		stats.Runs++
		stats.Buckets += len(run)
	}
	return stats, nil
}

// dirtyBuckets lists the buckets with hour <= last whose counter differs
// from their best ledger row (or that have none), oldest first, at most
// limit of them. With lookback > 0 only buckets that received rows in the
// last lookback are considered: a scan of the small counter table (GLOBAL:
// on a cluster both tables are Distributed).
func dirtyBuckets(ctx context.Context, conn driver.Conn, db string, lookback time.Duration, last time.Time, limit int) ([]bucket, bool, error) {
	where := "hour <= toDateTime(?)"
	args := []any{last.Unix()}
	if lookback > 0 {
		where += " AND (key_id, hour) GLOBAL IN (SELECT key_id, hour FROM " + db + ".usage_inserts" +
			" WHERE insert_hour >= toStartOfHour(now(), 'UTC') - ? AND hour <= toDateTime(?))"
		args = append(args, int64(lookback.Seconds()), last.Unix())
	}
	// The state of usage_rollup_state, with the hour bounds inside both
	// branches so that only the partitions in range are read.
	q := "SELECT hour, key_id, inserted_rows FROM (" +
		" SELECT key_id, hour, sumIf(rows, source = 0) AS inserted_rows, maxIf(rows, source = 1) AS rolled_rows" +
		" FROM (" +
		" SELECT 0 AS source, key_id, hour, inserted_rows AS rows, toUInt64(0) AS version FROM " + db + ".usage_inserts WHERE " + where +
		" UNION ALL" +
		" SELECT 1 AS source, key_id, hour, inserted_rows AS rows, version FROM " + db + ".usage_rollup_ledger WHERE " + where +
		" ) GROUP BY key_id, hour" +
		") WHERE inserted_rows > 0 AND rolled_rows != inserted_rows" +
		" ORDER BY hour, key_id LIMIT " + fmt.Sprint(limit+1)
	rows, err := conn.Query(ctx, q, append(args, args...)...)
	if err != nil {
		return nil, false, fmt.Errorf("rollup: find changed buckets: %w", err)
	}
	defer func() { _ = rows.Close() }() // its errors are rows.Err's
	var out []bucket
	for rows.Next() {
		var b bucket
		if err := rows.Scan(&b.hour, &b.keyID, &b.inserted); err != nil {
			return nil, false, fmt.Errorf("rollup: scan changed bucket: %w", err)
		}
		b.hour = b.hour.UTC()
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("rollup: find changed buckets: %w", err)
	}
	pending := len(out) > limit
	if pending {
		out = out[:limit]
	}
	return out, pending, nil
}

// aggRow is one usage_rollup_hourly row.
type aggRow struct {
	hour                                               time.Time
	keyID, model, upstreamModel, priceVersion          string
	requests, prompt, hit, miss, completion, reasoning uint64
	cost                                               decimal.Decimal
}

// rollupRun recomputes the buckets of run, which are in hour order (steps
// 2 and 3). The aggregate rows come back to the client and are inserted
// from here, so that the ledger can record how many rows each bucket has: a
// reader uses a version only when it sees all of them.
func rollupRun(ctx context.Context, conn driver.Conn, db string, run []bucket, opts RollupOptions) error {
	type key struct {
		keyID string
		hour  int64
	}
	first, last := run[0].hour, run[len(run)-1].hour
	want := make(map[key]bool, len(run))
	var keys []any
	for _, b := range run {
		if !want[key{b.keyID, 0}] {
			want[key{b.keyID, 0}] = true
			keys = append(keys, b.keyID)
		}
		want[key{b.keyID, b.hour.Unix()}] = true
	}
	version, err := newVersion(opts.Now())
	if err != nil {
		return err
	}
	where := "started_at >= toDateTime(?) AND started_at < toDateTime(?)"
	args := []any{first.Unix(), last.Add(time.Hour).Unix()}
	if len(keys) <= maxKeyFilter {
		where += " AND key_id IN ?"
		args = append(args, clickhouse.GroupSet{Value: keys})
	}
	q := "SELECT key_id, toStartOfHour(started_at, 'UTC') AS hour, model, upstream_model, price_version, count()," +
		" sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens)," +
		" sum(cost_usd) FROM " + db + ".usage_events FINAL WHERE " + where +
		" GROUP BY key_id, hour, model, upstream_model, price_version"
	span := first.Format(time.RFC3339) + ".." + last.Format(time.RFC3339)
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("rollup: aggregate %s (%d buckets): %w", span, len(run), err)
	}
	var agg []aggRow
	perBucket := map[key]uint64{}
	for rows.Next() {
		var r aggRow
		if err := rows.Scan(&r.keyID, &r.hour, &r.model, &r.upstreamModel, &r.priceVersion, &r.requests, &r.prompt,
			&r.hit, &r.miss, &r.completion, &r.reasoning, &r.cost); err != nil {
			_ = rows.Close() // the scan error is the one to report
			return fmt.Errorf("rollup: scan aggregate: %w", err)
		}
		// Buckets of the range that did not change (or are not this
		// run's) keep their rows.
		k := key{r.keyID, r.hour.Unix()}
		if !want[k] {
			continue
		}
		agg = append(agg, r)
		perBucket[k]++
	}
	_ = rows.Close() // its errors are rows.Err's, checked next
	if err := rows.Err(); err != nil {
		return fmt.Errorf("rollup: aggregate %s: %w", span, err)
	}

	if len(agg) > 0 {
		batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".usage_rollup_hourly (key_id, hour, model, upstream_model,"+
			" price_version, version, requests, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens,"+
			" reasoning_tokens, cost_usd)")
		if err != nil {
			return fmt.Errorf("rollup: prepare aggregate insert: %w", err)
		}
		for _, r := range agg {
			if err := batch.Append(r.keyID, r.hour, r.model, r.upstreamModel, r.priceVersion, version, r.requests, r.prompt,
				r.hit, r.miss, r.completion, r.reasoning, r.cost); err != nil {
				_ = batch.Abort()
				return fmt.Errorf("rollup: append aggregate row: %w", err)
			}
		}
		if err := batch.Send(); err != nil {
			return fmt.Errorf("rollup: insert aggregates of %s (%d buckets): %w", span, len(run), err)
		}
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".usage_rollup_ledger (key_id, hour, version, inserted_rows, agg_rows, rolled_at)")
	if err != nil {
		return fmt.Errorf("rollup: prepare ledger insert: %w", err)
	}
	rolledAt := opts.Now().UTC().Truncate(time.Second)
	for _, b := range run {
		if err := batch.Append(b.keyID, b.hour, version, b.inserted, perBucket[key{b.keyID, b.hour.Unix()}], rolledAt); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("rollup: append ledger row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("rollup: record %s (%d buckets) in the ledger: %w", span, len(run), err)
	}
	return nil
}

// newVersion returns a version unique to one run: milliseconds since the
// epoch in the high bits (so later runs tend to win ties of max(version))
// and 20 random bits, so that two replicas starting a run in the same
// millisecond do not share a version. Correctness needs only uniqueness:
// a ledger row is checked against the counter, never against a clock.
func newVersion(now time.Time) (uint64, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("rollup: random version: %w", err)
	}
	return uint64(now.UnixMilli())<<20 | uint64(binary.BigEndian.Uint32(b[:])&0xFFFFF), nil
}
