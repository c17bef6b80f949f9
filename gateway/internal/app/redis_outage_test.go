package app

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

// TestRedisOutageUnderLoad stops the real redis-server while requests
// flow, then starts it again: keys verified before keep working with the
// local share of their limits, unknown keys get 503 service_unavailable,
// nothing hangs, and the gateway recovers by itself.
func TestRedisOutageUnderLoad(t *testing.T) {
	rs := scripts.RedisPersistent(t) // the key records must survive the restart
	h := startGatewayWith(t, rs, nil)
	known := h.addKeyWith(t, "key_known", func(r *apikey.Record) { r.RPM, r.MonthlyLimit = 100000, 1000000 })
	if r := h.post(t, known, `{"model":"deepseek-chat","messages":[{"role":"user","content":"warm"}]}`); r.status != 200 {
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}

	var stop atomic.Bool
	var mu sync.Mutex
	statuses := map[int]int{}
	var slowest time.Duration
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				start := time.Now()
				r := h.post(t, known, fmt.Sprintf(`{"model":"deepseek-chat","messages":[{"role":"user","content":"load %d %d"}]}`, w, i))
				el := time.Since(start)
				mu.Lock()
				statuses[r.status]++
				slowest = max(slowest, el)
				mu.Unlock()
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return statuses[200]
	}
	waitFor("load before the outage", func() bool { return count() > 20 })

	rs.Stop(t)
	before := count()
	waitFor("requests served during the outage", func() bool { return count() > before+40 })
	unknown, _ := apikey.Generate()
	start := time.Now()
	r := h.post(t, unknown, `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}]}`)
	if r.status != 503 {
		t.Errorf("unknown key during the outage: %d %s, want 503", r.status, r.body)
	} else if typ, _, _ := errorOf(t, r.body); typ != "service_unavailable" {
		t.Errorf("type %s", typ)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("unknown key waited %v during the outage", el)
	}

	// The fallback shows on /metrics, for the "Redis fallback active" alert.
	m := h.metrics(t)
	if !strings.Contains(m, "qyai_gateway_redis_fallback 1") || !regexp.MustCompile(`qyai_gateway_limit_fallback_admissions_total [1-9]`).MatchString(m) {
		t.Errorf("/metrics during the outage lacks the fallback signals:\n%s", grepLines(m, "fallback"))
	}

	rs.Start(t)
	// Recovery is automatic: a key created after the restart works.
	fresh := h.addKeyWith(t, "key_fresh", func(r *apikey.Record) {})
	waitFor("a new key to work after Redis came back", func() bool {
		return h.post(t, fresh, `{"model":"deepseek-chat","messages":[{"role":"user","content":"back"}]}`).status == 200
	})
	after := count()
	waitFor("load after the outage", func() bool { return count() > after+20 })
	waitFor("the fallback to end on /metrics", func() bool { return strings.Contains(h.metrics(t), "qyai_gateway_redis_fallback 0") })
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("known-key statuses across the outage: %v, slowest %v", statuses, slowest)
	for s, n := range statuses {
		if s != 200 {
			t.Errorf("%d requests of a verified key got %d across the outage", n, s)
		}
	}
	if slowest > 5*time.Second {
		t.Errorf("a request took %v: something waited on Redis without a bound", slowest)
	}
}

// metrics returns the gateway's /metrics text.
func (h *harness) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(h.metricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
