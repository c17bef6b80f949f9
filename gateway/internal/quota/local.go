package quota

import (
	"sync"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

// local is the degraded-mode limiter: per replica, in memory, allowing
// each key 1/replicas of its RPM (at least 1) and of what was left of its
// monthly quota when the shared store was last seen.
type local struct {
	replicas int64
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*localKey
}

type localKey struct {
	window []time.Time // admission times within the last Window, oldest first
	month  string
	// lastUsed is the monthly count the shared store reported last;
	// extra counts admissions made locally since.
	lastUsed, extra int64
}

func newLocal(replicas int, now func() time.Time) *local {
	if replicas < 1 {
		replicas = 1
	}
	return &local{replicas: int64(replicas), now: now, keys: map[string]*localKey{}}
}

func (l *local) get(id, month string) *localKey {
	k := l.keys[id]
	if k == nil {
		k = &localKey{month: month}
		l.keys[id] = k
	}
	if k.month != month {
		k.month, k.lastUsed, k.extra = month, 0, 0
	}
	return k
}

func (l *local) remember(id, month string, used int64) {
	l.mu.Lock()
	k := l.get(id, month)
	k.lastUsed, k.extra = used, 0
	l.mu.Unlock()
}

func share(n, replicas int64) int64 { return max(1, n/replicas) }

func (l *local) admit(rec *apikey.Record, month string) Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	k := l.get(rec.ID, month)
	cut := now.Add(-Window)
	i := 0
	for i < len(k.window) && !k.window[i].After(cut) {
		i++
	}
	k.window = k.window[i:]

	rpm := share(rec.RPM, l.replicas)
	left := max(0, rec.MonthlyLimit-k.lastUsed)
	monthly := left / l.replicas
	if left > 0 && monthly == 0 {
		monthly = 1
	}
	d := Decision{Limit: rpm, MonthlyLimit: rec.MonthlyLimit, MonthlyUsed: k.lastUsed + k.extra}
	if len(k.window) > 0 {
		d.Reset = k.window[0].Add(Window).Sub(now)
	}
	switch {
	case int64(len(k.window)) >= rpm:
		d.Reason, d.RetryAfter = ReasonRate, d.Reset
	case k.extra >= monthly:
		d.Reason = ReasonQuota
	default:
		d.Allowed = true
		k.window = append(k.window, now)
		k.extra++
		d.MonthlyUsed++
		if len(k.window) == 1 {
			d.Reset = Window
		}
	}
	d.Remaining = max(0, rpm-int64(len(k.window)))
	return d
}

func (l *local) release(id, month string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.get(id, month)
	if n := len(k.window); n > 0 {
		k.window = k.window[:n-1]
	}
	if k.extra > 0 {
		k.extra--
	}
}
