package tier

import "testing"

func TestDefault(t *testing.T) {
	tb := Default()
	for name, want := range map[string]Tier{
		"basic":      {Name: "basic", RPM: 10, MonthlyLimit: 1000},
		"pro":        {Name: "pro", RPM: 30, MonthlyLimit: 3000},
		"enterprise": {Name: "enterprise", RPM: 100, MonthlyLimit: 10000},
	} {
		if got, err := tb.Lookup(name); err != nil || got != want {
			t.Errorf("%s: %+v %v, want %+v", name, got, err, want)
		}
	}
	if _, err := tb.Lookup("gold"); err == nil {
		t.Error("unknown tier found")
	}
}

func TestParseErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       "tiers: {}",
		"zero rpm":    "tiers: {x: {rpm: 0, monthly_limit: 5}}",
		"neg tpm":     "tiers: {x: {rpm: 1, monthly_limit: 5, tpm: -1}}",
		"not yaml":    "tiers: [",
		"zero months": "tiers: {x: {rpm: 1, monthly_limit: 0}}",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(in)); err == nil {
				t.Error("want error")
			}
		})
	}
}
