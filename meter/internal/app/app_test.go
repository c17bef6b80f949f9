package app

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestEndToEnd: events published by "gateways" end up in ClickHouse once
// each, with exact token sums and costs, through two meter replicas sharing
// the durable consumer.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	evs := makeEvents("e2e", 1000)
	e.publish(t, evs[:500]...)

	cfg := e.config()
	m1 := startMeter(t, cfg, Options{})
	m2 := startMeter(t, cfg, Options{})
	m1.waitReady(t)
	m2.waitReady(t)
	if code, _ := get(m1.url + "/healthz"); code != http.StatusOK {
		t.Errorf("healthz = %d", code)
	}
	e.publish(t, evs[500:]...)

	want := expected(t, evs...)
	e.waitTotals(t, want, 30*time.Second)
	e.waitRolledUp(t, want, 30*time.Second)
	if n := e.rawRows(t); n != uint64(len(evs)) {
		t.Errorf("raw rows = %d, want %d: an event was inserted twice without a failure", n, len(evs))
	}
	if want.Unpriced == 0 {
		t.Fatal("test data has no unpriced model")
	}

	// One row read back field by field: seconds precision, UTC, booleans,
	// cost and version.
	var (
		id, key, model, version, cost string
		started, finished             time.Time
		stream                        uint8
		status                        uint16
		prompt, miss                  uint64
		latency                       uint32
		schema                        uint8
	)
	err := e.reader(t).QueryRow(t.Context(), `
		SELECT event_id, key_id, model, price_version, toString(cost_usd), started_at, finished_at,
		       stream, status, prompt_tokens, cache_miss_tokens, latency_ms, schema_version
		FROM qyai.usage_events FINAL WHERE event_id = 'e2e-1'`).
		Scan(&id, &key, &model, &version, &cost, &started, &finished, &stream, &status, &prompt, &miss, &latency, &schema)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[1]
	if key != ev.KeyID || model != ev.Model || version != "2026-01-01" || stream != 0 || status != 200 ||
		prompt != uint64(ev.PromptTokens) || miss != uint64(ev.CacheMissTokens) || latency != 1500 || schema != 1 ||
		!started.Equal(ev.StartedAt.Truncate(time.Second)) || !finished.Equal(ev.FinishedAt.Truncate(time.Second)) {
		t.Errorf("row e2e-1 = %s %s %s %s %s %s %s %d %d %d %d %d %d; event %+v",
			id, key, model, version, cost, started, finished, stream, status, prompt, miss, latency, schema, ev)
	}
	if c := expected(t, ev).Cost; !decimal.RequireFromString(cost).Equal(decimal.RequireFromString(c)) {
		t.Errorf("cost_usd of e2e-1 = %s, want %s", cost, c)
	}
	var unpricedCost string
	if err := e.reader(t).QueryRow(t.Context(),
		"SELECT toString(sum(cost_usd)) FROM qyai.usage_events FINAL WHERE price_version = ''").Scan(&unpricedCost); err != nil {
		t.Fatal(err)
	}
	if !decimal.RequireFromString(unpricedCost).IsZero() {
		t.Errorf("unpriced rows cost %s, want 0", unpricedCost)
	}

	waitFor(t, 10*time.Second, "consumer drained", func() (bool, string) {
		info := e.consumerInfo(t)
		return info.NumPending == 0 && info.NumAckPending == 0, "pending " + itoa(info.NumPending) + " ack pending " + itoa(uint64(info.NumAckPending))
	})
	inserted := m1.metric(t, "meter_events_inserted_total") + m2.metric(t, "meter_events_inserted_total")
	if inserted != float64(len(evs)) {
		t.Errorf("meter_events_inserted_total over both replicas = %v, want %d", inserted, len(evs))
	}
	_, body := get(m1.url + "/metrics")
	for _, name := range []string{"meter_batches_inserted_total", "meter_insert_errors_total", "meter_events_dead_lettered_total",
		"meter_events_unpriced_total", "meter_consumer_pending", "meter_consumer_ack_pending", "meter_insert_duration_seconds"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestClickHouseOutage: ClickHouse stops while events flow; the meter
// retries the batch in hand (keeping it from other replicas) and, once
// ClickHouse is back, the totals are exact.
func TestClickHouseOutage(t *testing.T) {
	e := newEnv(t)
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	evs := makeEvents("outage", 600)
	e.publish(t, evs[:200]...)
	e.waitTotals(t, expected(t, evs[:200]...), 30*time.Second)

	e.ch.Stop(t)
	e.publish(t, evs[200:]...)
	// Seven failed attempts back off for over 6 s, three times AckWait: the
	// batch in hand must stay with this meter (progress reports), not be
	// redelivered.
	waitFor(t, 60*time.Second, "retries while ClickHouse is down", func() (bool, string) {
		n := m.metric(t, "meter_insert_errors_total")
		return n >= 7, "errors " + ftoa(n)
	})
	if info := e.consumerInfo(t); info.NumRedelivered != 0 || info.NumAckPending == 0 {
		t.Errorf("during the outage: %d redelivered, %d ack pending; want 0 redelivered, one batch pending",
			info.NumRedelivered, info.NumAckPending)
	}
	if code, _ := get(m.url + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz with ClickHouse down = %d, want 503", code)
	}
	e.ch.Start(t)
	e.waitTotals(t, expected(t, evs...), 60*time.Second)
	m.waitReady(t)
}

// TestNATSRestart: NATS restarts while the meter runs; the stream, the
// consumer and the backlog survive, and the meter resumes by itself.
func TestNATSRestart(t *testing.T) {
	e := newEnv(t)
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	evs := makeEvents("natsrestart", 300)
	e.publish(t, evs[:100]...)
	e.waitTotals(t, expected(t, evs[:100]...), 20*time.Second)

	e.nats.Stop(t)
	waitFor(t, 10*time.Second, "readyz reports NATS down", func() (bool, string) {
		code, body := get(m.url + "/readyz")
		return code == http.StatusServiceUnavailable, body
	})
	e.nats.Start(t)
	for _, ev := range evs[100:] {
		b, _ := ev.Marshal()
		// The test's own connection reconnects too: retry like a gateway's spool.
		waitFor(t, 20*time.Second, "publish after restart", func() (bool, string) {
			_, err := e.js.Publish(t.Context(), usage.Subject, b, jetstream.WithMsgID(ev.ID))
			return err == nil, fmt.Sprint(err)
		})
	}
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
	m.waitReady(t)
}

// TestStartsBeforeClickHouse: a meter started while ClickHouse is still
// down waits (not ready, but alive) and applies the migrations once it is up.
func TestStartsBeforeClickHouse(t *testing.T) {
	e := newEnv(t)
	e.ch.Stop(t)
	m := startMeter(t, e.config(), Options{})
	evs := makeEvents("late", 150)
	e.publish(t, evs...)
	waitFor(t, 10*time.Second, "healthz", func() (bool, string) {
		code, body := get(m.url + "/healthz")
		return code == http.StatusOK, body
	})
	if code, body := get(m.url + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz before ClickHouse = %d %s, want 503", code, body)
	}
	e.ch.Start(t)
	m.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
}

// TestDuplicateEventCountedOnce: the same event delivered twice (past the
// JetStream duplicate window, or redelivered) is two rows until a merge,
// and always one in FINAL reads.
func TestDuplicateEventCountedOnce(t *testing.T) {
	e := newEnv(t)
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	evs := makeEvents("dup", 3)

	e.publish(t, evs[0])
	waitFor(t, 20*time.Second, "first copy inserted", func() (bool, string) {
		n := m.metric(t, "meter_events_inserted_total")
		return n == 1, ftoa(n)
	})
	e.publishAs(t, evs[0], "replayed-"+evs[0].ID)
	waitFor(t, 20*time.Second, "second copy inserted", func() (bool, string) {
		n := m.metric(t, "meter_events_inserted_total")
		return n == 2, ftoa(n)
	})
	e.waitTotals(t, expected(t, evs[0]), 10*time.Second)

	e.waitRolledUp(t, expected(t, evs[0]), 20*time.Second)

	// Three copies in one burst: collapsed in the batch or by FINAL; and
	// the first event once more, after its hour was rolled up.
	for i, id := range []string{"a", "b", "c"} {
		e.publishAs(t, evs[1], id)
		if i == 0 {
			e.publish(t, evs[2])
		}
	}
	e.publishAs(t, evs[0], "replayed-again-"+evs[0].ID)
	e.waitTotals(t, expected(t, evs...), 20*time.Second)
	e.waitRolledUp(t, expected(t, evs...), 20*time.Second)
}

// TestPoisonMessages: messages that cannot be stored go to USAGE_DLQ with
// their reason and original bytes; the valid ones around them are stored.
func TestPoisonMessages(t *testing.T) {
	e := newEnv(t)
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	evs := makeEvents("poison", 60)
	e.publish(t, evs[:30]...)

	tooLate := evs[0]
	tooLate.ID, tooLate.Status = "bad-status", 99999
	poison := map[string]string{ // payload -> expected reason fragment
		`this is not json`: "invalid usage event",
		`{"v":1,"id":"no-key","started_at":"2026-03-15T10:00:00Z"}`:               "empty key_id",
		`{"v":99,"id":"future","key_id":"k","started_at":"2026-03-15T10:00:00Z"}`: "schema version 99",
		string(must(tooLate.Marshal())):                                           "status 99999",
		// A batch whose array is broken or empty is dead-lettered whole.
		`[{"v":1,"id":"half"`: "batch:",
		` [ ] `:               "empty batch",
	}
	for p := range poison {
		if _, err := e.js.Publish(t.Context(), usage.Subject, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	e.publish(t, evs[30:]...)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)

	dlq, err := e.js.Stream(t.Context(), usagejs.DeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "dead letters stored", func() (bool, string) {
		info, err := dlq.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == uint64(len(poison)), "dlq msgs " + itoa(info.State.Msgs)
	})
	for seq := uint64(1); seq <= uint64(len(poison)); seq++ {
		msg, err := dlq.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		want, ok := poison[string(msg.Data)]
		if !ok {
			t.Errorf("dead letter %d carries unknown data %q", seq, msg.Data)
			continue
		}
		reason := msg.Header.Get(usage.DeadLetterReasonHeader)
		if !strings.Contains(reason, want) {
			t.Errorf("dead letter %q: reason %q, want it to contain %q", msg.Data, reason, want)
		}
		if msg.Header.Get("Qyai-Dead-Letter-Subject") != usage.Subject {
			t.Errorf("dead letter %q: subject header %q", msg.Data, msg.Header.Get("Qyai-Dead-Letter-Subject"))
		}
		if i := msg.Header.Get("Qyai-Dead-Letter-Batch-Index"); i != "" {
			t.Errorf("dead letter %q of a whole message has batch index %q", msg.Data, i)
		}
	}
	waitFor(t, 10*time.Second, "poison terminated, consumer drained", func() (bool, string) {
		info := e.consumerInfo(t)
		return info.NumPending == 0 && info.NumAckPending == 0, "pending " + itoa(info.NumPending) + " ack pending " + itoa(uint64(info.NumAckPending))
	})
	if n := m.metric(t, "meter_events_dead_lettered_total"); n != float64(len(poison)) {
		t.Errorf("meter_events_dead_lettered_total = %v, want %d", n, len(poison))
	}
}

var errCrash = errors.New("simulated crash between insert and ack")

// TestCrashAndRestart: the meter stops after a batch was stored and before
// it was acked (the insert's answer is lost, and the meter is shut down
// while it cannot store anything); a new meter gets the batch again,
// inserts it again, and FINAL totals are still exact.
func TestCrashAndRestart(t *testing.T) {
	e := newEnv(t)
	evs := makeEvents("crash", 500)
	e.publish(t, evs[:250]...)

	var writes, written atomic.Int32
	crashed := make(chan struct{})
	f := &faults{afterInsert: func(rows int) error {
		written.Add(int32(rows))
		switch n := writes.Add(1); {
		case n == 2:
			close(crashed)
			return errCrash
		case n > 2:
			return errCrash
		}
		return nil
	}}
	cfg := e.config()
	cfg.Batch.DrainTimeout = 500 * time.Millisecond
	m1 := startMeter(t, cfg, Options{OpenClickHouse: f.open})
	select {
	case <-crashed:
	case <-time.After(30 * time.Second):
		t.Fatal("the first meter never stored a second batch")
	}
	if err := m1.stop(); err != nil {
		t.Fatalf("first meter stopped with %v", err)
	}
	e.publish(t, evs[250:]...)

	m2 := startMeter(t, cfg, Options{})
	m2.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
	e.waitRolledUp(t, expected(t, evs...), 30*time.Second)
	waitFor(t, 10*time.Second, "consumer drained", func() (bool, string) {
		info := e.consumerInfo(t)
		return info.NumPending == 0 && info.NumAckPending == 0, "pending " + itoa(info.NumPending) + " ack pending " + itoa(uint64(info.NumAckPending))
	})
	// The crashed batch was written by both meters: rows were inserted
	// more often than there are events, and FINAL still counts each once.
	if total := int(written.Load()) + int(m2.metric(t, "meter_events_inserted_total")); total <= len(evs) {
		t.Errorf("rows written %d times for %d events: the crash did not happen between insert and ack", total, len(evs))
	}
}

// TestRollupCrashAndRestart: a meter whose every rollup run dies between
// its aggregate insert and its ledger write leaves only rows no reader
// uses; events are redelivered across the restart (past the duplicate
// window); the next meter rolls everything up and the aggregates alone
// equal the distinct events.
func TestRollupCrashAndRestart(t *testing.T) {
	e := newEnv(t)
	evs := makeEvents("rollcrash", 400)
	e.publish(t, evs[:300]...)
	var crashes atomic.Int32
	cfg := e.config()
	f := &faults{beforeLedger: func() error {
		crashes.Add(1)
		return errRollupCrash
	}}
	m1 := startMeter(t, cfg, Options{OpenClickHouse: f.open})
	m1.waitReady(t)
	e.waitTotals(t, expected(t, evs[:300]...), 30*time.Second)
	waitFor(t, 20*time.Second, "rollup runs crashed", func() (bool, string) {
		return crashes.Load() >= 2, fmt.Sprint(crashes.Load())
	})
	var orphans uint64
	if err := e.reader(t).QueryRow(t.Context(), "SELECT count() FROM qyai.usage_rollup_hourly").Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans == 0 {
		t.Fatal("no aggregate rows written before the crashes: the crash window was not exercised")
	}
	if m := m1.metric(t, "meter_rollup_errors_total"); m < 1 {
		t.Errorf("meter_rollup_errors_total = %v after crashed runs", m)
	}
	// The view ignores the unconfirmed rows.
	var n uint64
	if err := e.reader(t).QueryRow(t.Context(), "SELECT sum(requests) FROM qyai.usage_hourly").Scan(&n); err != nil || n != 300 {
		t.Fatalf("usage_hourly counts %d requests (%v), want 300", n, err)
	}
	if err := m1.stop(); err != nil {
		t.Fatal(err)
	}

	for _, ev := range evs[:150] {
		e.publishAs(t, ev, "replay-"+ev.ID)
	}
	e.publish(t, evs[300:]...)
	m2 := startMeter(t, cfg, Options{})
	m2.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
	e.waitRolledUp(t, expected(t, evs...), 30*time.Second)
	if m := m2.metric(t, "meter_rollup_buckets_total"); m < 1 {
		t.Errorf("meter_rollup_buckets_total = %v", m)
	}
}

var errRollupCrash = errors.New("simulated crash between the aggregate insert and the ledger write")

// TestGracefulShutdownFlushes: batches the meter holds when it is told to
// stop, one written but not yet acked and one waiting behind it, are stored
// and acked before it exits instead of being left for redelivery.
func TestGracefulShutdownFlushes(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.NATS.AckWait = 30 * time.Second // a redelivery by timeout would hide a missing ack
	held, shutdown := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f := &faults{afterInsert: func(int) error {
		once.Do(func() { close(held) })
		<-shutdown // keep the batch, written and unacked, until shutdown begins
		return nil
	}}
	m := startMeter(t, cfg, Options{OpenClickHouse: f.open})
	m.waitReady(t)
	evs := makeEvents("graceful", 120) // more than one batch of 100
	e.publish(t, evs...)
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the meter never wrote a batch")
	}
	waitFor(t, 10*time.Second, "every event in the meter's hands", func() (bool, string) {
		info := e.consumerInfo(t)
		return info.NumAckPending == len(evs), "ack pending " + itoa(uint64(info.NumAckPending))
	})
	m.cancel()
	close(shutdown)
	if err := m.wait(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	got, err := e.totals(t)
	if err != nil {
		t.Fatal(err)
	}
	if want := expected(t, evs...); got != want {
		t.Errorf("totals right after shutdown = %s, want %s", got, want)
	}
	if info := e.consumerInfo(t); info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("after shutdown: %d ack pending, %d pending; want all acked", info.NumAckPending, info.NumPending)
	}
}

// TestShutdownWhileClickHouseDown: a meter stopped while it cannot insert
// gives its batch back after DrainTimeout (not after AckWait), and the next
// meter stores it.
func TestShutdownWhileClickHouseDown(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.NATS.AckWait = time.Minute // a redelivery by timeout would fail the test's deadline
	cfg.Batch.DrainTimeout = time.Second
	m := startMeter(t, cfg, Options{})
	m.waitReady(t)
	e.ch.Stop(t)
	evs := makeEvents("drain", 50)
	e.publish(t, evs...)
	waitFor(t, 20*time.Second, "insert failing", func() (bool, string) {
		n := m.metric(t, "meter_insert_errors_total")
		return n > 0, ftoa(n)
	})
	start := time.Now()
	if err := m.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %v with a 1s drain timeout", d)
	}
	// The batch was naked: the next meter gets it at once, well before
	// the one-minute AckWait (a nak leaves it counted as ack-pending until
	// it is redelivered, so the totals are the proof).
	e.ch.Start(t)
	m2 := startMeter(t, cfg, Options{})
	m2.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 20*time.Second)
}

func TestRunValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{name: "defaults are valid", env: map[string]string{}},
		{name: "bad batch size", env: map[string]string{"METER_BATCH_SIZE": "0"}, wantErr: "batch: METER_BATCH_SIZE"},
		{name: "unparsable and invalid together", env: map[string]string{"METER_BATCH_MAX_AGE": "soon", "STREAM_REPLICAS": "0"},
			wantErr: "METER_BATCH_MAX_AGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"METER_BATCH_SIZE", "METER_BATCH_MAX_AGE", "STREAM_REPLICAS"} {
				t.Setenv(k, tc.env[k])
			}
			var stderr bytes.Buffer
			err := Run(t.Context(), []string{"--validate"}, &stderr)
			if tc.wantErr == "" {
				if err != nil || !strings.Contains(stderr.String(), "configuration is valid") {
					t.Fatalf("Run --validate = %v, stderr %q", err, stderr.String())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run --validate = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func itoa(n uint64) string  { return strconv.FormatUint(n, 10) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
