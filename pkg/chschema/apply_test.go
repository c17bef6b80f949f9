package chschema_test

import (
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/qyai/qyai/pkg/chschema"
)

// wantColumns is the usage_events table of docs/contracts-internal.md.
var wantColumns = []string{
	"event_id String", "request_id String", "started_at DateTime", "finished_at DateTime",
	"key_id String", "key_prefix String", "tier String", "model String", "upstream_model String",
	"thinking UInt8", "stream UInt8", "status UInt16", "error_type String", "outcome String",
	"prompt_tokens UInt64", "cache_hit_tokens UInt64", "cache_miss_tokens UInt64",
	"completion_tokens UInt64", "reasoning_tokens UInt64", "usage_source String",
	"latency_ms UInt32", "ttft_ms UInt32", "gateway String", "trace_id String",
	"price_version String", "cost_usd Decimal(18, 9)", "schema_version UInt8", "inserted_at DateTime",
}

func TestApplyIdempotent(t *testing.T) {
	ch := scripts.ClickHouse(t)
	ctx := t.Context()
	// The database does not exist yet: Open creates it.
	conn, err := chschema.Open(ctx, chschema.Options{Addr: ch.Addr, Database: "qyai", User: "default"})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() { _ = conn.Close() }()

	// Concurrent appliers (meter and admin starting together), then a
	// second round on a schema that is already there.
	for round := 1; round <= 2; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Go(func() {
				errs <- chschema.Apply(ctx, conn, "qyai", chschema.ApplyOptions{Logger: slog.New(slog.DiscardHandler)})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: apply: %v", round, err)
			}
		}
	}

	migs, err := chschema.Migrations("qyai", chschema.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := chschema.AppliedVersions(ctx, conn, "qyai")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(migs) || got[len(got)-1] != migs[len(migs)-1].Version {
		t.Errorf("applied versions = %v, want 1..%d", got, migs[len(migs)-1].Version)
	}
	var distinct uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM qyai.schema_migrations FINAL").Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	if int(distinct) != len(migs) {
		t.Errorf("schema_migrations FINAL has %d rows, want %d", distinct, len(migs))
	}

	rows, err := conn.Query(ctx, "DESCRIBE TABLE qyai.usage_events")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }()
	var cols []string
	for rows.Next() {
		// 18.16 has 5 columns: name, type, default_type, default_expression,
		// comment (modern servers add more; we read the first two).
		var name, typ, defType, defExpr, comment string
		if err := rows.Scan(&name, &typ, &defType, &defExpr, &comment); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, name+" "+typ)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if g, w := strings.Join(cols, ", "), strings.Join(wantColumns, ", "); g != w {
		t.Errorf("usage_events columns:\n got %s\nwant %s", g, w)
	}

	var engine, sortingKey, partitionKey string
	err = conn.QueryRow(ctx, "SELECT engine, sorting_key, partition_key FROM system.tables WHERE database = 'qyai' AND name = 'usage_events'").
		Scan(&engine, &sortingKey, &partitionKey)
	if err != nil {
		t.Fatal(err)
	}
	if engine != "ReplacingMergeTree" || sortingKey != "key_id, started_at, event_id" || partitionKey != "toYYYYMM(started_at)" {
		t.Errorf("usage_events engine %q, sorting key %q, partition key %q", engine, sortingKey, partitionKey)
	}
}
