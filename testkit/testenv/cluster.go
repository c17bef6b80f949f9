package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a clustered engine (NATS JetStream, Redis Cluster, ClickHouse with
// ZooKeeper) started on free loopback ports by a deploy/local/<name>-cluster.sh
// script, the same one `make run TOPOLOGY=cluster` uses. Such a script follows one
// contract:
//
//	<name>-cluster.sh start <dir> [port...]    start every node, data under <dir>
//	<name>-cluster.sh stop <dir>               stop every node (idempotent)
//	<name>-cluster.sh start-node <dir> <i>     start node i again, same ports and data
//	<name>-cluster.sh stop-node <dir> <i>      stop node i gracefully
//
// Once started, <dir>/addrs holds one host:port per line (the main protocol of node
// 1, 2, ...), <dir>/http_addrs the same for an HTTP interface when the engine has
// one, and <dir>/node<i>/pid the PID of node i (1-based). It is stopped when the
// test ends.
type Cluster struct {
	// Name is the script's name without "-cluster.sh": "nats", "redis", "clickhouse".
	Name string
	// Dir is the data directory of the whole cluster.
	Dir string
	// Nodes are the nodes in the order of <dir>/addrs.
	Nodes []*Node

	script string
	env    []string
}

// Node is one node of a Cluster.
type Node struct {
	// Index is the node's 1-based number, as the script counts.
	Index int
	// Addr is host:port of the main protocol; HTTPAddr that of the HTTP interface
	// (empty when the engine has none).
	Addr, HTTPAddr string

	c       *Cluster
	mu      sync.Mutex
	running bool
}

// Addrs returns the main-protocol addresses of every node, joined with commas: the
// form REDIS_ADDR, CLICKHOUSE_ADDR and (with nats:// prefixes, see URLs) NATS_URL take.
func (c *Cluster) Addrs() string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return strings.Join(out, ",")
}

// URLs returns scheme://addr of every node, joined with commas.
func (c *Cluster) URLs(scheme string) string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = scheme + "://" + n.Addr
	}
	return strings.Join(out, ",")
}

// startCluster starts a cluster through deploy/local/<name>-cluster.sh and
// registers its stop; env is extra environment for the script.
func (d Scripts) startCluster(t testing.TB, name string, env []string) *Cluster {
	t.Helper()
	if d == "" {
		t.Fatal("testenv: no scripts directory (declare const scripts testenv.Scripts = \"<relative path>/deploy/local\")")
	}
	path, err := filepath.Abs(filepath.Join(string(d), name+"-cluster.sh"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("testenv: scripts directory %s: %v", d, err)
	}
	c := &Cluster{Name: name, Dir: t.TempDir(), script: path, env: env}
	start := time.Now()
	// The whole-cluster stop is registered before the start, so that a start that
	// fails half-way still stops what it started.
	t.Cleanup(func() {
		if err := c.run("stop"); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	if err := c.run("start"); err != nil {
		t.Fatalf("testenv: start %s cluster: %v", name, err)
	}
	addrs, err := readLines(filepath.Join(c.Dir, "addrs"))
	if err != nil || len(addrs) == 0 {
		t.Fatalf("testenv: start %s cluster: no addresses in %s/addrs: %v", name, c.Dir, err)
	}
	httpAddrs, err := readLines(filepath.Join(c.Dir, "http_addrs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("testenv: start %s cluster: %v", name, err)
	}
	for i, a := range addrs {
		n := &Node{Index: i + 1, Addr: a, c: c, running: true}
		if i < len(httpAddrs) {
			n.HTTPAddr = httpAddrs[i]
		}
		c.Nodes = append(c.Nodes, n)
	}
	t.Logf("testenv: %s cluster of %d nodes (%s) in %v", name, len(c.Nodes), c.Addrs(), time.Since(start).Round(time.Millisecond))
	return c
}

// Node returns node i (1-based).
func (c *Cluster) Node(i int) *Node { return c.Nodes[i-1] }

// Dir returns the node's data directory (<cluster dir>/node<i>).
func (n *Node) Dir() string { return filepath.Join(n.c.Dir, "node"+strconv.Itoa(n.Index)) }

// Running reports whether the node was started and not stopped or killed since.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running
}

// Start starts a stopped or killed node again on its ports with its data.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return
	}
	if err := n.c.run("start-node", strconv.Itoa(n.Index)); err != nil {
		t.Fatalf("testenv: start %s node %d: %v", n.c.Name, n.Index, err)
	}
	n.running = true
}

// Stop stops the node gracefully (SIGTERM, as the script does it).
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	if err := n.c.run("stop-node", strconv.Itoa(n.Index)); err != nil {
		t.Fatalf("testenv: stop %s node %d: %v", n.c.Name, n.Index, err)
	}
	n.running = false
}

// Kill kills the node with SIGKILL, as a crash or an OOM kill would, and waits
// until the process is gone. Start brings it back.
func (n *Node) Kill(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return
	}
	pidFile := filepath.Join(n.Dir(), "pid")
	pid, err := readPort(n.Dir(), "pid")
	if err != nil {
		t.Fatalf("testenv: kill %s node %d: %v", n.c.Name, n.Index, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("testenv: kill %s node %d (pid %d): %v", n.c.Name, n.Index, pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s node %d (pid %d) still alive 10 s after SIGKILL", n.c.Name, n.Index, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The script sees a stale PID file as "not running"; remove it all the same, so
	// that nothing mistakes a recycled PID for the node.
	_ = os.Remove(pidFile)
	n.running = false
}

// run runs "<script> <cmd> <dir> [args...]" like Server.runScript.
func (c *Cluster) run(cmd string, args ...string) error {
	s := &Server{script: c.script, Dir: c.Dir, env: c.env}
	return s.runScript(cmd, args...)
}

func readLines(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return out, nil
}
