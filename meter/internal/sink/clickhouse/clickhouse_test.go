package clickhouse_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/meter/internal/sink"
	chsink "github.com/qyai/qyai/meter/internal/sink/clickhouse"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/usage"
)

// TestWriteRoundTrip writes edge values and reads them back unchanged.
func TestWriteRoundTrip(t *testing.T) {
	ch := scripts.ClickHouse(t)
	ctx := t.Context()
	conn, err := chschema.Open(ctx, chschema.Options{Addr: ch.Addr, Database: "qyai", User: "default"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if err := chschema.Apply(ctx, conn, "qyai", chschema.ApplyOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	w := chsink.NewWriter(conn, "qyai", false, func() time.Time { return now })

	started := time.Date(2026, 4, 30, 23, 59, 59, 999_000_000, time.FixedZone("CST", 8*3600))
	rows := []sink.Row{
		{
			Event: usage.Event{
				SchemaVersion: 1, ID: "edge", RequestID: "req", StartedAt: started, KeyID: "k",
				Model: "deepseek-v4-pro", Thinking: true, Stream: true, Status: 65535,
				PromptTokens: 1_000_000_000_000, CacheHitTokens: 1, CompletionTokens: 7,
				ReasoningTokens: 3, LatencyMs: 4294967295, TTFTMs: 0, ErrorType: "x", Outcome: usage.OutcomeTimeout,
				UsageSource: usage.SourceEstimated, Gateway: "gw", TraceID: "tr",
			},
			CacheMissTokens: 999_999_999_999,
			Cost:            999_999_999_999_999_999,
			PriceVersion:    "2026-01-01",
		},
		{Event: usage.Event{SchemaVersion: 1, ID: "unpriced", StartedAt: now, FinishedAt: now, KeyID: "k", Model: "m"}},
	}
	if err := w.Write(ctx, rows); err != nil {
		t.Fatalf("write: %v", err)
	}

	var (
		startedAt, finishedAt, insertedAt time.Time
		thinking, stream                  uint8
		status                            uint16
		prompt, miss                      uint64
		latency                           uint32
		cost                              decimal.Decimal
		version, outcome, source          string
	)
	err = conn.QueryRow(ctx, `SELECT started_at, finished_at, inserted_at, thinking, stream, status, prompt_tokens,
		cache_miss_tokens, latency_ms, cost_usd, price_version, outcome, usage_source
		FROM qyai.usage_events WHERE event_id = 'edge'`).
		Scan(&startedAt, &finishedAt, &insertedAt, &thinking, &stream, &status, &prompt, &miss, &latency, &cost, &version, &outcome, &source)
	if err != nil {
		t.Fatal(err)
	}
	// 23:59:59.999 at UTC+8 is 15:59:59 UTC: stored in UTC, truncated to the second.
	if want := time.Date(2026, 4, 30, 15, 59, 59, 0, time.UTC); !startedAt.Equal(want) {
		t.Errorf("started_at = %s, want %s", startedAt, want)
	}
	if finishedAt.Unix() != 0 || !insertedAt.Equal(now) {
		t.Errorf("finished_at = %s (want epoch for unknown), inserted_at = %s", finishedAt, insertedAt)
	}
	if thinking != 1 || stream != 1 || status != 65535 || prompt != 1_000_000_000_000 || miss != 999_999_999_999 ||
		latency != 4294967295 || version != "2026-01-01" || outcome != usage.OutcomeTimeout || source != usage.SourceEstimated {
		t.Errorf("row = %d %d %d %d %d %d %q %q %q", thinking, stream, status, prompt, miss, latency, version, outcome, source)
	}
	if want := decimal.RequireFromString("999999999.999999999"); !cost.Equal(want) {
		t.Errorf("cost_usd = %s, want %s", cost, want)
	}
	var unpricedCost decimal.Decimal
	var unpricedVersion string
	if err := conn.QueryRow(ctx, "SELECT cost_usd, price_version FROM qyai.usage_events WHERE event_id = 'unpriced'").
		Scan(&unpricedCost, &unpricedVersion); err != nil {
		t.Fatal(err)
	}
	if !unpricedCost.IsZero() || unpricedVersion != "" {
		t.Errorf("unpriced row: cost %s version %q", unpricedCost, unpricedVersion)
	}
}
