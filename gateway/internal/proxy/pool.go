package proxy

import (
	"math"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Member is one upstream endpoint of the pool.
type Member struct {
	BaseURL string
	APIKey  string
	Weight  int
}

// pool picks upstream members among healthy ones, in one of two ways. With
// a session (pickFor), by weighted rendezvous hashing: every member scores
// the session, the highest score wins, so a conversation stays on one
// member, and so in one upstream account's prompt cache, on every gateway
// replica alike. Without one (pick), by smooth weighted round robin (the
// sequence nginx uses: spread out, not bursty). Passive health: a member that fails EjectAfter times in a row is left
// out for Cooldown; when every member is out, the one that comes back
// soonest is used anyway, since refusing all traffic helps nobody.
type pool struct {
	mu         sync.Mutex
	members    []*poolMember
	ejectAfter int
	cooldown   time.Duration
	now        func() time.Time
	// uniform: every weight is the same, so pickFor ranks members by their
	// hash alone (weight/-ln(u) grows with u), without a logarithm.
	uniform bool
}

type poolMember struct {
	url string
	// id is the member's rendezvous identity: a hash of its base URL and
	// key, the same on every replica whatever the order of the list.
	id            uint64
	index         int      // position in the pool, for pickFor's tried mask
	auth          []string // the Authorization header's value; nil without a key
	weight, cur   int
	failures      int
	ejectedUntil  time.Time
	ejectionCount int64
}

func newPool(ms []Member, ejectAfter int, cooldown time.Duration, now func() time.Time) *pool {
	p := &pool{ejectAfter: ejectAfter, cooldown: cooldown, now: now}
	for _, m := range ms {
		w := m.Weight
		if w <= 0 {
			w = 1
		}
		var auth []string
		if m.APIKey != "" {
			auth = []string{"Bearer " + m.APIKey}
		}
		p.members = append(p.members, &poolMember{
			url: m.BaseURL + "/chat/completions", auth: auth, weight: w, index: len(p.members),
			id: mix64(xxhash.Sum64String(m.BaseURL + "\x00" + m.APIKey)),
		})
	}
	p.uniform = true
	for _, m := range p.members {
		p.uniform = p.uniform && m.weight == p.members[0].weight
	}
	return p
}

// pick returns a member, avoiding the one in avoid when another is usable.
func (p *pool) pick(avoid *poolMember) *poolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	var best, soonest *poolMember
	total := 0
	for _, m := range p.members {
		if now.Before(m.ejectedUntil) || (m == avoid && len(p.members) > 1) {
			if soonest == nil || m.ejectedUntil.Before(soonest.ejectedUntil) {
				soonest = m
			}
			continue
		}
		m.cur += m.weight
		total += m.weight
		if best == nil || m.cur > best.cur {
			best = m
		}
	}
	if best == nil {
		return soonest
	}
	best.cur -= total
	return best
}

// pickFor returns the member session belongs to by weighted rendezvous
// hashing (highest random weight): member m scores weight/-ln(u), u a hash
// of the session and m's id mapped into (0,1), and the healthy member with
// the highest score wins. A member wins a share of sessions proportional to
// its weight; when one is ejected only its sessions move, each to its
// next-highest member, and they come back when it does.
//
// tried has bit i set for each member i (of the first 64) this request
// already tried, and last is the one tried just before: a retry goes to
// the best healthy member not yet tried, else to the best other than last
// (as pick avoids it). When every member is out, the one that comes back
// soonest is used, as pick does.
func (p *pool) pickFor(session, tried uint64, last *poolMember) *poolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	var fresh, other, soonest *poolMember
	freshScore, otherScore := 0.0, 0.0
	for i, m := range p.members {
		if now.Before(m.ejectedUntil) || (m == last && len(p.members) > 1) {
			if soonest == nil || m.ejectedUntil.Before(soonest.ejectedUntil) {
				soonest = m
			}
			continue
		}
		var s float64
		if p.uniform {
			s = float64(rendezvousHash(session, m.id)) // same order, no logarithm
		} else {
			s = rendezvousScore(session, m.id, m.weight)
		}
		if other == nil || s > otherScore {
			other, otherScore = m, s
		}
		if (i >= 64 || tried&(1<<i) == 0) && (fresh == nil || s > freshScore) {
			fresh, freshScore = m, s
		}
	}
	switch {
	case fresh != nil:
		return fresh
	case other != nil:
		return other
	}
	return soonest
}

// triedBit is m's bit in pickFor's tried mask (0 past the 64th member).
func (m *poolMember) triedBit() uint64 {
	if m == nil || m.index >= 64 {
		return 0
	}
	return 1 << m.index
}

// rendezvousScore is member's score for session: weight / -ln(u), with u
// uniform in (0,1) from a hash of both. -ln(u) is exponentially
// distributed, so the highest weight/-ln(u) is member i with probability
// weight_i / sum of weights (the minimum of exponentials with rates w_i).
func rendezvousScore(session, member uint64, weight int) float64 {
	x := rendezvousHash(session, member)
	u := (float64(x>>11) + 0.5) * (1.0 / (1 << 53)) // 53 bits, never 0 or 1
	return float64(weight) / -math.Log(u)
}

// rendezvousHash is the hash of session and member (an id already mixed)
// that scores are made of; with equal weights its order is theirs.
func rendezvousHash(session, member uint64) uint64 {
	return mix64(session ^ member)
}

// mix64 is the finalizer of MurmurHash3 (fmix64): every input bit affects
// every output bit, so nearby session hashes and member ids score apart.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// report records the result of an attempt on m.
func (p *pool) report(m *poolMember, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok {
		m.failures = 0
		return
	}
	m.failures++
	if m.failures >= p.ejectAfter {
		m.failures = 0
		m.ejectedUntil = p.now().Add(p.cooldown)
		m.ejectionCount++
	}
}

// ejections returns how many times each member was ejected, by URL.
func (p *pool) ejections() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int64, len(p.members))
	for _, m := range p.members {
		out[m.url] = m.ejectionCount
	}
	return out
}
