package testenv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/testkit/testenv"
)

// TestRedisCluster starts the cluster, writes through a cluster client, kills the
// master of a key's slot, waits for its replica's promotion, and starts the old
// master again, which rejoins: the key written before the kill is still there.
func TestRedisCluster(t *testing.T) {
	c := scripts.RedisCluster(t)
	if len(c.Nodes) != 6 {
		t.Fatalf("nodes = %d, want 6", len(c.Nodes))
	}
	ctx := t.Context()
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{c.Node(1).Addr, c.Node(2).Addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	const key = "{k1}:probe"
	if err := rdb.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	// WAIT: the replica has the write before the master dies.
	m, err := testenv.MasterOf(ctx, c, key)
	if err != nil {
		t.Fatalf("master of: %v", err)
	}
	direct := goredis.NewClient(&goredis.Options{Addr: m.Addr})
	if n, err := direct.Wait(ctx, 1, 2000).Result(); err != nil || n < 1 {
		t.Fatalf("wait for replica: %d, %v", n, err)
	}
	_ = direct.Close()

	m.Kill(t)
	if _, err := testenv.MasterOf(ctx, c, key); !errors.Is(err, testenv.ErrNoMaster) {
		t.Fatalf("master of right after kill: err = %v, want ErrNoMaster", err)
	}
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	promoted, err := testenv.AwaitMaster(actx, c, key, m)
	if err != nil {
		t.Fatalf("await promotion: %v", err)
	}
	t.Logf("node %d promoted after node %d was killed", promoted.Index, m.Index)
	rdb.ReloadState(ctx)
	if err := pollGet(ctx, rdb, key); err != nil {
		t.Fatalf("get after failover: %v", err)
	}

	m.Start(t)
	again, err := testenv.MasterOf(ctx, c, key)
	if err != nil || again != promoted {
		t.Fatalf("after restart master = %v, %v; want node %d (the old master rejoins as replica)", again, err, promoted.Index)
	}
	old := goredis.NewClient(&goredis.Options{Addr: m.Addr})
	defer func() { _ = old.Close() }()
	role, err := old.Do(ctx, "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] != "slave" {
		t.Fatalf("role of restarted node = %v, %v; want slave", role, err)
	}
}

func pollGet(ctx context.Context, rdb *goredis.ClusterClient, key string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := rdb.Get(ctx, key).Result()
		if err == nil && v == "v" {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
