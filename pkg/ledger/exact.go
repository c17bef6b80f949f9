package ledger

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ExactColumns are the columns of the rows ExactQuery selects from.
const ExactColumns = "key_id, hour, model, requests, prompt_tokens, cache_hit_tokens, cache_miss_tokens," +
	" completion_tokens, reasoning_tokens, cost_usd"

// ExactQuery answers "usage of one key (or all) in [from, to)" exactly, in
// two steps (docs/clickhouse.md, "How exactness is guaranteed"):
//
//  1. It reads, for every (key, UTC hour) bucket of the whole hours of the
//     period, the insert counter (usage_inserts) and the ledger run that
//     saw the most rows (usage_rollup_ledger). A bucket whose run still
//     matches the counter is clean: nothing reached it since.
//  2. It returns a query over rows with ExactColumns: for clean buckets
//     the aggregate rows of exactly that run (usage_rollup_hourly), for
//     every other bucket, and for partial hours at either end, the rows of
//     usage_events FINAL grouped by hour.
//
// The ledger row of a run is written after its aggregate rows, so a run
// named in step 1 has all its rows by step 2; each bucket is decided once,
// so it is counted from exactly one source. The sets travel as external
// tables (clean, dirty) in the returned context. fill is SELECT ... FROM
// (%s) GROUP BY ...: the caller's aggregation over the rows.
func ExactQuery(ctx context.Context, conn driver.Conn, db, keyID string, from, to time.Time, fill string) (context.Context, string, []any, error) {
	from, to = from.UTC(), to.UTC()
	// Whole hours [fh, th) come from buckets; partial hours from raw rows.
	fh := from.Truncate(time.Hour)
	if fh.Before(from) {
		fh = fh.Add(time.Hour)
	}
	th := to.Truncate(time.Hour)
	args := []any{clickhouse.Named("fh", fh.Unix()), clickhouse.Named("th", th.Unix())}
	key := ""
	if keyID != "" {
		key = " AND key_id = @key"
		args = append(args, clickhouse.Named("key", keyID))
	}

	var ranges []string // raw time ranges, as SQL conditions
	addRange := func(a, b time.Time) {
		if a.Before(b) {
			ranges = append(ranges, fmt.Sprintf("(started_at >= toDateTime(%d) AND started_at < toDateTime(%d))", a.Unix(), b.Unix()))
		}
	}
	if !fh.Before(th) { // not one whole hour: raw rows only
		addRange(from, to)
	} else {
		addRange(from, fh)
		addRange(th, to)
	}

	var clean, dirty *ext.Table
	if fh.Before(th) {
		var err error
		clean, dirty, err = bucketStates(ctx, conn, db, key, args, func(a, b time.Time) { addRange(a, b) })
		if err != nil {
			return ctx, "", nil, err
		}
	}

	var parts []string
	var tables []*ext.Table
	if clean != nil {
		tables = append(tables, clean)
		parts = append(parts, "SELECT "+ExactColumns+" FROM "+db+".usage_rollup_hourly"+
			" WHERE hour >= toDateTime(@fh) AND hour < toDateTime(@th)"+key+" AND (key_id, hour, version) IN clean")
	}
	if len(ranges) > 0 {
		// Inside the whole hours, only the dirty buckets (a dirty hour of
		// one key may be a clean hour of another).
		inDirty := "0"
		if dirty != nil {
			tables = append(tables, dirty)
			inDirty = "(key_id, toStartOfHour(started_at, 'UTC')) IN dirty"
		}
		parts = append(parts, "SELECT key_id, toStartOfHour(started_at, 'UTC') AS hour, model, count() AS requests,"+
			" sum(prompt_tokens) AS prompt_tokens, sum(cache_hit_tokens) AS cache_hit_tokens,"+
			" sum(cache_miss_tokens) AS cache_miss_tokens, sum(completion_tokens) AS completion_tokens,"+
			" sum(reasoning_tokens) AS reasoning_tokens, sum(cost_usd) AS cost_usd"+
			" FROM "+db+".usage_events FINAL WHERE ("+strings.Join(ranges, " OR ")+")"+key+
			" AND (started_at < toDateTime(@fh) OR started_at >= toDateTime(@th) OR "+inDirty+")"+
			" GROUP BY key_id, hour, model")
	}
	if len(parts) == 0 {
		// Nothing stored in the period: an empty source of the right shape.
		parts = append(parts, "SELECT "+ExactColumns+" FROM "+db+".usage_rollup_hourly WHERE 0")
	}
	if len(tables) > 0 {
		ctx = clickhouse.Context(ctx, clickhouse.WithExternalTable(tables...))
	}
	return ctx, fmt.Sprintf(fill, strings.Join(parts, " UNION ALL ")), args, nil
}

// bucketStates runs step 1 of ExactQuery over the whole hours [@fh, @th):
// it returns the clean buckets with their run's version and the dirty
// buckets as external tables (nil when empty), and reports every dirty
// hour, merged into ranges, to addRange.
func bucketStates(ctx context.Context, conn driver.Conn, db, key string, args []any, addRange func(a, b time.Time)) (clean, dirty *ext.Table, err error) {
	where := "hour >= toDateTime(@fh) AND hour < toDateTime(@th)" + key
	q := "SELECT key_id, hour, sumIf(rows, source = 0) AS inserted, maxIf(rows, source = 1) AS rolled," +
		" argMaxIf(version, rows, source = 1) AS version" +
		" FROM (SELECT 0 AS source, key_id, hour, inserted_rows AS rows, toUInt64(0) AS version" +
		" FROM " + db + ".usage_inserts WHERE " + where +
		" UNION ALL SELECT 1, key_id, hour, inserted_rows, version FROM " + db + ".usage_rollup_ledger WHERE " + where +
		") GROUP BY key_id, hour ORDER BY hour"
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("read usage buckets: %w", err)
	}
	defer func() { _ = rows.Close() }() // its errors are rows.Err's
	var runStart, runEnd time.Time      // the dirty hours being merged
	for rows.Next() {
		var keyID string
		var hour time.Time
		var inserted, rolled, version uint64
		if err := rows.Scan(&keyID, &hour, &inserted, &rolled, &version); err != nil {
			return nil, nil, fmt.Errorf("scan usage bucket: %w", err)
		}
		hour = hour.UTC()
		if rolled > 0 && rolled == inserted {
			if clean == nil {
				if clean, err = ext.NewTable("clean", ext.Column("key_id", "String"),
					ext.Column("hour", "DateTime('UTC')"), ext.Column("version", "UInt64")); err != nil {
					return nil, nil, err
				}
			}
			if err := clean.Append(keyID, hour, version); err != nil {
				return nil, nil, err
			}
			continue
		}
		if dirty == nil {
			if dirty, err = ext.NewTable("dirty", ext.Column("key_id", "String"), ext.Column("hour", "DateTime('UTC')")); err != nil {
				return nil, nil, err
			}
		}
		if err := dirty.Append(keyID, hour); err != nil {
			return nil, nil, err
		}
		switch {
		case runEnd.IsZero():
			runStart, runEnd = hour, hour.Add(time.Hour)
		case hour.After(runEnd):
			addRange(runStart, runEnd)
			runStart, runEnd = hour, hour.Add(time.Hour)
		default:
			runEnd = hour.Add(time.Hour) // same or next hour (rows come in hour order)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read usage buckets: %w", err)
	}
	if !runEnd.IsZero() {
		addRange(runStart, runEnd)
	}
	return clean, dirty, nil
}
