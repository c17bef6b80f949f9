package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// RedisCluster starts a Redis Cluster of 3 masters and 3 replicas
// (deploy/local/redis-cluster.sh) on free loopback ports, with append-only files so
// that a node killed or stopped rejoins with its data when started again; a master
// killed with Kill is replaced by its replica after about 2-4 s
// (cluster-node-timeout 2000), and comes back as that replica's replica. Addrs is
// the comma-separated REDIS_ADDR of a cluster client. It is stopped when the test
// ends.
func (d Scripts) RedisCluster(t testing.TB) *Cluster {
	t.Helper()
	return d.startCluster(t, "redis", nil)
}

// ErrNoMaster is returned by MasterOf when no running node serves the key's slot as
// master (during a failover, before the replica is promoted).
var ErrNoMaster = errors.New("no running master serves the slot")

// MasterOf returns the node that is the master of key's hash slot, as the running
// nodes see it: CLUSTER KEYSLOT, then CLUSTER SLOTS asked of each running node in
// turn until one answers. A master that was killed but not yet failed over is still
// named by the survivors; ErrNoMaster is returned then, since it does not run.
func MasterOf(ctx context.Context, c *Cluster, key string) (*Node, error) {
	var errs []error
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		m, err := masterOfVia(ctx, c, n, key)
		if err == nil {
			return m, nil
		}
		errs = append(errs, fmt.Errorf("ask node %d: %w", n.Index, err))
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("master of %q: no node is running", key)
	}
	return nil, fmt.Errorf("master of %q: %w", key, errors.Join(errs...))
}

func masterOfVia(ctx context.Context, c *Cluster, via *Node, key string) (*Node, error) {
	rdb := goredis.NewClient(&goredis.Options{Addr: via.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer func() { _ = rdb.Close() }()
	slot, err := rdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster keyslot: %w", err)
	}
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("cluster shards: %w", err)
	}
	for _, sh := range shards {
		if !slices.ContainsFunc(sh.Slots, func(r goredis.SlotRange) bool { return r.Start <= slot && slot <= r.End }) {
			continue
		}
		for _, sn := range sh.Nodes {
			if sn.Role != "master" {
				continue
			}
			addr := net.JoinHostPort(sn.IP, strconv.FormatInt(sn.Port, 10))
			for _, n := range c.Nodes {
				if sameAddr(n.Addr, addr) {
					if !n.Running() {
						return nil, fmt.Errorf("slot %d: node %d (%s): %w", slot, n.Index, addr, ErrNoMaster)
					}
					return n, nil
				}
			}
			return nil, fmt.Errorf("slot %d: master %s is not a node of this cluster", slot, addr)
		}
	}
	return nil, fmt.Errorf("slot %d: %w", slot, ErrNoMaster)
}

// AwaitMaster polls MasterOf until a running node other than old masters key's
// slot and every running node reports cluster_state:ok, or ctx ends: after a Kill of
// old, it returns the promoted replica.
func AwaitMaster(ctx context.Context, c *Cluster, key string, old *Node) (*Node, error) {
	for {
		m, err := MasterOf(ctx, c, key)
		if err == nil && m != old && clusterOK(ctx, c) {
			return m, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("master unchanged or cluster not ok")
			}
			return nil, fmt.Errorf("await new master of %q: %w (last: %w)", key, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// clusterOK reports whether every running node sees the cluster ok.
func clusterOK(ctx context.Context, c *Cluster) bool {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		rdb := goredis.NewClient(&goredis.Options{Addr: n.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
		info, err := rdb.ClusterInfo(ctx).Result()
		_ = rdb.Close()
		if err != nil || !strings.Contains(info, "cluster_state:ok\r\n") {
			return false
		}
	}
	return true
}

// sameAddr compares host:port addresses, so that "127.0.0.1:7001" from CLUSTER SLOTS
// matches however the node's address was written.
func sameAddr(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	an, _ := strconv.Atoi(ap)
	bn, _ := strconv.Atoi(bp)
	return an == bn && (ah == bh || net.ParseIP(ah).Equal(net.ParseIP(bh)))
}
