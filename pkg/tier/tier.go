// Package tier holds the service tiers the public API sells and their
// limits. Limits are data: a key record carries its effective values, so a
// key may have custom limits.
package tier

import (
	"fmt"
	"sort"
)

// Tier is one plan.
type Tier struct {
	Name string `json:"name" yaml:"name"`
	// RPM is requests per minute.
	RPM int64 `json:"rpm" yaml:"rpm"`
	// MonthlyLimit is requests per UTC calendar month.
	MonthlyLimit int64 `json:"monthly_limit" yaml:"monthly_limit"`
}

// Table maps tier names to tiers.
type Table map[string]Tier

// Default is the public API's tiers.
func Default() Table {
	return Table{
		"basic":      {Name: "basic", RPM: 10, MonthlyLimit: 1000},
		"pro":        {Name: "pro", RPM: 30, MonthlyLimit: 3000},
		"enterprise": {Name: "enterprise", RPM: 100, MonthlyLimit: 10000},
	}
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
