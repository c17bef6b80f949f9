// Package clickhouse implements billing.Store on the usage_events table of
// pkg/chschema, and Connector, which connects and applies the schema in the
// background so that admin starts (and serves keys) before ClickHouse does.
//
// usage_events is a ReplacingMergeTree whose sorting key contains event_id:
// every read uses FINAL so that an event stored twice (a redelivery before
// the background merge) counts once.
package clickhouse

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/qyai/qyai/admin/internal/billing"
	"github.com/qyai/qyai/pkg/chschema"
)

// Backoff bounds of Connector's retries.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Connector opens ClickHouse and applies the schema, retrying with
// exponential backoff until it succeeds or its context ends.
type Connector struct {
	opts  chschema.Options
	db    string
	apply chschema.ApplyOptions
	log   *slog.Logger

	mu    sync.Mutex
	conn  driver.Conn
	ready bool
}

// NewConnector returns a Connector for database opts.Database.
func NewConnector(opts chschema.Options, apply chschema.ApplyOptions, log *slog.Logger) *Connector {
	return &Connector{opts: opts, db: opts.Database, apply: apply, log: log}
}

// Run connects and migrates; it returns nil once the schema is applied, or
// ctx's error. Apply is idempotent, so racing the meter is harmless.
func (c *Connector) Run(ctx context.Context) error {
	backoff := minBackoff
	for attempt := 1; ; attempt++ {
		err := c.try(ctx)
		if err == nil {
			c.log.InfoContext(ctx, "clickhouse schema ready", "addr", c.opts.Addr, "database", c.db, "attempts", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.WarnContext(ctx, "clickhouse not ready, retrying", "addr", c.opts.Addr, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (c *Connector) try(ctx context.Context) error {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		var err error
		if conn, err = chschema.Open(ctx, c.opts); err != nil {
			return err
		}
		c.mu.Lock()
		c.conn = conn
		c.mu.Unlock()
	}
	if err := chschema.Apply(ctx, conn, c.db, c.apply); err != nil {
		return fmt.Errorf("apply clickhouse schema: %w", err)
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	return nil
}

// Conn returns the connection once the schema is applied, else billing.ErrNotReady.
func (c *Connector) Conn() (driver.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready {
		return nil, billing.ErrNotReady
	}
	return c.conn, nil
}

// Ping checks that ClickHouse answers and the schema is applied.
func (c *Connector) Ping(ctx context.Context) error {
	conn, err := c.Conn()
	if err != nil {
		return err
	}
	return conn.Ping(ctx)
}

// Close closes the connection, if any.
func (c *Connector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// ConnSource hands out a ready connection.
type ConnSource interface {
	Conn() (driver.Conn, error)
}

// Store implements billing.Store.
type Store struct {
	src     ConnSource
	table   string // <db>.usage_events
	timeout time.Duration
}

// NewStore returns a Store reading db.usage_events; timeout bounds each query.
// db must be a plain identifier (config validates it), as it is spliced
// into the SQL.
func NewStore(src ConnSource, db string, timeout time.Duration) *Store {
	return &Store{src: src, table: db + ".usage_events", timeout: timeout}
}

var _ billing.Store = (*Store)(nil)

// Times are passed as Unix seconds into toDateTime(), which means the same
// instant whatever the server's time zone.
//
// KeyTotals is the public summary:
//
//	SELECT count(), sum(prompt_tokens), sum(completion_tokens)
//	FROM <db>.usage_events FINAL
//	WHERE key_id = ? AND started_at >= toDateTime(?) AND started_at < toDateTime(?)
func (s *Store) KeyTotals(ctx context.Context, keyID string, from, to time.Time) (billing.Totals, error) {
	conn, err := s.src.Conn()
	if err != nil {
		return billing.Totals{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	q := "SELECT count(), sum(prompt_tokens), sum(completion_tokens) FROM " + s.table + " FINAL" +
		" WHERE key_id = ? AND started_at >= toDateTime(?) AND started_at < toDateTime(?)"
	var t billing.Totals
	if err := conn.QueryRow(ctx, q, keyID, from.Unix(), to.Unix()).Scan(&t.Requests, &t.PromptTokens, &t.CompletionTokens); err != nil {
		return billing.Totals{}, fmt.Errorf("query key totals: %w", err)
	}
	return t, nil
}

// Usage is the finance report:
//
//	SELECT <toString(toDate(started_at, 'UTC')) | model> AS grp, count(),
//	       sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),
//	       sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd)
//	FROM <db>.usage_events FINAL
//	WHERE started_at >= toDateTime(?) AND started_at < toDateTime(?) [AND key_id = ?]
//	GROUP BY grp ORDER BY grp
//
// sum(cost_usd) is a Decimal(38, 9): exact.
func (s *Store) Usage(ctx context.Context, q billing.Query) ([]billing.Row, error) {
	var group string
	switch q.GroupBy {
	case billing.GroupByDay:
		group = "toString(toDate(started_at, 'UTC'))"
	case billing.GroupByModel:
		group = "model"
	default:
		return nil, fmt.Errorf("usage report: unknown group %q", q.GroupBy)
	}
	conn, err := s.src.Conn()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	sql := "SELECT " + group + " AS grp, count(), sum(prompt_tokens), sum(cache_hit_tokens)," +
		" sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd)" +
		" FROM " + s.table + " FINAL" +
		" WHERE started_at >= toDateTime(?) AND started_at < toDateTime(?)"
	args := []any{q.From.Unix(), q.To.Unix()}
	if q.KeyID != "" {
		sql += " AND key_id = ?"
		args = append(args, q.KeyID)
	}
	sql += " GROUP BY grp ORDER BY grp"
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage report: %w", err)
	}
	defer rows.Close()
	out := []billing.Row{}
	for rows.Next() {
		var r billing.Row
		if err := rows.Scan(&r.Group, &r.Requests, &r.PromptTokens, &r.CacheHitTokens, &r.CacheMissTokens,
			&r.CompletionTokens, &r.ReasoningTokens, &r.CostUSD); err != nil {
			return nil, fmt.Errorf("scan usage report: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read usage report: %w", err)
	}
	return out, nil
}
