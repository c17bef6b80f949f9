package pricing

import (
	"errors"
	"testing"
	"time"
)

func TestDefaultCosts(t *testing.T) {
	tb := Default()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		model  string
		tokens Tokens
		want   string
	}{
		{"flash one million of each", "deepseek-v4-flash", Tokens{1e6, 1e6, 1e6}, "0.665000000"},
		{"flash single token each", "deepseek-v4-flash", Tokens{1, 1, 1}, "0.000000665"},
		{"pro mixed", "deepseek-v4-pro", Tokens{CacheHit: 1000, CacheMiss: 18, Completion: 87}, "0.000561600"},
		{"nothing", "deepseek-v4-pro", Tokens{}, "0.000000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, v, err := tb.Cost(tc.model, at, tc.tokens)
			if err != nil {
				t.Fatal(err)
			}
			if v != "2026-01-01" {
				t.Errorf("version = %q", v)
			}
			if c.String() != tc.want {
				t.Errorf("cost = %s, want %s", c, tc.want)
			}
		})
	}
}

func TestUnknownModelAndTime(t *testing.T) {
	tb := Default()
	if _, _, err := tb.Cost("gpt-4o", time.Now(), Tokens{}); !errors.Is(err, ErrNoPrice) {
		t.Errorf("unknown model: err = %v", err)
	}
	if _, _, err := tb.Cost("deepseek-v4-pro", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), Tokens{}); !errors.Is(err, ErrNoPrice) {
		t.Errorf("before first version: err = %v", err)
	}
}

func TestVersionSelection(t *testing.T) {
	tb, err := Parse([]byte(`versions:
  - version: b
    effective_from: 2026-06-01T00:00:00Z
    models: {m: {input_cache_miss: "2", input_cache_hit: "1", output: "4"}}
  - version: a
    effective_from: 2026-01-01T00:00:00Z
    models: {m: {input_cache_miss: "1", input_cache_hit: "0.5", output: "2"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{time.Date(2026, 5, 31, 23, 59, 59, 0, time.UTC), "a"},
		{time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), "b"},
	} {
		_, v, err := tb.Cost("m", tc.at, Tokens{Completion: 1})
		if err != nil || v != tc.want {
			t.Errorf("at %s: version %q err %v, want %q", tc.at, v, err, tc.want)
		}
	}
}

func TestParseRejectsInexactPrices(t *testing.T) {
	_, err := Parse([]byte(`versions:
  - version: x
    effective_from: 2026-01-01T00:00:00Z
    models: {m: {input_cache_miss: "0.0001", input_cache_hit: "abc", output: "-1"}}
`))
	if err == nil {
		t.Fatal("want error for 4-decimal, non-numeric and negative prices")
	}
}
