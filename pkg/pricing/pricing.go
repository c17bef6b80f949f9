// Package pricing computes exact request costs from the versioned price
// table in prices.yaml. Money is integer nano-USD (1e-9 USD) end to end:
// every published price per 1M tokens has at most three decimals, so the
// price of one token is a whole number of nano-USD and no rounding ever
// happens. ClickHouse stores the same value as Decimal(18, 9) USD.
package pricing

import (
	_ "embed"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed prices.yaml
var defaultTable []byte

// NanoUSD is an amount of money in units of 1e-9 US dollars.
type NanoUSD int64

// String formats n as a decimal dollar amount with nine decimals.
func (n NanoUSD) String() string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprintf("%d.%09d", int64(n)/1e9, int64(n)%1e9)
	if neg {
		return "-" + s
	}
	return s
}

// ModelPrice is the price of one token of each kind for one model.
type ModelPrice struct {
	InputCacheMiss NanoUSD
	InputCacheHit  NanoUSD
	Output         NanoUSD
}

// Version is one published set of prices.
type Version struct {
	Version       string
	EffectiveFrom time.Time
	Models        map[string]ModelPrice
}

// Table is every version, oldest first.
type Table struct{ versions []Version }

// ErrNoPrice means no version covers the model at that time.
var ErrNoPrice = errors.New("no price")

// Tokens counts what a request used.
type Tokens struct {
	CacheHit, CacheMiss, Completion int64
}

// Cost returns the exact cost of t for model at time at, and the price
// version used.
func (tb *Table) Cost(model string, at time.Time, t Tokens) (NanoUSD, string, error) {
	v, err := tb.At(at)
	if err != nil {
		return 0, "", err
	}
	p, ok := v.Models[model]
	if !ok {
		return 0, v.Version, fmt.Errorf("%w for model %q in version %s", ErrNoPrice, model, v.Version)
	}
	c := NanoUSD(t.CacheHit)*p.InputCacheHit + NanoUSD(t.CacheMiss)*p.InputCacheMiss +
		NanoUSD(t.Completion)*p.Output
	return c, v.Version, nil
}

// At returns the version in force at time at.
func (tb *Table) At(at time.Time) (Version, error) {
	for i := len(tb.versions) - 1; i >= 0; i-- {
		if !at.Before(tb.versions[i].EffectiveFrom) {
			return tb.versions[i], nil
		}
	}
	return Version{}, fmt.Errorf("%w: no price version in force at %s", ErrNoPrice, at.UTC().Format(time.RFC3339))
}

// Versions returns every version, oldest first.
func (tb *Table) Versions() []Version { return tb.versions }

// Default returns the table shipped with this build.
func Default() *Table {
	t, err := Parse(defaultTable)
	if err != nil {
		panic(fmt.Sprintf("embedded prices.yaml: %v", err)) // caught by TestDefault
	}
	return t
}

type fileVersion struct {
	Version       string                       `yaml:"version"`
	EffectiveFrom time.Time                    `yaml:"effective_from"`
	Models        map[string]map[string]string `yaml:"models"`
}

// Parse reads a price table in the prices.yaml format.
func Parse(b []byte) (*Table, error) {
	var f struct {
		Versions []fileVersion `yaml:"versions"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse price table: %w", err)
	}
	var errs []error
	t := &Table{}
	seen := map[string]bool{}
	for _, fv := range f.Versions {
		if fv.Version == "" || seen[fv.Version] {
			errs = append(errs, fmt.Errorf("version %q: empty or duplicate", fv.Version))
			continue
		}
		seen[fv.Version] = true
		v := Version{Version: fv.Version, EffectiveFrom: fv.EffectiveFrom.UTC(), Models: map[string]ModelPrice{}}
		for m, kinds := range fv.Models {
			var p ModelPrice
			for kind, dst := range map[string]*NanoUSD{
				"input_cache_miss": &p.InputCacheMiss, "input_cache_hit": &p.InputCacheHit, "output": &p.Output,
			} {
				n, err := perTokenNano(kinds[kind])
				if err != nil {
					errs = append(errs, fmt.Errorf("version %s model %s %s: %w", fv.Version, m, kind, err))
				}
				*dst = n
			}
			v.Models[m] = p
		}
		t.versions = append(t.versions, v)
	}
	sort.Slice(t.versions, func(i, j int) bool { return t.versions[i].EffectiveFrom.Before(t.versions[j].EffectiveFrom) })
	if len(t.versions) == 0 {
		errs = append(errs, errors.New("no versions"))
	}
	return t, errors.Join(errs...)
}

// perTokenNano converts a decimal USD-per-1M-tokens string to exact
// nano-USD per token, refusing prices that would need rounding.
func perTokenNano(s string) (NanoUSD, error) {
	s = strings.TrimSpace(s)
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() < 0 {
		return 0, fmt.Errorf("price %q is not a non-negative decimal", s)
	}
	// USD per 1M tokens * 1e9 nano / 1e6 tokens = * 1000.
	r.Mul(r, big.NewRat(1000, 1))
	if !r.IsInt() {
		return 0, fmt.Errorf("price %q has more than 3 decimals: not a whole nano-USD per token", s)
	}
	return NanoUSD(r.Num().Int64()), nil
}
