// Package rollup keeps ClickHouse's hourly usage aggregates up to date: every
// Interval it runs ledger.Rollup over the hours that ended at least Settle
// ago, repeating while a call reports more work pending. Any number of meter
// replicas may run it at once: each run is self-contained and exact (see
// pkg/ledger and docs/clickhouse.md); the cost of running it twice is
// only the work done twice.
//
// A rollup looks back DefaultLookback for changed hours; the first rollup
// after start and one an hour look at every hour ever stored, so that an
// event replayed days late (a gateway spool, a stream restored from backup)
// is rolled up too. Until then its hour is read from usage_events, exactly.
package rollup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/qyai/qyai/pkg/ledger"
)

// FullEvery is how often a rollup searches every hour for changes.
const FullEvery = time.Hour

// Func runs one rollup call: ledger.Rollup bound to a connection and a
// database.
type Func func(ctx context.Context, opts ledger.RollupOptions) (ledger.RollupStats, error)

// Config tunes a Loop.
type Config struct {
	// Interval is the time between rollups; it must be positive.
	Interval time.Duration
	// Settle is how long after its end an hour is first rolled up.
	Settle time.Duration
	// Cluster is passed on to ledger.Rollup.
	Cluster string
}

// Loop runs rollups on a schedule.
type Loop struct {
	fn  Func
	cfg Config
	log *slog.Logger
	now func() time.Time

	buckets, errs metric.Int64Counter
	seconds       metric.Float64Histogram
}

// New returns a Loop calling fn, logging to log, counting on meter, with
// clock now.
func New(fn Func, cfg Config, log *slog.Logger, meter metric.Meter, now func() time.Time) (*Loop, error) {
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("rollup: interval %s must be positive", cfg.Interval)
	}
	l := &Loop{fn: fn, cfg: cfg, log: log, now: now}
	var err1, err2, err3 error
	l.buckets, err1 = meter.Int64Counter("meter.rollup.buckets",
		metric.WithDescription("Usage buckets (key, hour) recomputed into the hourly aggregates."))
	l.errs, err2 = meter.Int64Counter("meter.rollup.errors",
		metric.WithDescription("Failed rollup calls (each is retried at the next interval)."))
	l.seconds, err3 = meter.Float64Histogram("meter.rollup.duration",
		metric.WithDescription("Duration of one rollup call."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("create rollup metrics: %w", err)
	}
	l.buckets.Add(context.Background(), 0)
	l.errs.Add(context.Background(), 0)
	return l, nil
}

// Run rolls up at once, then every Interval, until ctx is done. A call
// interrupted by shutdown leaves nothing a reader would use.
func (l *Loop) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	var lastFull time.Time
	for {
		full := lastFull.IsZero() || l.now().Sub(lastFull) >= FullEvery
		if l.Once(ctx, full) == nil && full {
			lastFull = l.now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once rolls up every changed hour that ended Settle ago (within
// ledger.DefaultRollupLookback, or every hour when full), calling the
// rollup again while it reports work pending.
func (l *Loop) Once(ctx context.Context, full bool) error {
	lookback := time.Duration(0) // ledger.DefaultRollupLookback
	if full {
		lookback = -1
	}
	for {
		start := l.now()
		st, err := l.fn(ctx, ledger.RollupOptions{
			Cluster: l.cfg.Cluster, Before: start.Add(-l.cfg.Settle), Lookback: lookback, Now: l.now,
		})
		l.seconds.Record(context.WithoutCancel(ctx), l.now().Sub(start).Seconds())
		l.buckets.Add(context.WithoutCancel(ctx), int64(st.Buckets))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			l.errs.Add(ctx, 1)
			l.log.WarnContext(ctx, "roll up usage aggregates: readers use usage_events for the hours left", "err", err)
			return err
		}
		if st.Buckets > 0 {
			l.log.InfoContext(ctx, "usage aggregates rolled up", "buckets", st.Buckets, "runs", st.Runs,
				"full", full, "pending", st.Pending, "duration", l.now().Sub(start).Round(time.Millisecond))
		}
		if !st.Pending || ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
