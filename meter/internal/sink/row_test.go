package sink

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/usage"
)

func event() usage.Event {
	return usage.Event{
		SchemaVersion: 1, ID: "evt-1", KeyID: "key-1", Model: "deepseek-v4-pro",
		StartedAt:  time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		FinishedAt: time.Date(2026, 3, 1, 12, 0, 2, 0, time.UTC),
		Status:     200, PromptTokens: 1000, CacheHitTokens: 600, CacheMissTokens: 400,
		CompletionTokens: 250, ReasoningTokens: 100, LatencyMs: 2000, TTFTMs: 300,
	}
}

func TestPrice(t *testing.T) {
	tb := pricing.Default()
	for _, tc := range []struct {
		name        string
		change      func(*usage.Event)
		wantCost    pricing.NanoUSD
		wantVersion string
		wantMiss    int64
		wantErr     error
	}{
		// pro: hit 24 nano, miss 2800 nano, output 5600 nano per token.
		{name: "pro", change: func(*usage.Event) {}, wantCost: 600*24 + 400*2800 + 250*5600, wantVersion: "2026-01-01", wantMiss: 400},
		{name: "flash", change: func(e *usage.Event) { e.Model = "deepseek-v4-flash" },
			wantCost: 600*5 + 400*220 + 250*440, wantVersion: "2026-01-01", wantMiss: 400},
		{name: "unsplit prompt billed as cache miss", change: func(e *usage.Event) { e.CacheHitTokens, e.CacheMissTokens = 0, 0 },
			wantCost: 1000*2800 + 250*5600, wantVersion: "2026-01-01", wantMiss: 1000},
		{name: "zero tokens", change: func(e *usage.Event) {
			e.PromptTokens, e.CacheHitTokens, e.CacheMissTokens, e.CompletionTokens, e.ReasoningTokens = 0, 0, 0, 0, 0
		}, wantCost: 0, wantVersion: "2026-01-01"},
		{name: "alias priced as its upstream model", change: func(e *usage.Event) { e.Model, e.UpstreamModel = "gpt-4o", "deepseek-v4-flash" },
			wantCost: 600*5 + 400*220 + 250*440, wantVersion: "2026-01-01", wantMiss: 400},
		{name: "unknown model stored at cost 0", change: func(e *usage.Event) { e.Model = "gpt-9" },
			wantErr: ErrUnpriced, wantMiss: 400},
		{name: "before the first price version", change: func(e *usage.Event) { e.StartedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC) },
			wantErr: ErrUnpriced, wantMiss: 400},
		{name: "tokens out of range", change: func(e *usage.Event) { e.CompletionTokens = maxTokens + 1 }, wantErr: ErrOutOfRange},
		{name: "status out of range", change: func(e *usage.Event) { e.Status = 70000 }, wantErr: ErrOutOfRange},
		{name: "negative latency", change: func(e *usage.Event) { e.LatencyMs = -1 }, wantErr: ErrOutOfRange},
		{name: "started_at beyond DateTime", change: func(e *usage.Event) { e.StartedAt = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC) }, wantErr: ErrOutOfRange},
		{name: "finished_at before 1970", change: func(e *usage.Event) { e.FinishedAt = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC) }, wantErr: ErrOutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := event()
			tc.change(&e)
			r, err := Price(tb, e)
			if !errors.Is(err, tc.wantErr) || (err != nil && tc.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(err, ErrOutOfRange) {
				return
			}
			if r.Cost != tc.wantCost || r.PriceVersion != tc.wantVersion || r.CacheMissTokens != tc.wantMiss {
				t.Errorf("row cost %d version %q miss %d, want %d %q %d", r.Cost, r.PriceVersion, r.CacheMissTokens,
					tc.wantCost, tc.wantVersion, tc.wantMiss)
			}
			if r.Event.ID != e.ID {
				t.Errorf("row lost its event")
			}
		})
	}
}

func TestPriceOutOfRangeNamesEveryField(t *testing.T) {
	e := event()
	e.PromptTokens, e.Status = -5, -1
	_, err := Price(pricing.Default(), e)
	for _, want := range []string{"prompt_tokens -5", "status -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to name %q", err, want)
		}
	}
}
