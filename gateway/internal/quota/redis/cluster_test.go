package redis

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/quota"
	"github.com/qyai/qyai/pkg/redisretry"
)

// TestClusterLimitsExact runs 200 concurrent admissions of one key through three
// stores (three gateways, each with its own cluster client) against a real Redis
// Cluster: RPM 30 admits exactly 30, and a monthly limit of 50 exactly 50.
func TestClusterLimitsExact(t *testing.T) {
	c := scripts.RedisCluster(t)
	stores := make([]*Store, 3)
	for i := range stores {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{c.Node(i + 1).Addr}, MaxRetries: -1})
		rdb.AddHook(redisretry.NewClusterHook(rdb.ReloadState))
		t.Cleanup(func() { _ = rdb.Close() })
		stores[i] = NewStore(rdb, 2*time.Second)
	}
	for _, tc := range []struct {
		name         string
		rpm, monthly int64
		want         int64
	}{
		{"rpm 30", 30, 1000, 30},
		{"monthly 50", 1000, 50, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keyID := "k-" + tc.name[:3]
			var admitted, failed atomic.Int64
			var wg sync.WaitGroup
			for i := range 200 {
				wg.Go(func() {
					d, err := stores[i%3].Admit(t.Context(), quota.Admission{
						KeyID: keyID, RPM: tc.rpm, Monthly: tc.monthly, Month: "202612",
						Token: fmt.Sprintf("t%d", i), MonthTTL: time.Hour, At: time.Now(),
					})
					if err != nil {
						failed.Add(1)
						return
					}
					if d.Allowed {
						admitted.Add(1)
					}
				})
			}
			wg.Wait()
			if failed.Load() != 0 || admitted.Load() != tc.want {
				t.Fatalf("admitted %d (errors %d), want exactly %d", admitted.Load(), failed.Load(), tc.want)
			}
		})
	}
}
