// Package billing answers usage questions from the metered rows in
// ClickHouse: the public per-key monthly summary (GET
// /v1/dashboard/billing/usage) and the finance report of the admin API.
// Months and days are UTC; every read is exact (deduplicated), see Store.
package billing

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/apikey"
)

// ErrNotReady means ClickHouse is not reachable or its schema not applied yet.
var ErrNotReady = errors.New("usage store not ready")

// Group-by dimensions of the finance report.
const (
	GroupByDay   = "day"
	GroupByModel = "model"
	GroupByKey   = "key"
)

// Totals is one key's usage over a period.
type Totals struct {
	Requests         uint64
	PromptTokens     uint64
	CompletionTokens uint64
}

// Query selects usage rows for the finance report. The period is half-open:
// From <= started_at < To.
type Query struct {
	KeyID   string // empty: every key
	From    time.Time
	To      time.Time
	GroupBy string // GroupByDay, GroupByModel or GroupByKey
}

// Row is one group of the finance report.
type Row struct {
	// Group is the day (YYYY-MM-DD, UTC), the public model id or the key id.
	Group            string
	Requests         uint64
	PromptTokens     uint64
	CacheHitTokens   uint64
	CacheMissTokens  uint64
	CompletionTokens uint64
	ReasoningTokens  uint64
	CostUSD          decimal.Decimal
}

// Store reads usage. Implementations count each event once even when it was
// delivered and stored twice.
type Store interface {
	// KeyTotals sums one key's usage in [from, to).
	KeyTotals(ctx context.Context, keyID string, from, to time.Time) (Totals, error)
	// Usage returns q's groups in ascending group order.
	Usage(ctx context.Context, q Query) ([]Row, error)
}

// Summary is the public billing.usage object, exactly as the API documents it.
type Summary struct {
	Object                string  `json:"object"`
	KeyPrefix             string  `json:"key_prefix"`
	Tier                  string  `json:"tier"`
	MonthlyRequests       uint64  `json:"monthly_requests"`
	MonthlyLimit          int64   `json:"monthly_limit"`
	Remaining             int64   `json:"remaining"`
	UsagePercent          float64 `json:"usage_percent"`
	TotalPromptTokens     uint64  `json:"total_prompt_tokens"`
	TotalCompletionTokens uint64  `json:"total_completion_tokens"`
}

// Counter reads the gateway's own count of a key's admitted requests in a
// UTC month ("YYYYMM"), the number its monthly quota is enforced against.
// ok is false when no count exists (no request this month, or lost state).
type Counter interface {
	MonthlyRequests(ctx context.Context, keyID, month string) (n int64, ok bool, err error)
}

// Raiser raises the monthly counter to n unless it is higher (a single-slot
// "set to max"), expiring it at expireAt. A Counter that is also a Raiser lets
// Summary reconcile a counter that a Redis failover left behind the metered count.
type Raiser interface {
	RestoreMonthCounter(ctx context.Context, keyID, month string, n int64, expireAt time.Time) (bool, error)
}

// Service computes billing answers.
type Service struct {
	store   Store
	counter Counter
	now     func() time.Time
}

// NewService returns a Service reading store and, when counter is not nil,
// the enforcement counter; now is the clock.
func NewService(store Store, counter Counter, now func() time.Time) *Service {
	return &Service{store: store, counter: counter, now: now}
}

// MonthBounds returns the UTC calendar month containing t: [start, next).
func MonthBounds(t time.Time) (start, next time.Time) {
	t = t.UTC()
	start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 1, 0)
}

// Summary returns the key's usage in the current UTC calendar month.
//
// monthly_requests, remaining and usage_percent agree with what the gateway
// enforces: they are the larger of its monthly counter in Redis, which counts
// a request the moment it is admitted (the ClickHouse row follows within
// seconds, once the request finished and was metered), and the metered row
// count in ClickHouse. Token totals come from ClickHouse. When the counter is
// missing or Redis is unreachable, the metered row count stands in.
//
// Redis Cluster and exactness: Redis replicates asynchronously, so a master
// killed with kill -9 can take its last counter increments with it (about a
// replication lag of traffic), and the promoted replica's counter is then
// lower than what was served and metered. The ClickHouse count is exact
// (invariant 1), so monthly_requests never shows less than was served; and
// when the counter is found lower, Summary raises it to the metered count
// with a single-slot "set to max" script (RestoreMonthCounter, when the
// counter store offers it), so the limiter reconciles too. What a customer may
// get extra during a failover window: up to the admissions whose increments
// were lost (until the counter is raised, by a Summary or the next rebuild),
// and, while no master serves the key's slot (~2-4 s with
// cluster-node-timeout 2000), whatever the gateways' per-replica fallback
// limiter admits within its share of the RPM.
func (s *Service) Summary(ctx context.Context, rec apikey.Record) (Summary, error) {
	now := s.now()
	from, to := MonthBounds(now)
	t, err := s.store.KeyTotals(ctx, rec.ID, from, to)
	if err != nil {
		return Summary{}, err
	}
	if s.counter != nil {
		if n, ok, err := s.counter.MonthlyRequests(ctx, rec.ID, apikey.Month(now)); err == nil && ok && n >= 0 {
			metered := t.Requests
			// The larger of the two: the counter is ahead while requests are
			// in flight; ClickHouse is ahead after a failover lost increments.
			t.Requests = max(t.Requests, uint64(n))
			if r, ok := s.counter.(Raiser); ok && uint64(n) < metered {
				// Raise the counter so the limiter enforces what was served.
				// Best effort: the answer is exact either way.
				_, _ = r.RestoreMonthCounter(ctx, rec.ID, apikey.Month(now), int64(min(metered, math.MaxInt64)), to.Add(counterSlack))
			}
		}
	}
	used := int64(min(t.Requests, math.MaxInt64))
	sum := Summary{
		Object:                "billing.usage",
		KeyPrefix:             rec.KeyPrefix,
		Tier:                  rec.Tier,
		MonthlyRequests:       t.Requests,
		MonthlyLimit:          rec.MonthlyLimit,
		Remaining:             max(0, rec.MonthlyLimit-used),
		TotalPromptTokens:     t.PromptTokens,
		TotalCompletionTokens: t.CompletionTokens,
	}
	if rec.MonthlyLimit > 0 {
		// One decimal, as in the API example (142 of 3000 -> 4.7).
		sum.UsagePercent = math.Round(float64(used)*1000/float64(rec.MonthlyLimit)) / 10
	}
	return sum, nil
}

// Usage returns the finance report for q.
func (s *Service) Usage(ctx context.Context, q Query) ([]Row, error) {
	return s.store.Usage(ctx, q)
}

// Day is one UTC day of a key's usage, as the key-holder dashboard shows it.
type Day struct {
	Day              string `json:"day"`
	Requests         uint64 `json:"requests"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
}

// Daily returns the key's metered usage per UTC day of the current month,
// every day from the first through today (days without usage as zeros, so
// that a chart needs no gaps filled), in order.
func (s *Service) Daily(ctx context.Context, keyID string) ([]Day, error) {
	now := s.now().UTC()
	from, to := MonthBounds(now)
	rows, err := s.store.Usage(ctx, Query{KeyID: keyID, From: from, To: to, GroupBy: GroupByDay})
	if err != nil {
		return nil, err
	}
	byDay := make(map[string]Row, len(rows))
	last := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	for _, r := range rows {
		byDay[r.Group] = r
		// A row dated after today (a gateway clock ahead of ours) is kept.
		if d, err := time.Parse(time.DateOnly, r.Group); err == nil && d.After(last) {
			last = d
		}
	}
	out := []Day{}
	for d := from; !d.After(last); d = d.AddDate(0, 0, 1) {
		day := d.Format(time.DateOnly)
		r := byDay[day]
		out = append(out, Day{Day: day, Requests: r.Requests, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens})
	}
	return out, nil
}

// counterSlack keeps a raised monthly counter a while past the month's end, as
// admin rebuild-redis does, so that late requests of the old month still find it.
const counterSlack = 35 * 24 * time.Hour
