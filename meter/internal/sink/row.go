package sink

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/usage"
)

// Row is one usage_events row: the event as billed.
type Row struct {
	Event usage.Event
	// CacheMissTokens is the input billed at the cache-miss price: the
	// reported cache-miss tokens, or the part of PromptTokens the upstream
	// did not split into hit and miss, whichever is larger. Storing what
	// was billed keeps cost_usd reproducible from the row.
	CacheMissTokens int64
	Cost            pricing.NanoUSD
	// PriceVersion is empty when no price applied (unknown model).
	PriceVersion string
}

// ErrOutOfRange means an event decodes but cannot be stored exactly.
var ErrOutOfRange = errors.New("usage event out of range")

// Bounds of what the usage_events columns hold exactly. Token counts stop
// far below UInt64 so that a cost can never overflow Decimal(18, 9).
const (
	maxTokens = 1_000_000_000_000 // a trillion tokens in one request is a bug
	maxCost   = pricing.NanoUSD(999_999_999_999_999_999)
)

var (
	minTime = time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2105, 12, 31, 0, 0, 0, 0, time.UTC) // DateTime is UInt32 seconds
)

// ErrUnpriced marks a row whose model has no price; the row is still stored
// with cost 0 and an empty price version.
var ErrUnpriced = errors.New("no price for the event")

// Price turns an event into its row. An error wrapping ErrOutOfRange means
// the event must not be stored; one wrapping ErrUnpriced comes with a
// usable row (cost 0).
func Price(tb *pricing.Table, e usage.Event) (Row, error) {
	if err := checkRange(e); err != nil {
		return Row{}, err
	}
	r := Row{Event: e, CacheMissTokens: max(e.CacheMissTokens, e.PromptTokens-e.CacheHitTokens)}
	cost, version, err := tb.Cost(PricedModel(e), e.StartedAt, pricing.Tokens{
		CacheHit: e.CacheHitTokens, CacheMiss: r.CacheMissTokens, Completion: e.CompletionTokens,
	})
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrUnpriced, err)
	}
	if cost < 0 || cost > maxCost {
		return Row{}, fmt.Errorf("%w: cost %s USD does not fit Decimal(18, 9)", ErrOutOfRange, cost)
	}
	r.Cost, r.PriceVersion = cost, version
	return r, nil
}

// PricedModel is the model an event is billed as: the upstream model that
// did the work (an alias such as gpt-4o or deepseek-reasoner costs what
// deepseek-v4-flash costs), or the public id when no upstream is recorded.
func PricedModel(e usage.Event) string {
	if e.UpstreamModel != "" {
		return e.UpstreamModel
	}
	return e.Model
}

func checkRange(e usage.Event) error {
	var errs []error
	for _, f := range []struct {
		name   string
		n, max int64
	}{
		{"prompt_tokens", e.PromptTokens, maxTokens},
		{"cache_hit_tokens", e.CacheHitTokens, maxTokens},
		{"cache_miss_tokens", e.CacheMissTokens, maxTokens},
		{"completion_tokens", e.CompletionTokens, maxTokens},
		{"reasoning_tokens", e.ReasoningTokens, maxTokens},
		{"latency_ms", e.LatencyMs, math.MaxUint32},
		{"ttft_ms", e.TTFTMs, math.MaxUint32},
	} {
		if f.n < 0 || f.n > f.max {
			errs = append(errs, fmt.Errorf("%s %d outside 0..%d", f.name, f.n, f.max))
		}
	}
	if e.Status < 0 || e.Status > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("status %d outside 0..65535", e.Status))
	}
	if e.SchemaVersion < 0 || e.SchemaVersion > math.MaxUint8 {
		errs = append(errs, fmt.Errorf("schema version %d outside 0..255", e.SchemaVersion))
	}
	if e.StartedAt.Before(minTime) || e.StartedAt.After(maxTime) {
		errs = append(errs, fmt.Errorf("started_at %s outside DateTime", e.StartedAt.UTC().Format(time.RFC3339)))
	}
	if !e.FinishedAt.IsZero() && (e.FinishedAt.Before(minTime) || e.FinishedAt.After(maxTime)) {
		errs = append(errs, fmt.Errorf("finished_at %s outside DateTime", e.FinishedAt.UTC().Format(time.RFC3339)))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrOutOfRange, errors.Join(errs...))
}
