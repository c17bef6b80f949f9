package app

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestBatchMessages: batch messages of 2 to 64 events, mixed with
// single-event messages, are stored one row per event with exact totals;
// an event that two different messages carry (a single one and a batch,
// two batches) is stored once.
func TestBatchMessages(t *testing.T) {
	e := newEnv(t)
	evs := makeEvents("batch", 300)
	// Published before the meter starts, so that every message (fewer
	// than a fetch's 100) arrives in one fetch and the copies meet there.
	e.publish(t, evs[:10]...)
	sizes := []int{2, 64, 5, 33, 17}
	messages := 10
	for i, n := 10, 0; i < 290; i, n = i+sizes[n%len(sizes)], n+1 {
		e.publishBatch(t, evs[i:min(i+sizes[n%len(sizes)], 290)]...)
		messages++
	}
	e.publish(t, evs[290:]...)
	e.publishBatch(t, evs[3], evs[150], evs[299]) // three copies
	if messages += 11; messages > e.config().Batch.Size {
		t.Fatalf("%d messages do not fit one fetch", messages)
	}

	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
	waitFor(t, 10*time.Second, "consumer drained", func() (bool, string) {
		info := e.consumerInfo(t)
		return info.NumPending == 0 && info.NumAckPending == 0, "pending " + itoa(info.NumPending) + " ack pending " + itoa(uint64(info.NumAckPending))
	})
	if n := e.rawRows(t); n != uint64(len(evs)) {
		t.Errorf("raw rows = %d, want %d: a copy was inserted", n, len(evs))
	}
	for name, want := range map[string]float64{
		"meter_events_inserted_total":      float64(len(evs)),
		"meter_events_duplicates_total":    3,
		"meter_events_dead_lettered_total": 0,
	} {
		if got := m.metric(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// poisonBatch returns a batch of two valid events with two poison ones
// between them (at indexes 1 and 3), and the reason each poison one must
// be dead-lettered with.
func poisonBatch(prefix string) (raws [][]byte, reasons map[int]string, good []usage.Event) {
	good = makeEvents(prefix, 2)
	tooLate := good[0]
	tooLate.ID, tooLate.Status = prefix+"-bad-status", 99999
	raws = [][]byte{
		must(good[0].Marshal()),
		[]byte(`{"v":1,"id":"no-key","started_at":"2026-03-15T10:00:00Z"}`),
		must(good[1].Marshal()),
		must(tooLate.Marshal()),
	}
	return raws, map[int]string{1: "empty key_id", 3: "status 99999"}, good
}

// checkBatchDeadLetters checks that the dead-letter stream holds exactly
// one dead letter per poison event of the batch raws at stream sequence
// seq, each with its own bytes, reason, index and message id.
func (e *env) checkBatchDeadLetters(t *testing.T, raws [][]byte, reasons map[int]string, seq uint64) {
	t.Helper()
	dlq, err := e.js.Stream(t.Context(), usagejs.DeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "dead letters stored", func() (bool, string) {
		info, err := dlq.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == uint64(len(reasons)), "dlq msgs " + itoa(info.State.Msgs)
	})
	found := map[int]bool{}
	for dseq := uint64(1); dseq <= uint64(len(reasons)); dseq++ {
		msg, err := dlq.GetMsg(t.Context(), dseq)
		if err != nil {
			t.Fatal(err)
		}
		i, err := strconv.Atoi(msg.Header.Get("Qyai-Dead-Letter-Batch-Index"))
		want, ok := reasons[i]
		if err != nil || !ok || found[i] {
			t.Errorf("dead letter %q: batch index %q (%v), want one of %v, each once", msg.Data,
				msg.Header.Get("Qyai-Dead-Letter-Batch-Index"), err, reasons)
			continue
		}
		found[i] = true
		if !bytes.Equal(msg.Data, raws[i]) {
			t.Errorf("dead letter of index %d carries %q, want the event %q", i, msg.Data, raws[i])
		}
		if reason := msg.Header.Get(usage.DeadLetterReasonHeader); !strings.Contains(reason, want) {
			t.Errorf("dead letter of index %d: reason %q, want it to contain %q", i, reason, want)
		}
		if got := msg.Header.Get("Qyai-Dead-Letter-Stream-Sequence"); got != itoa(seq) {
			t.Errorf("dead letter of index %d: stream sequence %q, want %d", i, got, seq)
		}
		if got := msg.Header.Get("Qyai-Dead-Letter-Subject"); got != usage.Subject {
			t.Errorf("dead letter of index %d: subject header %q", i, got)
		}
		if got, want := msg.Header.Get(jetstream.MsgIDHeader), fmt.Sprintf("%s-%d-%d", usage.StreamName, seq, i); got != want {
			t.Errorf("dead letter of index %d: message id %q, want %q", i, got, want)
		}
	}
}

// waitUsageEmpty waits until the consumer has acked everything and so the
// work-queue stream USAGE holds nothing.
func (e *env) waitUsageEmpty(t *testing.T) {
	t.Helper()
	usageStream, err := e.js.Stream(t.Context(), usage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "USAGE stream empty", func() (bool, string) {
		info, err := usageStream.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == 0, "usage msgs " + itoa(info.State.Msgs)
	})
}

// TestPoisonEventsInBatch: the poison events of a batch are dead-lettered
// one by one, with their index; its valid events are stored once and the
// message is acked, not terminated whole.
func TestPoisonEventsInBatch(t *testing.T) {
	e := newEnv(t)
	raws, reasons, good := poisonBatch("pbatch")
	seq := e.publishEncoded(t, raws, usage.BatchID(good[0].ID, "pbatch-bad-status", len(raws)))
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)

	e.checkPoisonBatchStored(t, m, raws, reasons, good, seq)
}

// checkPoisonBatchStored waits until the poison batch raws (at stream
// sequence seq) is settled: its good events stored once each, one dead
// letter per poison event, USAGE empty, and every dead letter counted once
// (a redelivery re-publishes only duplicates).
func (e *env) checkPoisonBatchStored(t *testing.T, m *meterProc, raws [][]byte, reasons map[int]string, good []usage.Event, seq uint64) {
	t.Helper()
	e.waitTotals(t, expected(t, good...), 30*time.Second)
	e.checkBatchDeadLetters(t, raws, reasons, seq)
	e.waitUsageEmpty(t)
	if n := e.rawRows(t); n != uint64(len(good)) {
		t.Errorf("raw rows = %d, want %d", n, len(good))
	}
	if n := m.metric(t, "meter_events_dead_lettered_total"); n != float64(len(reasons)) {
		t.Errorf("meter_events_dead_lettered_total = %v, want %d", n, len(reasons))
	}
}

// TestBatchDeadLetterFailureRedelivers: when the dead letter of one poison
// event of a batch cannot be stored (USAGE_DLQ is full) after another one
// was, the batch stores nothing and is handed back; once the dead letters
// fit, its redelivery stores the valid events, and the dead letter already
// published is not published twice.
func TestBatchDeadLetterFailureRedelivers(t *testing.T) {
	e := newEnv(t)
	m := startMeter(t, e.config(), Options{})
	m.waitReady(t)
	dlq, err := e.js.Stream(t.Context(), usagejs.DeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	setMaxMsgs := func(n int64) {
		t.Helper()
		info, err := dlq.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		info.Config.MaxMsgs = n
		if _, err := e.js.UpdateStream(t.Context(), info.Config); err != nil {
			t.Fatalf("update %s: %v", usagejs.DeadLetterStreamName, err)
		}
	}
	setMaxMsgs(1) // room for the first dead letter only (DiscardNew refuses the second)

	raws, reasons, good := poisonBatch("dlqfull")
	seq := e.publishEncoded(t, raws, usage.BatchID(good[0].ID, "dlqfull-bad-status", len(raws)))
	waitFor(t, 20*time.Second, "dead-letter publish failing", func() (bool, string) {
		n := m.metric(t, "meter_dead_letter_errors_total")
		return n >= 1, ftoa(n)
	})
	if n := m.metric(t, "meter_events_inserted_total"); n != 0 {
		t.Errorf("meter_events_inserted_total = %v while the batch's dead letters fail, want 0", n)
	}
	if n := e.rawRows(t); n != 0 {
		t.Errorf("raw rows = %d while the batch's dead letters fail, want 0", n)
	}

	setMaxMsgs(-1)
	e.checkPoisonBatchStored(t, m, raws, reasons, good, seq)
}

// TestBatchesBeyondAnInsert: with METER_BATCH_SIZE below the events of a
// few batch messages, the meter still takes them (a fetch sized by the
// events per message of the last one) and writes at most that many rows
// per insert: every event stored once, in at least events/size inserts.
func TestBatchesBeyondAnInsert(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.Batch.Size = 50
	evs := makeEvents("wide", 10*usage.MaxBatch)
	for i := 0; i < len(evs); i += usage.MaxBatch {
		e.publishBatch(t, evs[i:i+usage.MaxBatch]...)
	}
	m := startMeter(t, cfg, Options{})
	m.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
	e.waitUsageEmpty(t)
	if n := e.rawRows(t); n != uint64(len(evs)) {
		t.Errorf("raw rows = %d, want %d", n, len(evs))
	}
	if got, least := m.metric(t, "meter_batches_inserted_total"), float64((len(evs)+cfg.Batch.Size-1)/cfg.Batch.Size); got < least {
		t.Errorf("%v inserts for %d events at most %d each; want at least %v", got, len(evs), cfg.Batch.Size, least)
	}
	if got := m.metric(t, "meter_events_inserted_total"); got != float64(len(evs)) {
		t.Errorf("meter_events_inserted_total = %v, want %d", got, len(evs))
	}
}
