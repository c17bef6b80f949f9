// Package clickhouse writes usage rows to the usage_events table (created by
// pkg/chschema) with one native-protocol batch insert per call.
package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/meter/internal/sink"
)

// Columns in the order Write appends them.
const columns = "event_id, request_id, started_at, finished_at, key_id, key_prefix, tier, model, " +
	"upstream_model, thinking, stream, status, error_type, outcome, prompt_tokens, cache_hit_tokens, " +
	"cache_miss_tokens, completion_tokens, reasoning_tokens, usage_source, latency_ms, ttft_ms, " +
	"gateway, trace_id, price_version, cost_usd, schema_version, inserted_at"

// Writer inserts rows into <database>.usage_events.
type Writer struct {
	conn    driver.Conn
	insert  string
	cluster bool
	now     func() time.Time
}

// NewWriter returns a Writer on conn. With cluster set, inserts go through
// the Distributed table synchronously (insert_distributed_sync=1), so that a
// successful insert, and thus the ack, means every shard has its rows, and
// without block deduplication (insert_deduplicate=0): a retried batch must
// reach the materialized view that counts inserts (usage_inserts) again,
// which a Replicated table skips for a block it drops as a duplicate. The
// duplicate rows themselves are collapsed by FINAL and the rollup.
func NewWriter(conn driver.Conn, database string, cluster bool, now func() time.Time) *Writer {
	return &Writer{
		conn:    conn,
		insert:  fmt.Sprintf("INSERT INTO %s.usage_events (%s)", database, columns),
		cluster: cluster,
		now:     now,
	}
}

// Write implements sink.Writer with one batch insert.
func (w *Writer) Write(ctx context.Context, rows []sink.Row) error {
	if w.cluster {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
			"insert_distributed_sync": 1, "insert_deduplicate": 0,
		}))
	}
	batch, err := w.conn.PrepareBatch(ctx, w.insert)
	if err != nil {
		return fmt.Errorf("prepare usage insert: %w", err)
	}
	insertedAt := w.now().UTC().Truncate(time.Second)
	for _, r := range rows {
		e := r.Event
		finished := e.FinishedAt
		if finished.IsZero() {
			finished = time.Unix(0, 0)
		}
		if err := batch.Append(
			e.ID, e.RequestID, e.StartedAt.UTC(), finished.UTC(), e.KeyID, e.KeyPrefix, e.Tier, e.Model,
			e.UpstreamModel, b2u(e.Thinking), b2u(e.Stream), uint16(e.Status), e.ErrorType, e.Outcome,
			uint64(e.PromptTokens), uint64(e.CacheHitTokens), uint64(r.CacheMissTokens),
			uint64(e.CompletionTokens), uint64(e.ReasoningTokens), e.UsageSource,
			uint32(e.LatencyMs), uint32(e.TTFTMs), e.Gateway, e.TraceID, r.PriceVersion,
			decimal.New(int64(r.Cost), -9), uint8(e.SchemaVersion), insertedAt,
		); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("append usage row %s: %w", e.ID, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert usage batch of %d rows: %w", len(rows), err)
	}
	return nil
}

// Ping reports whether ClickHouse answers.
func (w *Writer) Ping(ctx context.Context) error { return w.conn.Ping(ctx) }

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
