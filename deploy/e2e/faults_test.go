package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/usage"
)

// load is steady mixed traffic: plain requests, streams with and without
// include_usage, spread over the gateways that are up.
type load struct {
	stop      atomic.Bool
	ok, fails atomic.Int64
	wg        sync.WaitGroup
	mu        sync.Mutex
	live      []string
}

func (l *load) setLive(urls []string) {
	l.mu.Lock()
	l.live = append([]string(nil), urls...)
	l.mu.Unlock()
}

func (l *load) pick(r *rand.Rand) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live[r.IntN(len(l.live))]
}

func startLoad(t *testing.T, urls []string, key string, clients int) *load {
	t.Helper()
	l := &load{}
	l.setLive(urls)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for c := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for i := 0; !l.stop.Load(); i++ {
				words := strings.Repeat("word ", 1+r.IntN(40))
				var body string
				switch i % 3 {
				case 0:
					body = fmt.Sprintf(`{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"%s #sim tokens=%d"}]}`, words, 1+r.IntN(30))
				case 1:
					body = fmt.Sprintf(`{"model":"deepseek-reasoner","stream":true,"messages":[{"role":"user","content":"%s #sim tokens=%d"}]}`, words, 2+r.IntN(30))
				default:
					body = fmt.Sprintf(`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"%s"}]}`, words)
				}
				req, _ := http.NewRequest(http.MethodPost, l.pick(r)+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := client.Do(req)
				if err != nil {
					l.fails.Add(1) // e.g. a gateway that is stopping refused the connection
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, bufio.NewReader(resp.Body))
				_ = resp.Body.Close()
				if resp.StatusCode == 200 {
					l.ok.Add(1)
				} else {
					l.fails.Add(1)
				}
			}
		}()
	}
	return l
}

func (l *load) finish() {
	l.stop.Store(true)
	l.wg.Wait()
}

// totals are the quantities that must reconcile exactly.
type totals struct {
	Requests, Prompt, CacheHit, CacheMiss, Completion, Reasoning uint64
	Cost                                                         string
}

func (s *stack) chConn(t *testing.T) driver.Conn {
	t.Helper()
	c, err := chschema.Open(t.Context(), chschema.Options{Addr: s.clickhouse.Addr, Database: "qyai"})
	if err != nil {
		t.Fatalf("open clickhouse: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// stored reads the exact (deduplicated) totals from ClickHouse.
func stored(ctx context.Context, c driver.Conn) (totals, error) {
	var tt totals
	var cost decimal.Decimal
	err := c.QueryRow(ctx, `SELECT count(), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),
		sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd) FROM qyai.usage_events FINAL`).
		Scan(&tt.Requests, &tt.Prompt, &tt.CacheHit, &tt.CacheMiss, &tt.Completion, &tt.Reasoning, &cost)
	tt.Cost = cost.StringFixed(9)
	return tt, err
}

// served is what the simulator served, priced like the meter prices it
// (every model of the load runs on deepseek-v4-flash), plus extra.
func (s *stack) served(t *testing.T, extra totals) totals {
	t.Helper()
	st := s.simStats(t)
	tt := totals{
		Requests: st.Completed + extra.Requests, Prompt: st.PromptTokens + extra.Prompt, CacheHit: st.CacheHitTokens + extra.CacheHit,
		CacheMiss: st.CacheMissTokens + extra.CacheMiss, Completion: st.CompletionTokens + extra.Completion, Reasoning: st.ReasoningTokens + extra.Reasoning,
	}
	if st.Requests != st.Completed {
		t.Errorf("simulator: %d requests but %d completed: the load should not fail upstream", st.Requests, st.Completed)
	}
	cost, _, err := pricing.Default().Cost("deepseek-v4-flash", time.Now(), pricing.Tokens{
		CacheHit: int64(tt.CacheHit), CacheMiss: int64(tt.CacheMiss), Completion: int64(tt.Completion)})
	if err != nil {
		t.Fatal(err)
	}
	tt.Cost = cost.String()
	return tt
}

// reconcile waits for the pipeline to drain and compares exactly.
func (s *stack) reconcile(t *testing.T, c driver.Conn, step string, extra totals) {
	t.Helper()
	want := s.served(t, extra)
	var got totals
	var err error
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		got, err = stored(t.Context(), c)
		if err == nil && got == want {
			t.Logf("%s: reconciled exactly: %+v", step, got)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: ClickHouse totals never matched what the upstream served\n got %+v (err %v)\nwant %+v", step, got, err, want)
}

// restart starts a process again with the same settings.
func (s *stack) restartMeter(t *testing.T) {
	s.meter = startProc(t, "meter", s.env)
	waitHTTP(t, s.meter, "http://"+s.env["METER_ADDR"]+"/healthz")
}

func (s *stack) restartGateway(t *testing.T, i int) {
	s.gateways[i] = startProc(t, "gateway", s.gatewayEnvs[i])
	waitHTTP(t, s.gateways[i], s.gatewayURLs[i]+"/readyz")
}

// TestMeteringSurvivesFaults drives steady mixed load through two
// gateways and injects, one after another, the faults that must lose
// nothing and count nothing twice. After each, once the pipeline drained,
// ClickHouse's exact totals (requests, every token kind, cost) must equal
// what the simulator served.
func TestMeteringSurvivesFaults(t *testing.T) {
	s := startStack(t, 2)
	key := s.createKey(t, `{"name":"faults","tier":"enterprise","rpm":1000000,"monthly_limit":100000000}`)
	ch := s.chConn(t)
	var extra totals
	run := func(name string, clients int, during func(l *load)) {
		t.Helper()
		l := startLoad(t, s.gatewayURLs, key.Key, clients)
		during(l)
		l.finish()
		t.Logf("%s: %d requests answered 200, %d refused or failed at the client", name, l.ok.Load(), l.fails.Load())
		if l.ok.Load() == 0 {
			t.Fatalf("%s: no request succeeded", name)
		}
		s.reconcile(t, ch, name, extra)
	}
	steady := func(d time.Duration) { time.Sleep(d) }

	run("(a) kill -9 the meter mid-batch", 8, func(l *load) {
		steady(3 * time.Second)
		_ = s.meter.cmd.Process.Kill()
		<-s.meter.done
		steady(3 * time.Second)
		s.restartMeter(t)
		steady(2 * time.Second)
	})
	run("(b) NATS down for 20 s", 8, func(l *load) {
		steady(2 * time.Second)
		s.nats.Stop(t)
		steady(20 * time.Second)
		s.nats.Start(t)
		steady(3 * time.Second)
	})
	run("(c) ClickHouse down for 20 s", 8, func(l *load) {
		steady(2 * time.Second)
		s.clickhouse.Stop(t)
		steady(20 * time.Second)
		s.clickhouse.Start(t)
		steady(3 * time.Second)
	})
	run("(d) SIGTERM a gateway mid-load", 8, func(l *load) {
		steady(2 * time.Second)
		l.setLive(s.gatewayURLs[1:])
		s.gateways[0].stop(t, syscall.SIGTERM)
		steady(2 * time.Second)
		s.restartGateway(t, 0)
		l.setLive(s.gatewayURLs)
		steady(2 * time.Second)
	})

	// (e) The same event delivered twice, past JetStream's dedup (a new
	// message id each time), as a redelivery after a crash would be.
	ev := usage.Event{SchemaVersion: usage.SchemaVersion, ID: "dup-event-1", RequestID: "req-dup", StartedAt: time.Now().UTC(),
		FinishedAt: time.Now().UTC(), KeyID: key.ID, KeyPrefix: key.KeyPrefix, Tier: "enterprise", Model: "deepseek-v4-flash",
		UpstreamModel: "deepseek-v4-flash", Status: 200, Outcome: usage.OutcomeCompleted, PromptTokens: 1000, CacheHitTokens: 600,
		CacheMissTokens: 400, CompletionTokens: 50, UsageSource: usage.SourceReported, Gateway: "test"}
	nc, err := nats.Connect(s.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	data, _ := json.Marshal(ev)
	for i := range 2 {
		if _, err := js.Publish(t.Context(), usage.Subject, data, jetstream.WithMsgID(fmt.Sprintf("%s-copy-%d", ev.ID, i))); err != nil {
			t.Fatal(err)
		}
	}
	extra = totals{Requests: 1, Prompt: 1000, CacheHit: 600, CacheMiss: 400, Completion: 50}
	s.reconcile(t, ch, "(e) the same event delivered twice", extra)

	run("(f) high load, 64 clients for 20 s", 64, func(l *load) { steady(20 * time.Second) })
}
