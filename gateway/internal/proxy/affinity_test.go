package proxy

import (
	"math"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/catalog"
)

// sessions returns n session ids as sessionOf makes them: hashes.
func sessions(n int) []uint64 {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]uint64, n)
	for i := range out {
		out[i] = r.Uint64()
	}
	return out
}

func fourMembers() []Member {
	return []Member{
		{BaseURL: "https://api.example", APIKey: "sk-1", Weight: 1},
		{BaseURL: "https://api.example", APIKey: "sk-2", Weight: 2},
		{BaseURL: "https://api.example", APIKey: "sk-3", Weight: 3},
		{BaseURL: "https://api.example", APIKey: "sk-4", Weight: 4},
	}
}

// keyOf names the member m of p by its position in the configuration.
func keyOf(p *pool, m *poolMember) int {
	for i, pm := range p.members {
		if pm == m {
			return i
		}
	}
	return -1
}

func TestRendezvousStable(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	ms := fourMembers()
	p := newPool(ms, 3, time.Second, clk.now)
	// Another replica, its list in another order: the same choices.
	rev := []Member{ms[3], ms[2], ms[1], ms[0]}
	q := newPool(rev, 3, time.Second, clk.now)
	for _, s := range sessions(2000) {
		m := p.pickFor(s, 0, nil)
		for range 3 {
			if p.pickFor(s, 0, nil) != m {
				t.Fatalf("session %x moved between picks", s)
			}
		}
		if got, want := q.pickFor(s, 0, nil).auth[0], m.auth[0]; got != want {
			t.Fatalf("session %x: replicas disagree", s)
		}
	}
}

func TestRendezvousWeights(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool(fourMembers(), 3, time.Second, clk.now)
	const n = 100000
	counts := make([]int, 4)
	for _, s := range sessions(n) {
		counts[keyOf(p, p.pickFor(s, 0, nil))]++
	}
	for i, c := range counts {
		want := float64(i+1) / 10
		// Binomial standard deviation is at most 0.0016 here: 0.01 is > 6 sigma.
		if got := float64(c) / n; math.Abs(got-want) > 0.01 {
			t.Errorf("member %d (weight %d): share %.4f, want %.2f +- 0.01", i, i+1, got, want)
		}
	}
}

// TestRendezvousUniform: with equal weights pickFor ranks by hash alone,
// which must choose exactly what the scores would, and evenly.
func TestRendezvousUniform(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	ms := fourMembers()
	for i := range ms {
		ms[i].Weight = 5
	}
	p := newPool(ms, 3, time.Second, clk.now)
	if !p.uniform {
		t.Fatal("equal weights not seen as uniform")
	}
	const n = 40000
	counts := make([]int, 4)
	for _, s := range sessions(n) {
		m := p.pickFor(s, 0, nil)
		if m != nextBest(p, s, nil) {
			t.Fatalf("session %x: the hash order and the scores disagree", s)
		}
		counts[keyOf(p, m)]++
	}
	for i, c := range counts {
		if got := float64(c) / n; math.Abs(got-0.25) > 0.015 {
			t.Errorf("member %d: share %.4f, want 0.25 +- 0.015", i, got)
		}
	}
}

func TestRendezvousEjectionMovesOnlyThatMembersSessions(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool(fourMembers(), 1, 10*time.Second, clk.now)
	ss := sessions(20000)
	before := make([]*poolMember, len(ss))
	for i, s := range ss {
		before[i] = p.pickFor(s, 0, nil)
	}
	out := p.members[2]
	p.report(out, false) // EjectAfter 1: out
	moved := make([]int, 4)
	for i, s := range ss {
		m := p.pickFor(s, 0, nil)
		switch {
		case m == out:
			t.Fatal("picked the ejected member")
		case before[i] == out:
			moved[keyOf(p, m)]++
			// The next-highest score: what avoiding it gives too.
			if clk.t.Before(out.ejectedUntil) && m != nextBest(p, s, out) {
				t.Fatalf("session %x went to %d, not to its next-highest member", s, keyOf(p, m))
			}
		case m != before[i]:
			t.Fatalf("session %x moved from %d to %d although its member is healthy", s, keyOf(p, before[i]), keyOf(p, m))
		}
	}
	// The moved sessions spread over the others by weight (1:2:4).
	total := moved[0] + moved[1] + moved[3]
	for i, w := range map[int]float64{0: 1, 1: 2, 3: 4} {
		if got := float64(moved[i]) / float64(total); math.Abs(got-w/7) > 0.03 {
			t.Errorf("member %d got %.3f of the moved sessions, want %.3f", i, got, w/7)
		}
	}
	clk.t = clk.t.Add(11 * time.Second)
	for i, s := range ss {
		if p.pickFor(s, 0, nil) != before[i] {
			t.Fatalf("session %x did not come back after the cooldown", s)
		}
	}
}

// nextBest is the highest-scoring member of s other than not, by brute force.
func nextBest(p *pool, s uint64, not *poolMember) *poolMember {
	var best *poolMember
	score := 0.0
	for _, m := range p.members {
		if m == not {
			continue
		}
		if sc := rendezvousScore(s, m.id, m.weight); best == nil || sc > score {
			best, score = m, sc
		}
	}
	return best
}

func TestRendezvousRetryAndAllEjected(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newPool(fourMembers(), 1, 10*time.Second, clk.now)
	for _, s := range sessions(500) {
		first := p.pickFor(s, 0, nil)
		if retry := p.pickFor(s, first.triedBit(), first); retry == first || retry != nextBest(p, s, first) {
			t.Fatalf("session %x: retry went to %d, want its next-highest member", s, keyOf(p, retry))
		}
	}
	// A second retry goes to the third member, not back to the first.
	for _, s := range sessions(500) {
		first := p.pickFor(s, 0, nil)
		second := p.pickFor(s, first.triedBit(), first)
		third := p.pickFor(s, first.triedBit()|second.triedBit(), second)
		if third == first || third == second {
			t.Fatalf("session %x: the second retry went back to a member already tried", s)
		}
		// Every member tried: anything but the last one.
		all := uint64(1<<len(p.members) - 1)
		if m := p.pickFor(s, all, third); m == third {
			t.Fatalf("session %x: every member tried, and the retry went to the one that just failed", s)
		}
	}
	for i, m := range p.members {
		clk.t = time.Unix(int64(i), 0)
		p.report(m, false)
	}
	if m := p.pickFor(42, 0, nil); m != p.members[0] {
		t.Errorf("all ejected: picked %d, want the member that returns first (0)", keyOf(p, m))
	}
	single := newPool([]Member{{BaseURL: "only"}}, 1, time.Second, clk.now)
	if single.pickFor(1, 1, single.members[0]) != single.members[0] {
		t.Error("a one-member pool must retry on its only member")
	}
}

func TestSessionOf(t *testing.T) {
	cat := catalog.Builtin()
	prep := func(t *testing.T, body string) *chatRequest {
		t.Helper()
		req, err := prepare([]byte(body), cat)
		if err != nil {
			t.Fatalf("prepare %s: %v", body, err)
		}
		return req
	}
	const (
		turn1 = `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}`
		turn2 = `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},` +
			`{"role":"assistant","content":"Hello"},{"role":"user","content":"More"}]}`
		other     = `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Bye"}]}`
		otherSys  = `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"Be long."},{"role":"user","content":"Hi"}]}`
		withKey   = `{"model":"deepseek-v4-flash","prompt_cache_key":"conv-7","user":"alice","messages":[{"role":"user","content":"Hi"}]}`
		withKey2  = `{"model":"deepseek-v4-flash","prompt_cache_key":"conv-7","messages":[{"role":"user","content":"Other"}]}`
		withUser  = `{"model":"deepseek-v4-flash","user":"alice","messages":[{"role":"user","content":"Hi"}]}`
		withUser2 = `{"model":"deepseek-v4-flash","user":"alice","messages":[{"role":"user","content":"Else"}]}`
		emptyKey  = `{"model":"deepseek-v4-flash","prompt_cache_key":"","user":"alice","messages":[{"role":"user","content":"Hi"}]}`
		numberKey = `{"model":"deepseek-v4-flash","prompt_cache_key":7,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}`
	)
	none := http.Header{}
	hdr := func(v string) http.Header { return http.Header{SessionHeader: {v}} }
	id := func(key string, h http.Header, body string) uint64 { return sessionOf(key, h, prep(t, body)) }
	tests := []struct {
		name string
		a, b uint64
		same bool
	}{
		{"later turns keep the opening's session", id("k", none, turn1), id("k", none, turn2), true},
		{"another first question is another session", id("k", none, turn1), id("k", none, other), false},
		{"another system prompt is another session", id("k", none, turn1), id("k", none, otherSys), false},
		{"client keys never share a session", id("k1", none, turn1), id("k2", none, turn1), false},
		{"the header wins over the body and the opening", id("k", hdr("s1"), withKey), id("k", hdr("s1"), turn1), true},
		{"the header splits one opening", id("k", hdr("s1"), turn1), id("k", hdr("s2"), turn1), false},
		{"an empty header is none", id("k", hdr(""), turn1), id("k", none, turn1), true},
		{"prompt_cache_key wins over user and the opening", id("k", none, withKey), id("k", none, withKey2), true},
		{"prompt_cache_key names like the header", id("k", none, withKey), id("k", hdr("conv-7"), turn1), true},
		{"user wins over the opening", id("k", none, withUser), id("k", none, withUser2), true},
		{"an empty prompt_cache_key falls to user", id("k", none, emptyKey), id("k", none, withUser), true},
		{"a prompt_cache_key that is not a string is ignored", id("k", none, numberKey), id("k", none, turn1), true},
		{"client keys never share a named session", id("k1", hdr("s1"), turn1), id("k2", hdr("s1"), turn1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.a == tt.b) != tt.same {
				t.Errorf("ids %x and %x: same = %v, want %v", tt.a, tt.b, tt.a == tt.b, tt.same)
			}
		})
	}
}

// BenchmarkPick measures choosing a member for one request of a
// four-member pool: round robin (UPSTREAM_AFFINITY=false) against
// affinity, the session hash of an ordinary opening (or of the session
// header) included; equal weights unless the name says weighted.
func BenchmarkPick(b *testing.B) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	body := `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"You are a helpful assistant. Answer in the language of the question, briefly and precisely."},` +
		`{"role":"user","content":"What is the capital of France, and how many people live there?"},{"role":"assistant","content":"Paris; about 2.1 million."},{"role":"user","content":"And Lyon?"}]}`
	req, err := prepare([]byte(body), catalog.Builtin())
	if err != nil {
		b.Fatal(err)
	}
	h := http.Header{}
	equal := fourMembers()
	for i := range equal {
		equal[i].Weight = 1
	}
	b.Run("round-robin", func(b *testing.B) {
		p := newPool(equal, 3, time.Second, clk.now)
		cpuPerOp(b, func() { _ = p.pick(nil) })
	})
	b.Run("affinity-weighted", func(b *testing.B) {
		p := newPool(fourMembers(), 3, time.Second, clk.now)
		cpuPerOp(b, func() { _ = p.pickFor(sessionOf("key-id", h, req), 0, nil) })
	})
	b.Run("affinity", func(b *testing.B) {
		p := newPool(equal, 3, time.Second, clk.now)
		cpuPerOp(b, func() { _ = p.pickFor(sessionOf("key-id", h, req), 0, nil) })
	})
	b.Run("affinity-header", func(b *testing.B) {
		p := newPool(equal, 3, time.Second, clk.now)
		hh := http.Header{SessionHeader: {"conversation-0123456789"}}
		cpuPerOp(b, func() { _ = p.pickFor(sessionOf("key-id", hh, req), 0, nil) })
	})
}

// cpuPerOp runs op b.N times and reports, besides ns/op (wall time), the
// process's CPU time per op: what an op costs on a machine busy with
// other work too.
func cpuPerOp(b *testing.B, op func()) {
	b.ReportAllocs()
	start, ok := processCPU()
	n := 0
	for b.Loop() {
		op()
		n++
	}
	if end, ok2 := processCPU(); ok && ok2 && n > 0 {
		b.ReportMetric(float64(end-start)/float64(n), "cpu-ns/op")
	}
}
