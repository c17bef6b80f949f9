package redis_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/audit"
	auditredis "github.com/qyai/qyai/admin/internal/audit/redis"
	"github.com/qyai/qyai/pkg/apikey"
)

// recordingSink stores what it is given and can be made to fail.
type recordingSink struct {
	mu   sync.Mutex
	got  []audit.Entry
	fail error
}

func (s *recordingSink) Insert(_ context.Context, es []audit.Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.got = append(s.got, es...)
	return nil
}

func entry(t *testing.T, rev uint64) string {
	t.Helper()
	st := audit.State{Record: apikey.Record{ID: "key_0123456789abcdef", Hash: "h", Status: apikey.StatusActive, Models: []string{}}, Revision: rev}
	e, err := audit.NewEntry(time.Now(), "op", audit.ActionUpdate, nil, st)
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFlush: entries go to the sink in order and leave the stream only
// after the sink took them; undecodable entries are set aside instead of
// blocking the flusher.
func TestFlush(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := t.Context()
	add := func(values ...any) {
		t.Helper()
		if err := rdb.XAdd(ctx, &goredis.XAddArgs{Stream: audit.StreamKey, Values: values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for rev := range uint64(5) {
		add(audit.EntryField, entry(t, rev+1))
	}
	add(audit.EntryField, "not json")
	add("other", "field")
	add(audit.EntryField, entry(t, 6))

	buf := auditredis.New(rdb, 2*time.Second)
	sink := &recordingSink{fail: errors.New("clickhouse is down")}
	fl := &audit.Flusher{Buffer: buf, Sink: sink, Log: slog.New(slog.DiscardHandler), Interval: time.Millisecond, Batch: 3}
	if _, err := fl.Flush(ctx); err == nil {
		t.Fatal("Flush with a failing sink: no error")
	}
	if n, _ := buf.Len(ctx); n != 8 {
		t.Fatalf("%d entries left after a failed flush, want all 8", n)
	}
	sink.fail = nil
	n, err := fl.Flush(ctx)
	if err != nil || n != 6 {
		t.Fatalf("Flush = %d, %v; want 6", n, err)
	}
	for i, e := range sink.got {
		if e.Revision != uint64(i+1) {
			t.Errorf("entry %d has revision %d: out of order", i, e.Revision)
		}
	}
	if n, _ := buf.Len(ctx); n != 0 {
		t.Errorf("%d entries left in the stream", n)
	}
	if n, _ := rdb.XLen(ctx, audit.DeadKey).Result(); n != 2 {
		t.Errorf("%d entries set aside, want 2", n)
	}
	if n, err := fl.Flush(ctx); err != nil || n != 0 {
		t.Errorf("Flush of an empty stream = %d, %v", n, err)
	}
}

// TestHistoriesPages: a rebuild reads every pending entry, however many.
func TestHistoriesPages(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := t.Context()
	_, err := rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for rev := range uint64(2500) {
			p.XAdd(ctx, &goredis.XAddArgs{Stream: audit.StreamKey, Values: []any{audit.EntryField, entry(t, rev+1)}})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	hs, err := auditredis.New(rdb, 5*time.Second).Histories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := hs["key_0123456789abcdef"]; len(hs) != 1 || h.Last.Revision != 2500 {
		t.Errorf("histories %d, last revision %d; want 1 and 2500", len(hs), h.Last.Revision)
	}
}
