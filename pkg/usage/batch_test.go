package usage

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestBatchRoundTrip: the events of a batch come back from Split byte for
// byte and in order, decode to what was encoded, and Count agrees; one
// event is a message of its own.
func TestBatchRoundTrip(t *testing.T) {
	start := time.Date(2026, 12, 3, 1, 2, 3, 0, time.UTC)
	var enc [][]byte
	var want []Event
	m, alone := NewMessage(3), NewMessage(1)
	for i := range 3 {
		e := Event{SchemaVersion: SchemaVersion, ID: fmt.Sprintf("ev-%d", i), KeyID: "key_1", StartedAt: start,
			Model: "deepseek-chat", RequestID: "quote\" <&> \u2028", PromptTokens: int64(10 + i), Outcome: OutcomeCompleted}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		enc, want = append(enc, b), append(want, e)
		if err := m.Add(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := alone.Add(&want[1]); err != nil {
		t.Fatal(err)
	}
	msg, id := m.Bytes()
	if m.Len() != 3 || id != BatchID("ev-0", "ev-2", 3) {
		t.Errorf("batch of %d under id %q, want 3 under %q", m.Len(), id, BatchID("ev-0", "ev-2", 3))
	}
	if one, oneID := alone.Bytes(); !bytes.Equal(one, enc[1]) || oneID != "ev-1" {
		t.Errorf("one event: %s under id %q, want the event alone under its id", one, oneID)
	}
	if !IsBatch(msg) || IsBatch(enc[0]) {
		t.Fatalf("IsBatch: batch %v, one event %v", IsBatch(msg), IsBatch(enc[0]))
	}
	if bytes.Contains(msg, []byte{'\n'}) {
		t.Fatal("a batch must fit on one spool line")
	}
	got, err := Split(msg)
	if err != nil || len(got) != 3 {
		t.Fatalf("Split: %d events, %v", len(got), err)
	}
	for i, g := range got {
		if !bytes.Equal(g, enc[i]) {
			t.Errorf("event %d: got %s, want %s", i, g, enc[i])
		}
		e, err := Decode(g)
		if err != nil || e.ID != want[i].ID || e.PromptTokens != want[i].PromptTokens || e.RequestID != want[i].RequestID {
			t.Errorf("event %d decodes to %+v, %v", i, e, err)
		}
	}
	if n := Count(msg); n != 3 {
		t.Errorf("Count(batch) = %d, want 3", n)
	}
	if one, err := Split(enc[1]); err != nil || len(one) != 1 || !bytes.Equal(one[0], enc[1]) || Count(enc[1]) != 1 {
		t.Errorf("one event: Split %q, %v; Count %d", one, err, Count(enc[1]))
	}
}

// TestSplitRefusesBadBatches: an empty or malformed array is invalid as a
// whole (and still counts as one record, so that a damaged spool record is
// accounted for).
func TestSplitRefusesBadBatches(t *testing.T) {
	for _, in := range []string{`[]`, ` [ ]`, `[{"v":1}`, `[{"v":1},]`, `[1,`} {
		if _, err := Split([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Split(%q) = %v, want ErrInvalid", in, err)
		}
		if n := Count([]byte(in)); n != 1 {
			t.Errorf("Count(%q) = %d, want 1", in, n)
		}
	}
	if _, err := Split([]byte(`[]`)); !errors.Is(err, ErrEmptyBatch) {
		t.Errorf("Split([]) = %v, want ErrEmptyBatch", err)
	}
}

// TestBatchID: the id names the batch by its size and its first and last
// events, so copies agree and different batches differ.
func TestBatchID(t *testing.T) {
	a := BatchID("e1", "e9", 9)
	if a != BatchID("e1", "e9", 9) {
		t.Fatal("BatchID is not deterministic")
	}
	for _, b := range []string{BatchID("e1", "e8", 8), BatchID("e2", "e9", 8), BatchID("e1", "e9", 2)} {
		if a == b {
			t.Errorf("two batches share the id %q", a)
		}
	}
}
