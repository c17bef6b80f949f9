// Package clickhouse implements billing.Store on the usage tables of
// pkg/chschema, and Connector, which connects and applies the schema in the
// background so that admin starts (and serves keys) before ClickHouse does.
//
// Reads are exact: an event stored twice (a redelivery) counts once. Hours
// that the meter's rollup has aggregated, and that no row reached since,
// come from the hourly aggregates; every other hour comes from
// usage_events FINAL (see exactRows and docs/clickhouse.md).
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
	"github.com/qyai/qyai/pkg/ledger"
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
	if apply.Logger == nil {
		apply.Logger = log
	}
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
	o := c.opts
	o.Database = c.db
	if err := chschema.ApplyAll(ctx, o, c.apply); err != nil {
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
	db      string
	timeout time.Duration
}

// NewStore returns a Store reading db's usage tables; timeout bounds each
// query. db must be a plain identifier (config validates it), as it is
// spliced into the SQL.
func NewStore(src ConnSource, db string, timeout time.Duration) *Store {
	return &Store{src: src, db: db, timeout: timeout}
}

var _ billing.Store = (*Store)(nil)

// KeyTotals is the public summary: the sums of ExactQuery (see package ledger) for
// one key. Clean hours come from the hourly aggregates that the meter's
// rollup maintains, so a month costs about the same whatever the key's
// traffic:
//
//	SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens)
//	FROM (<exact rows of key_id in [from, to)>)
func (s *Store) KeyTotals(ctx context.Context, keyID string, from, to time.Time) (billing.Totals, error) {
	conn, err := s.src.Conn()
	if err != nil {
		return billing.Totals{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ctx, q, args, err := ledger.ExactQuery(ctx, conn, s.db, keyID, from, to,
		"SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM (%s)")
	if err != nil {
		return billing.Totals{}, fmt.Errorf("query key totals: %w", err)
	}
	var t billing.Totals
	if err := conn.QueryRow(ctx, q, args...).Scan(&t.Requests, &t.PromptTokens, &t.CompletionTokens); err != nil {
		return billing.Totals{}, fmt.Errorf("query key totals: %w", err)
	}
	return t, nil
}

// Usage is the finance report, grouped by UTC day, model or key:
//
//	SELECT <toString(toDate(hour)) | model | key_id> AS grp, sum(requests),
//	       sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),
//	       sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd)
//	FROM (<exact rows of [from, to), one key or all>)
//	GROUP BY grp ORDER BY grp
//
// Hours are UTC, so days are whole hours. sum(cost_usd) is a
// Decimal(38, 9): exact.
func (s *Store) Usage(ctx context.Context, q billing.Query) ([]billing.Row, error) {
	var group string
	switch q.GroupBy {
	case billing.GroupByDay:
		group = "toString(toDate(hour, 'UTC'))"
	case billing.GroupByModel:
		group = "model"
	case billing.GroupByKey:
		group = "key_id"
	default:
		return nil, fmt.Errorf("usage report: unknown group %q", q.GroupBy)
	}
	conn, err := s.src.Conn()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ctx, sql, args, err := ledger.ExactQuery(ctx, conn, s.db, q.KeyID, q.From, q.To,
		"SELECT "+group+" AS grp, sum(requests), sum(prompt_tokens), sum(cache_hit_tokens),"+
			" sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd)"+
			" FROM (%s) GROUP BY grp ORDER BY grp")
	if err != nil {
		return nil, fmt.Errorf("query usage report: %w", err)
	}
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage report: %w", err)
	}
	defer func() { _ = rows.Close() }() // its error is the query's, which rows.Err() reports
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
