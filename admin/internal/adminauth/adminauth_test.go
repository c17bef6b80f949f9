package adminauth

import (
	"testing"
	"time"
)

func TestIdentify(t *testing.T) {
	ts := NewTokens([]Token{{Name: "admin", Secret: "s3cret-one"}, {Name: "alice", Secret: "s3cret-two"}})
	tests := []struct {
		presented, want string
		ok              bool
	}{
		{"s3cret-one", "admin", true},
		{"s3cret-two", "alice", true},
		{"s3cret-on", "", false},
		{"s3cret-one ", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if name, ok := ts.Identify(tt.presented); name != tt.want || ok != tt.ok {
			t.Errorf("Identify(%q) = %q, %v", tt.presented, name, ok)
		}
	}
	if _, ok := NewTokens(nil).Identify(""); ok {
		t.Error("no tokens: the empty token is accepted")
	}
}

func TestLimiter(t *testing.T) {
	now := time.Date(2026, 5, 20, 12, 0, 0, 0, time.UTC)
	l := NewLimiter(3, time.Minute, func() time.Time { return now })
	step := func(d time.Duration) { now = now.Add(d) }
	for i := range 2 {
		if _, blocked := l.Fail("a"); blocked {
			t.Fatalf("blocked after %d failures", i+1)
		}
		step(10 * time.Second)
	}
	// Third failure at t=20s blocks until the first (t=0) is a minute old.
	wait, blocked := l.Fail("a")
	if !blocked || wait != 40*time.Second {
		t.Fatalf("third failure: blocked %v, wait %v", blocked, wait)
	}
	if _, blocked := l.Blocked("b"); blocked {
		t.Error("another client is blocked")
	}
	step(39 * time.Second)
	if wait, blocked := l.Blocked("a"); !blocked || wait != time.Second {
		t.Errorf("at 59 s: blocked %v wait %v", blocked, wait)
	}
	step(time.Second)
	if _, blocked := l.Blocked("a"); blocked {
		t.Error("still blocked a minute after the first failure")
	}
	// One failure later the client is blocked again (two are still recent).
	if _, blocked := l.Fail("a"); !blocked {
		t.Error("not blocked with 3 failures in the last minute")
	}
	step(2 * time.Minute)
	if _, blocked := l.Blocked("a"); blocked {
		t.Error("blocked after the window")
	}
	l.Fail("c")
	step(2 * time.Minute)
	l.Fail("d") // sweeps forgotten clients
	l.mu.Lock()
	n := len(l.failures)
	l.mu.Unlock()
	if n != 1 {
		t.Errorf("%d clients remembered, want 1 (old ones swept)", n)
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":          "203.0.113.7",
		"::ffff:203.0.113.7":   "203.0.113.7",
		"2001:db8::1":          "2001:db8::/64",
		"2001:db8:0:0:ffff::1": "2001:db8::/64",
		"2001:db8:0:1::1":      "2001:db8:0:1::/64",
		"not an ip":            "not an ip",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
