package quota

import (
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

func TestLocalShare(t *testing.T) {
	now := time.Date(2026, 11, 30, 23, 59, 30, 0, time.UTC)
	clock := func() time.Time { return now }
	l := newLocal(2, clock)
	rec := &apikey.Record{ID: "k", RPM: 10, MonthlyLimit: 100}
	l.remember("k", MonthOf(now), 96) // 4 left this month: 2 for this replica
	got := 0
	for range 10 {
		if d := l.admit(rec, MonthOf(now)); d.Allowed {
			got++
		} else if d.Reason != ReasonQuota {
			t.Errorf("refusal reason %q, want quota", d.Reason)
		}
	}
	if got != 2 {
		t.Errorf("allowed %d, want 2 (half of the 4 left)", got)
	}
	// A new month starts from zero: the RPM share (5) binds now.
	now = now.Add(time.Minute)
	got = 0
	for range 10 {
		if d := l.admit(rec, MonthOf(now)); d.Allowed {
			got++
		}
	}
	if got != 5 {
		t.Errorf("allowed %d in the new month, want the RPM share 5", got)
	}
	l.release("k", MonthOf(now))
	if d := l.admit(rec, MonthOf(now)); !d.Allowed {
		t.Error("a released slot was not given back")
	}
}

func TestUntilNextMonth(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC)
	if d := untilNextMonth(at); d != time.Hour {
		t.Errorf("got %v, want 1h", d)
	}
	if MonthOf(at) != "202612" {
		t.Errorf("month %s", MonthOf(at))
	}
}
