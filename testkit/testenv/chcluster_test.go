package testenv_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// TestClickHouseCluster starts the 2 x 2 cluster, creates a replicated table and a
// Distributed one over it ON CLUSTER, and checks that rows spread over both shards,
// reach both replicas of each, and reach a replica stopped during the insert once it
// is started again.
func TestClickHouseCluster(t *testing.T) {
	t.Parallel()
	c := scripts.ClickHouseCluster(t)
	ctx := t.Context()
	name, err := c.ClusterName()
	if err != nil || name != "qyai" {
		t.Fatalf("ClusterName() = %q, %v; want qyai", name, err)
	}
	for _, n := range c.Nodes {
		httpGet(t, "http://"+n.HTTPAddr+"/ping")
	}
	conn := openClickHouse(t, c.Node(1).Addr)
	var shards, replicas uint64
	if err := conn.QueryRow(ctx, "SELECT uniqExact(shard_num), count() FROM system.clusters WHERE cluster = 'qyai'").Scan(&shards, &replicas); err != nil {
		t.Fatalf("system.clusters: %v", err)
	}
	if shards != 2 || replicas != 4 {
		t.Fatalf("cluster qyai has %d shards, %d replicas; want 2, 4", shards, replicas)
	}
	// The DDL runs on every node rather than ON CLUSTER: clickhouse-go v2.26.0 hangs
	// reading 18.16's answer to an ON CLUSTER query (clickhouse-client reads it fine).
	for _, n := range c.Nodes {
		nc := openClickHouse(t, n.Addr)
		for _, q := range []string{
			`CREATE TABLE default.t (id String) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/default/t', '{replica}') ORDER BY id`,
			`CREATE TABLE default.td AS default.t ENGINE = Distributed(qyai, default, t, sipHash64(id))`,
		} {
			if err := nc.Exec(ctx, q); err != nil {
				t.Fatalf("node %d: %s: %v", n.Index, q, err)
			}
		}
	}
	insert := func(from int) {
		t.Helper()
		q := fmt.Sprintf("INSERT INTO default.td SELECT toString(number + %d) FROM numbers(100) SETTINGS insert_distributed_sync = 1", from)
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("insert through Distributed: %v", err)
		}
	}
	insert(0)
	c.Node(2).Stop(t)
	insert(100) // shard 1's rows go to node 1 alone
	c.Node(2).Start(t)

	conns := make([]clickhouse.Conn, len(c.Nodes))
	for i, n := range c.Nodes {
		conns[i] = openClickHouse(t, n.Addr)
	}
	counts := make([]uint64, 4)
	deadline := time.Now().Add(20 * time.Second)
	for {
		for i, nc := range conns {
			if err := nc.QueryRow(ctx, "SELECT count() FROM default.t").Scan(&counts[i]); err != nil {
				t.Fatalf("count on node %d: %v", i+1, err)
			}
		}
		if counts[0] == counts[1] && counts[2] == counts[3] && counts[0]+counts[2] == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rows per node = %v; want replicas equal and 200 in all", counts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if counts[0] == 0 || counts[2] == 0 {
		t.Fatalf("rows per node = %v: want both shards used", counts)
	}
}
