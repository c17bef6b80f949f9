package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ClickHouseCluster starts a ClickHouse 18.16 cluster of 2 shards x 2 replicas with
// one ZooKeeper (deploy/local/clickhouse-cluster.sh) on free loopback ports. Node 1
// and 2 are the replicas of shard 1, node 3 and 4 those of shard 2; ClusterName
// returns the cluster's name for ON CLUSTER and Distributed tables. Node Stop and
// Start stop and restart one ClickHouse server (ZooKeeper keeps running). It is
// stopped when the test ends.
func (d Scripts) ClickHouseCluster(t testing.TB) *Cluster {
	t.Helper()
	c := d.startCluster(t, "clickhouse", nil)
	if len(c.Nodes) != 4 {
		t.Fatalf("testenv: clickhouse cluster has %d nodes, want 4", len(c.Nodes))
	}
	if _, err := c.ClusterName(); err != nil {
		t.Fatalf("testenv: start clickhouse cluster: %v", err)
	}
	return c
}

// ClusterName returns the engine's own name of the cluster (<dir>/cluster), e.g.
// the ClickHouse cluster of remote_servers ("qyai").
func (c *Cluster) ClusterName() (string, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, "cluster"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
