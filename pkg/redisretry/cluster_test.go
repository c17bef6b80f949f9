package redisretry_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/pkg/redisretry"
	"github.com/qyai/qyai/testkit/testenv"
)

// TestClusterHookFailover kills the master of a key's slot with SIGKILL while
// incrementing a counter there: with ClusterHook every call inside its 8 s
// deadline succeeds (the replica is promoted within ~2-4 s and the slot map is
// refreshed), and the counter keeps counting on the promoted node.
func TestClusterHookFailover(t *testing.T) {
	c := scripts.RedisCluster(t)
	ctx := t.Context()
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs: []string{c.Node(1).Addr, c.Node(2).Addr, c.Node(3).Addr}, MaxRetries: -1,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: 500 * time.Millisecond,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(redisretry.NewClusterHook(rdb.ReloadState))
	const key = "{k1}:n"
	incr := func(i int) {
		cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		defer cancel()
		if err := rdb.Incr(cctx, key).Err(); err != nil {
			t.Fatalf("incr %d: %v", i, err)
		}
	}
	for i := range 20 {
		incr(i)
	}
	m, err := testenv.MasterOf(ctx, c, key)
	if err != nil {
		t.Fatal(err)
	}
	m.Kill(t)
	start := time.Now()
	for i := range 20 {
		incr(20 + i)
	}
	t.Logf("20 increments across the failover of node %d in %v", m.Index, time.Since(start).Round(time.Millisecond))
	n, err := rdb.Get(ctx, key).Int()
	if err != nil {
		t.Fatal(err)
	}
	// Increments acknowledged by the killed master may be lost (asynchronous
	// replication); the ones after the failover all count.
	if n < 20 || n > 40 {
		t.Fatalf("counter = %s, want 20..40", strconv.Itoa(n))
	}
}
