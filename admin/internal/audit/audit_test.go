package audit

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

func state(rev uint64, hash, status string) State {
	return State{Record: apikey.Record{ID: "key_0123456789abcdef", Hash: hash, KeyPrefix: "sk-abc...", Name: "n", Tier: "basic",
		RPM: 10, MonthlyLimit: 1000, Models: []string{}, Status: status}, Revision: rev}
}

func TestChanged(t *testing.T) {
	base := state(1, "h1", apikey.StatusActive)
	tests := []struct {
		name   string
		before *State
		edit   func(*State)
		want   []string
	}{
		{name: "create lists every field", before: nil, edit: func(*State) {},
			want: []string{"id", "hash", "key_prefix", "name", "tier", "rpm", "monthly_limit", "tpm", "models", "status", "created_at"}},
		{name: "nothing", before: &base, edit: func(s *State) { s.UpdatedAt = time.Now(); s.Revision = 9 }, want: []string{}},
		{name: "rotation", before: &base, edit: func(s *State) { s.Hash, s.KeyPrefix = "h2", "sk-xyz..." }, want: []string{"hash", "key_prefix"}},
		{name: "models", before: &base, edit: func(s *State) { s.Models = []string{"m"} }, want: []string{"models"}},
		{name: "limits", before: &base, edit: func(s *State) { s.RPM, s.MonthlyLimit = 1, 2 }, want: []string{"rpm", "monthly_limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			after := base
			after.Models = slices.Clone(base.Models)
			tt.edit(&after)
			if got := Changed(tt.before, after); !slices.Equal(got, tt.want) {
				t.Errorf("Changed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEncodeDecode(t *testing.T) {
	before := state(1, "h1", apikey.StatusActive)
	e, err := NewEntry(time.Date(2026, 5, 20, 12, 0, 0, 500, time.FixedZone("x", 3600)), "alice", ActionRevoke, &before, state(2, "h1", apikey.StatusRevoked))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.ID, "aud_") || len(e.ID) != 36 || e.At.Location() != time.UTC || e.At.Nanosecond() != 0 || e.Revision != 2 {
		t.Errorf("entry %+v", e)
	}
	s, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(s)
	if err != nil || got.ID != e.ID || got.After.Status != apikey.StatusRevoked || got.Before.Hash != "h1" || !slices.Equal(got.Fields, []string{"status"}) {
		t.Errorf("Decode = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "{}", `{"id":"aud_x","key_id":"k","revision":1,"after":{"id":"other"}}`, "not json"} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("Decode(%q): no error", bad)
		}
	}
}

func TestHistories(t *testing.T) {
	mk := func(rev uint64, beforeHash, afterHash string) Entry {
		e := Entry{ID: "aud", KeyID: "key_0123456789abcdef", Revision: rev, After: state(rev, afterHash, apikey.StatusActive)}
		if beforeHash != "" {
			b := state(rev-1, beforeHash, apikey.StatusActive)
			e.Before = &b
		}
		return e
	}
	// Out of order on purpose: the highest revision wins, not the last seen.
	hs := HistoriesOf([]Entry{mk(3, "h2", "h3"), mk(1, "", "h1"), mk(2, "h1", "h2")})
	h := hs["key_0123456789abcdef"]
	if h.Last.Revision != 3 || h.Last.Hash != "h3" || !slices.Equal(h.Hashes, []string{"h1", "h2", "h3"}) {
		t.Errorf("history %+v", h)
	}
	m := Merge(History{Last: state(5, "h5", "active"), Hashes: []string{"h5"}}, h)
	if m.Last.Revision != 5 || !slices.Equal(m.Hashes, []string{"h1", "h2", "h3", "h5"}) {
		t.Errorf("merge %+v", m)
	}
}
