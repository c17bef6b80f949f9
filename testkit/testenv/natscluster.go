package testenv

import (
	"path/filepath"
	"strconv"
	"testing"
)

// NATSCluster starts a 3-node NATS JetStream cluster (deploy/local/nats-cluster.sh,
// binary <repo>/.bin/nats-server) on free loopback ports, with data under the
// cluster's directory. Node i has the server name "n<i>", which JetStream reports as
// the leader of a stream (StreamInfo.Cluster.Leader), so that a test can find the
// leader's Node. Use c.URLs("nats") as NATS_URL. It is stopped when the test ends.
func (d Scripts) NATSCluster(t testing.TB) *Cluster {
	t.Helper()
	return d.startCluster(t, "nats", nil)
}

// NATSClusterConfig is NATSCluster with the server config file configFile
// (NATS_CONFIG, passed to every node as -c): authorization, accounts, tls. The
// script's command-line flags (loopback listen, ports, names, cluster routes,
// JetStream) override the file's.
func (d Scripts) NATSClusterConfig(t testing.TB, configFile string) *Cluster {
	t.Helper()
	abs, err := filepath.Abs(configFile)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return d.startCluster(t, "nats", []string{"NATS_CONFIG=" + abs})
}

// NodeNamed returns the node whose server name is name ("n1", "n2", ...), as a
// NATS cluster reports it, or nil.
func (c *Cluster) NodeNamed(name string) *Node {
	for _, n := range c.Nodes {
		if name == "n"+strconv.Itoa(n.Index) {
			return n
		}
	}
	return nil
}
