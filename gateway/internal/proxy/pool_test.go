package proxy

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestPoolWeightedRoundRobin(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool([]Member{{BaseURL: "a", Weight: 5}, {BaseURL: "b", Weight: 1}, {BaseURL: "c", Weight: 1}}, 3, time.Second, clk.now)
	counts := map[string]int{}
	var seq []string
	for range 70 {
		m := p.pick(nil)
		counts[m.url]++
		seq = append(seq, m.url)
	}
	if counts["a/chat/completions"] != 50 || counts["b/chat/completions"] != 10 || counts["c/chat/completions"] != 10 {
		t.Errorf("counts %v, want 50/10/10", counts)
	}
	// Smooth: the heavy member is never picked more than 5 times in a row.
	run := 0
	for i := range seq {
		if i > 0 && seq[i] == seq[i-1] {
			run++
		} else {
			run = 1
		}
		if run > 5 {
			t.Fatalf("burst of %d on %s", run, seq[i])
		}
	}
}

func TestPoolEjectionAndRecovery(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool([]Member{{BaseURL: "a"}, {BaseURL: "b"}}, 2, 10*time.Second, clk.now)
	a := p.members[0]
	p.report(a, false)
	if a.ejectedUntil.After(clk.t) {
		t.Fatal("ejected after one failure; EjectAfter is 2")
	}
	p.report(a, false)
	for range 10 {
		if m := p.pick(nil); m == a {
			t.Fatal("picked an ejected member")
		}
	}
	clk.t = clk.t.Add(11 * time.Second)
	seen := false
	for range 4 {
		if p.pick(nil) == a {
			seen = true
		}
	}
	if !seen {
		t.Error("member not back after its cooldown")
	}
	if p.ejections()["a/chat/completions"] != 1 {
		t.Errorf("ejections %v", p.ejections())
	}
}

func TestPoolAvoidsLastAndFallsBackWhenAllEjected(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool([]Member{{BaseURL: "a"}, {BaseURL: "b"}}, 1, 10*time.Second, clk.now)
	a, b := p.members[0], p.members[1]
	for range 5 {
		if p.pick(a) != b {
			t.Fatal("retry went to the member that just failed")
		}
	}
	p.report(a, false)
	clk.t = clk.t.Add(time.Second)
	p.report(b, false)
	// Both out: the one that returns first (a) is used rather than nothing.
	if m := p.pick(nil); m != a {
		t.Errorf("picked %v, want the member whose cooldown ends first", m)
	}
	single := newPool([]Member{{BaseURL: "only"}}, 1, time.Second, clk.now)
	if single.pick(single.members[0]) != single.members[0] {
		t.Error("a one-member pool must retry on its only member")
	}
}
