// Package tier holds the service tiers the public API sells and their
// limits, as data (tiers.yaml, or a file of the same shape). A key record
// carries its effective limits, so a key may have custom ones.
package tier

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"sort"

	"gopkg.in/yaml.v3"
)

//go:embed tiers.yaml
var builtin []byte

// Tier is one plan.
type Tier struct {
	Name string `json:"name" yaml:"-"`
	// RPM is requests per minute.
	RPM int64 `json:"rpm" yaml:"rpm"`
	// MonthlyLimit is requests per UTC calendar month.
	MonthlyLimit int64 `json:"monthly_limit" yaml:"monthly_limit"`
	// TPM is tokens (prompt + completion) per minute; 0 means no limit.
	TPM int64 `json:"tpm" yaml:"tpm"`
}

// Table maps tier names to tiers.
type Table map[string]Tier

// Default is the built-in table: the public API's tiers.
func Default() Table {
	t, err := Parse(builtin)
	if err != nil {
		panic(fmt.Sprintf("built-in tiers.yaml: %v", err)) // guarded by TestDefault
	}
	return t
}

// Load reads a tiers file; an empty path means the built-in table.
func Load(path string) (Table, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read tiers: %w", err)
	}
	return Parse(b)
}

// Parse reads a table in the tiers.yaml format, reporting every problem.
func Parse(b []byte) (Table, error) {
	var f struct {
		Tiers map[string]Tier `yaml:"tiers"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse tiers: %w", err)
	}
	var errs []error
	t := Table{}
	for name, v := range f.Tiers {
		v.Name = name
		if name == "" || v.RPM < 1 || v.MonthlyLimit < 1 || v.TPM < 0 {
			errs = append(errs, fmt.Errorf("tier %q: rpm and monthly_limit must be at least 1, tpm not negative", name))
		}
		t[name] = v
	}
	if len(t) == 0 {
		errs = append(errs, errors.New("no tiers"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("tiers: %w", err)
	}
	return t, nil
}

// Lookup returns the named tier.
func (t Table) Lookup(name string) (Tier, error) {
	v, ok := t[name]
	if !ok {
		return Tier{}, fmt.Errorf("unknown tier %q (known: %v)", name, t.Names())
	}
	return v, nil
}

// Names lists the tier names in order.
func (t Table) Names() []string {
	n := make([]string, 0, len(t))
	for k := range t {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}
