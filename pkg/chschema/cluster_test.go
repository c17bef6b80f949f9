package chschema_test

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/chschema"
)

// TestApplyAllOnCluster applies the cluster form on a real 2 x 2 cluster, from
// a partial node list and by concurrent appliers, twice; then events inserted
// through the Distributed table spread over both shards, every copy of an event
// lands on one shard and FINAL counts it once.
func TestApplyAllOnCluster(t *testing.T) {
	c := scripts.ClickHouseCluster(t)
	name, err := c.ClusterName()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	// Only node 1 named: the others are found in system.clusters.
	o := chschema.Options{Addr: c.Node(1).Addr, Database: "qyai", User: "default", Cluster: name}
	opts := chschema.ApplyOptions{Cluster: name, Logger: log}
	for round := 1; round <= 2; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for range 3 {
			wg.Go(func() { errs <- chschema.ApplyAll(ctx, o, opts) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: ApplyAll: %v", round, err)
			}
		}
	}
	migs, err := chschema.Migrations("qyai", opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		conn, err := chschema.Open(ctx, chschema.Options{Addr: n.Addr, Database: "qyai", User: "default"})
		if err != nil {
			t.Fatalf("node %d: %v", n.Index, err)
		}
		got, err := chschema.AppliedVersions(ctx, conn, "qyai")
		if err != nil || len(got) != len(migs) {
			t.Errorf("node %d: applied versions %v (%v), want all %d", n.Index, got, err, len(migs))
		}
		var tables uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = 'qyai' AND name IN ('usage_events', 'usage_events_local', 'usage_hourly', 'audit_log_local')").Scan(&tables); err != nil || tables != 4 {
			t.Errorf("node %d: %d of the 4 checked tables (%v)", n.Index, tables, err)
		}
		_ = conn.Close()
	}

	// Every node named: the client fails over between them.
	all := o
	all.Addr = c.Addrs()
	conn, err := chschema.Open(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ictx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1, "insert_deduplicate": 0}))
	now := time.Now().UTC().Truncate(time.Second)
	const events = 200
	for copyN := range 2 { // every event twice, as a redelivery past JetStream's dedup
		b, err := conn.PrepareBatch(ictx, "INSERT INTO qyai.usage_events (event_id, started_at, finished_at, key_id, prompt_tokens, cost_usd)")
		if err != nil {
			t.Fatal(err)
		}
		for i := range events {
			if err := b.Append(fmt.Sprintf("ev-%d", i), now, now, "key-1", uint64(10), decimal.New(1, -6)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatalf("copy %d: %v", copyN, err)
		}
	}
	var n, tokens uint64
	if err := conn.QueryRow(ctx, "SELECT count(), sum(prompt_tokens) FROM qyai.usage_events FINAL").Scan(&n, &tokens); err != nil {
		t.Fatal(err)
	}
	if n != events || tokens != 10*events {
		t.Errorf("FINAL over the shards: %d events, %d tokens; want %d, %d", n, tokens, events, 10*events)
	}
	// Each shard holds some of the events, and both copies of each of them.
	// The Distributed insert writes each shard's part to one of its replicas;
	// the node read here may still be fetching the other copy from its peer,
	// so it is read until replication has caught up (or 30 s have passed).
	for _, i := range []int{1, 3} {
		nc, err := chschema.Open(ctx, chschema.Options{Addr: c.Node(i).Addr, Database: "qyai", User: "default"})
		if err != nil {
			t.Fatal(err)
		}
		var raw, distinct uint64
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if err := nc.QueryRow(ctx, "SELECT count(), uniqExact(event_id) FROM qyai.usage_events_local").Scan(&raw, &distinct); err != nil {
				t.Fatal(err)
			}
			if raw == 2*distinct || time.Now().After(end) {
				break
			}
		}
		_ = nc.Close()
		if distinct == 0 || distinct == events || raw != 2*distinct {
			t.Errorf("node %d (shard %d): %d rows of %d events; want a share of the events, both copies of each", i, (i+1)/2, raw, distinct)
		}
		t.Logf("shard %d: %d events, %d rows", (i+1)/2, distinct, raw)
	}
}
