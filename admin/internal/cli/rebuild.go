package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/audit"
	auditch "github.com/qyai/qyai/admin/internal/audit/clickhouse"
	auditredis "github.com/qyai/qyai/admin/internal/audit/redis"
	"github.com/qyai/qyai/admin/internal/billing"
	chstore "github.com/qyai/qyai/admin/internal/billing/clickhouse"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/redisretry"
)

// monthCounterSlack matches the gateway: a monthly counter lives until 35
// days after its month.
const monthCounterSlack = 35 * 24 * time.Hour

// rebuildReport is the --json answer of rebuild-redis.
type rebuildReport struct {
	Keys          int `json:"keys"`
	Restored      int `json:"restored"`
	Current       int `json:"current"`
	MonthCounters int `json:"month_counters"`
}

type fixedConn struct{ conn driver.Conn }

func (f fixedConn) Conn() (driver.Conn, error) { return f.conn, nil }

// rebuildRedis restores key records after a loss of Redis data, from
// ClickHouse's audit_log (FINAL) and the audit entries still in Redis: for
// every key its last state (highest revision) becomes the record and the
// auth entry of its hash; the auth entries of its older hashes become
// tombstones; the id joins the id set; gateways are told to drop their
// caches. A state never replaces a newer one, so the command may run again
// or on a Redis that kept part of its data. Then this month's request
// counters are raised to the metered counts (usage_events FINAL), so that
// a key over its monthly limit stays over it.
func (r *runner) rebuildRedis(ctx context.Context, args []string) error {
	f := newFlags("keys rebuild-redis", r.errw)
	if _, err := f.parse(args, 0); err != nil {
		return err
	}
	timeout := max(r.cfg.Redis.Timeout, 2*time.Second)
	rdb := goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs:                 r.cfg.Redis.Addrs,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
	})
	defer func() { _ = rdb.Close() }() // every command has returned by then
	// A Redis still loading its data answers LOADING for a moment, a cluster
	// in failover CLUSTERDOWN: retry.
	redisretry.AddTo(rdb)
	ch := r.cfg.ClickHouse
	conn, err := chschema.Open(ctx, chschema.Options{
		Addr: ch.Addr, Database: ch.Database, User: ch.User, Password: ch.Password, Cluster: ch.Cluster,
	})
	if err != nil {
		return fmt.Errorf("rebuild-redis: %w", err)
	}
	defer func() { _ = conn.Close() }() // read-only use: the audit log
	src := fixedConn{conn}
	store := redisstore.New(rdb, timeout)

	rep, err := audit.Rebuild(ctx, store,
		auditch.New(src, ch.Database, ch.Cluster != "", ch.QueryTimeout),
		auditredis.New(rdb, timeout))
	if err != nil {
		return fmt.Errorf("rebuild-redis: %w", err)
	}
	out := rebuildReport{Keys: rep.Keys, Restored: rep.Restored, Current: rep.Current}

	now := r.now()
	from, next := billing.MonthBounds(now)
	rows, err := chstore.NewStore(src, ch.Database, ch.QueryTimeout).
		Usage(ctx, billing.Query{From: from, To: next, GroupBy: billing.GroupByKey})
	if err != nil {
		return fmt.Errorf("rebuild-redis: read this month's metered requests: %w", err)
	}
	for _, row := range rows {
		wrote, err := store.RestoreMonthCounter(ctx, row.Group, apikey.Month(now), int64(row.Requests), next.Add(monthCounterSlack))
		if err != nil {
			return fmt.Errorf("rebuild-redis: %w", err)
		}
		if wrote {
			out.MonthCounters++
		}
	}

	if *f.json {
		b, _ := json.Marshal(out)
		_, err := fmt.Fprintf(r.out, "%s\n", b)
		return err
	}
	_, err = fmt.Fprintf(r.out, "Rebuilt Redis from the audit log: %d keys, %d restored, %d already current; %d monthly counters restored.\n",
		out.Keys, out.Restored, out.Current, out.MonthCounters)
	return err
}
