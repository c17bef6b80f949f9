package proxy

import (
	"sync"
	"time"
)

// Member is one upstream endpoint of the pool.
type Member struct {
	BaseURL string
	APIKey  string
	Weight  int
}

// pool picks upstream members by smooth weighted round robin (the
// sequence nginx uses: spread out, not bursty) among healthy members.
// Passive health: a member that fails EjectAfter times in a row is left
// out for Cooldown; when every member is out, the one that comes back
// soonest is used anyway, since refusing all traffic helps nobody.
type pool struct {
	mu         sync.Mutex
	members    []*poolMember
	ejectAfter int
	cooldown   time.Duration
	now        func() time.Time
}

type poolMember struct {
	url           string
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
		p.members = append(p.members, &poolMember{url: m.BaseURL + "/chat/completions", auth: auth, weight: w})
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
