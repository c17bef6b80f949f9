package app

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/meter/internal/config"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
	"github.com/qyai/qyai/testkit/embednats"
	"github.com/qyai/qyai/testkit/testenv"
)

// env is one test's servers plus the clients the test itself uses: a
// publisher in the gateway's place and a ClickHouse reader in finance's.
type env struct {
	nats, ch *testenv.Server
	// cluster, when set, is the NATS of the test instead of nats.
	cluster *testenv.Cluster
	nc      *nats.Conn
	js      jetstream.JetStream
	db      driver.Conn
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{nats: embednats.Start(t), ch: scripts.ClickHouse(t)}
	var err error
	if e.nc, err = nats.Connect(e.nats.URL, nats.MaxReconnects(-1)); err != nil {
		t.Fatalf("connect to nats: %v", err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	// The gateway ensures the stream too; events may arrive before any meter.
	if _, err := usagejs.EnsureStream(t.Context(), e.js, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("ensure stream: %v", err)
	}
	return e
}

// reader connects to ClickHouse lazily: some tests start with it down.
func (e *env) reader(t *testing.T) driver.Conn {
	t.Helper()
	if e.db == nil {
		conn, err := chschema.Open(t.Context(), chschema.Options{Addr: e.ch.Addr, Database: "qyai", User: "default"})
		if err != nil {
			t.Fatalf("open clickhouse: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		e.db = conn
	}
	return e.db
}

func (e *env) config() config.Config {
	c := config.Default()
	if e.cluster != nil {
		c.NATS.URL = e.cluster.URLs("nats")
		c.NATS.StreamReplicas = len(e.cluster.Nodes)
	} else {
		c.NATS.URL = e.nats.URL
	}
	c.NATS.AckWait = 2 * time.Second
	c.ClickHouse.Addr = e.ch.Addr
	c.Batch.Size = 100
	c.Batch.MaxAge = 50 * time.Millisecond
	c.Batch.DrainTimeout = 5 * time.Second
	// The test events are months old: every hour is closed.
	c.Rollup.Interval = 200 * time.Millisecond
	return c
}

func (e *env) publish(t *testing.T, evs ...usage.Event) {
	t.Helper()
	for _, ev := range evs {
		e.publishAs(t, ev, ev.ID)
	}
}

// publishAs publishes ev with msgID as Nats-Msg-Id: a different id slips
// past JetStream's duplicate window, as a replay after it would.
func (e *env) publishAs(t *testing.T, ev usage.Event, msgID string) {
	t.Helper()
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(t.Context(), usage.Subject, b, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatalf("publish %s: %v", ev.ID, err)
	}
}

// publishBatch publishes evs as one batch message under its batch id, as
// a gateway does.
func (e *env) publishBatch(t *testing.T, evs ...usage.Event) {
	t.Helper()
	raws := make([][]byte, len(evs))
	for i, ev := range evs {
		raws[i] = must(ev.Marshal())
	}
	e.publishEncoded(t, raws, usage.BatchID(evs[0].ID, evs[len(evs)-1].ID, len(evs)))
}

// publishEncoded publishes the encoded events raws, valid or not, as one
// batch message with msgID as Nats-Msg-Id, and returns its stream sequence.
func (e *env) publishEncoded(t *testing.T, raws [][]byte, msgID string) uint64 {
	t.Helper()
	batch := append(append([]byte{'['}, bytes.Join(raws, []byte{','})...), ']')
	ack, err := e.js.Publish(t.Context(), usage.Subject, batch, jetstream.WithMsgID(msgID))
	if err != nil {
		t.Fatalf("publish batch %s: %v", msgID, err)
	}
	return ack.Sequence
}

func (e *env) consumerInfo(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.js.Consumer(t.Context(), usage.StreamName, "meter")
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// meterProc is one in-process meter replica.
type meterProc struct {
	url    string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Serve's result, once done is closed
}

// startMeter runs Serve in a goroutine; it is stopped (gracefully) at the
// end of the test at the latest.
func startMeter(t *testing.T, cfg config.Config, opts Options) *meterProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.Listener = ln
	opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(t.Context())
	m := &meterProc{url: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		m.err = Serve(ctx, cfg, opts)
		close(m.done)
	}()
	t.Cleanup(func() {
		if err := m.stop(); err != nil {
			t.Logf("meter stopped with: %v", err)
		}
	})
	return m
}

// stop cancels the meter (a SIGTERM) and waits for Serve to return.
func (m *meterProc) stop() error {
	m.cancel()
	return m.wait(30 * time.Second)
}

// wait waits for Serve to return by itself.
func (m *meterProc) wait(timeout time.Duration) error {
	select {
	case <-m.done:
		return m.err
	case <-time.After(timeout):
		return fmt.Errorf("meter did not stop within %v", timeout)
	}
}

func (m *meterProc) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, 30*time.Second, "meter ready", func() (bool, string) {
		code, body := get(m.url + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
}

// metric returns the sum of every sample of a Prometheus metric.
func (m *meterProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body := get(m.url + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return metricValue(body, name)
}

func metricValue(body, name string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64)
			sum += v
		}
	}
	return sum
}

func get(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; last state: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// totals is what finance reads: exact sums over usage_events FINAL.
type totals struct {
	Rows                                     uint64
	Prompt, Hit, Miss, Completion, Reasoning uint64
	Cost                                     string // decimal USD, normalised
	Unpriced                                 uint64 // rows with no price version
}

func (a totals) String() string {
	return fmt.Sprintf("rows=%d prompt=%d hit=%d miss=%d completion=%d reasoning=%d cost=%s unpriced=%d",
		a.Rows, a.Prompt, a.Hit, a.Miss, a.Completion, a.Reasoning, a.Cost, a.Unpriced)
}

func (e *env) totals(t *testing.T) (totals, error) {
	t.Helper()
	var s totals
	var cost string
	err := e.reader(t).QueryRow(t.Context(), `
		SELECT count(), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),
		       sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd)),
		       countIf(price_version = '')
		FROM qyai.usage_events FINAL`).
		Scan(&s.Rows, &s.Prompt, &s.Hit, &s.Miss, &s.Completion, &s.Reasoning, &cost, &s.Unpriced)
	if err != nil {
		return s, err
	}
	d, err := decimal.NewFromString(cost)
	if err != nil {
		return s, fmt.Errorf("parse cost %q: %w", cost, err)
	}
	s.Cost = d.String()
	return s, nil
}

// waitTotals polls until the FINAL totals equal want.
func (e *env) waitTotals(t *testing.T, want totals, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "exact totals "+want.String(), func() (bool, string) {
		got, err := e.totals(t)
		if err != nil {
			return false, err.Error()
		}
		return got == want, got.String()
	})
}

// aggregateTotals reads the hourly aggregates alone, each bucket at its
// best ledger run, and counts the buckets that are not clean: with none,
// these totals are what the aggregates say by themselves.
func (e *env) aggregateTotals(t *testing.T) (totals, uint64, error) {
	t.Helper()
	var s totals
	var cost string
	var dirty uint64
	err := e.reader(t).QueryRow(t.Context(), `
		SELECT sum(requests), sum(prompt_tokens), sum(cache_hit_tokens), sum(cache_miss_tokens),
		       sum(completion_tokens), sum(reasoning_tokens), toString(sum(cost_usd)),
		       sumIf(requests, price_version = ''),
		       (SELECT count() FROM qyai.usage_rollup_state WHERE clean = 0)
		FROM qyai.usage_rollup_hourly
		WHERE (key_id, hour, version) IN (
		    SELECT key_id, hour, argMax(version, inserted_rows) FROM qyai.usage_rollup_ledger GROUP BY key_id, hour)`).
		Scan(&s.Rows, &s.Prompt, &s.Hit, &s.Miss, &s.Completion, &s.Reasoning, &cost, &s.Unpriced, &dirty)
	if err != nil {
		return s, 0, err
	}
	d, err := decimal.NewFromString(cost)
	if err != nil {
		return s, 0, fmt.Errorf("parse cost %q: %w", cost, err)
	}
	s.Cost = d.String()
	return s, dirty, nil
}

// waitRolledUp polls until every bucket is clean and the aggregates alone
// equal want: the rollup has caught up, exactly.
func (e *env) waitRolledUp(t *testing.T, want totals, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "aggregates exact "+want.String(), func() (bool, string) {
		got, dirty, err := e.aggregateTotals(t)
		if err != nil {
			return false, err.Error()
		}
		return dirty == 0 && got == want, fmt.Sprintf("%s, %d dirty buckets", got, dirty)
	})
	// The view finance reads agrees.
	var n uint64
	var cost string
	if err := e.reader(t).QueryRow(t.Context(), "SELECT sum(requests), toString(sum(cost_usd)) FROM qyai.usage_hourly").
		Scan(&n, &cost); err != nil {
		t.Fatal(err)
	}
	if n != want.Rows || decimal.RequireFromString(cost).String() != want.Cost {
		t.Errorf("usage_hourly: %d requests, cost %s; want %d, %s", n, cost, want.Rows, want.Cost)
	}
}

// rawRows counts rows without FINAL (duplicates not yet merged included).
func (e *env) rawRows(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := e.reader(t).QueryRow(t.Context(), "SELECT count() FROM qyai.usage_events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

var models = []string{"deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v9-unknown"}

// makeEvents returns n valid events with ids prefix-0 .. prefix-(n-1),
// spread over five keys and the models above (one in five unpriced).
func makeEvents(prefix string, n int) []usage.Event {
	r := rand.New(rand.NewPCG(uint64(len(prefix)), uint64(n)))
	base := time.Date(2026, 3, 15, 10, 0, 0, 0, time.UTC)
	evs := make([]usage.Event, n)
	for i := range evs {
		hit, miss, out := r.Int64N(5000), r.Int64N(5000), r.Int64N(3000)
		started := base.Add(time.Duration(i)*time.Second + 500*time.Millisecond)
		evs[i] = usage.Event{
			SchemaVersion: usage.SchemaVersion,
			ID:            fmt.Sprintf("%s-%d", prefix, i),
			RequestID:     fmt.Sprintf("req-%s-%d", prefix, i),
			StartedAt:     started,
			FinishedAt:    started.Add(1500 * time.Millisecond),
			KeyID:         fmt.Sprintf("key-%d", i%5),
			KeyPrefix:     "sk-abcd",
			Tier:          "pro",
			Model:         models[i%len(models)],
			UpstreamModel: models[i%len(models)], // priced by the upstream model
			Stream:        i%2 == 0,
			Status:        200,
			Outcome:       usage.OutcomeCompleted,
			PromptTokens:  hit + miss, CacheHitTokens: hit, CacheMissTokens: miss,
			CompletionTokens: out, ReasoningTokens: out / 3,
			UsageSource: usage.SourceReported,
			LatencyMs:   1500, TTFTMs: 200,
			Gateway: "gw-test",
		}
	}
	return evs
}

// expected computes the totals of evs straight from the price table.
func expected(t *testing.T, evs ...usage.Event) totals {
	t.Helper()
	versions := pricing.Default().Versions()
	prices := versions[len(versions)-1].Models
	var s totals
	var cost pricing.NanoUSD
	for _, e := range evs {
		s.Rows++
		s.Prompt += uint64(e.PromptTokens)
		s.Hit += uint64(e.CacheHitTokens)
		s.Miss += uint64(e.CacheMissTokens)
		s.Completion += uint64(e.CompletionTokens)
		s.Reasoning += uint64(e.ReasoningTokens)
		p, ok := prices[e.Model]
		if !ok {
			s.Unpriced++
			continue
		}
		cost += pricing.NanoUSD(e.CacheHitTokens)*p.InputCacheHit + pricing.NanoUSD(e.CacheMissTokens)*p.InputCacheMiss +
			pricing.NanoUSD(e.CompletionTokens)*p.Output
	}
	s.Cost = decimal.RequireFromString(cost.String()).String()
	return s
}
