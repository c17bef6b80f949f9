package spool

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer is a concurrency-safe log sink for assertions on log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func open(t *testing.T, o Options) (*Spool, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(logs, nil))
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() }) // Spool.Close always returns nil: the error is io.Closer's
	return s, logs
}

func rec(i int) Bytes { return Bytes(fmt.Sprintf(`{"id":"ev-%06d","n":%d}`, i, i)) }

func put(t *testing.T, s *Spool, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if !s.Put(rec(i)) {
			t.Fatalf("put %d refused", i)
		}
	}
	s.Flush()
}

// readAll reads every readable entry, committing none.
func readAll(t *testing.T, r *Reader) (recs []string, last Pos, skipped int) {
	t.Helper()
	for {
		e, ok, err := r.Next()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if !ok {
			return recs, last, skipped
		}
		last = e.Next
		if e.Data == nil {
			skipped++
			continue
		}
		recs = append(recs, string(e.Data))
	}
}

func wantRecords(t *testing.T, got []string, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Fatalf("read %d records, want %d", len(got), to-from)
	}
	for i, g := range got {
		if w := string(rec(from + i)); g != w {
			t.Fatalf("record %d = %s, want %s", i, g, w)
		}
	}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, segPrefix+"*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAppendReadInOrder(t *testing.T) {
	s, _ := open(t, Options{Dir: t.TempDir()})
	r := s.NewReader()
	defer r.Close()
	if _, ok, _ := r.Next(); ok {
		t.Fatal("empty spool returned a record")
	}
	put(t, s, 0, 500)
	got, last, skipped := readAll(t, r)
	wantRecords(t, got, 0, 500)
	if skipped != 0 {
		t.Errorf("skipped %d entries in a clean spool", skipped)
	}
	if st := s.Stats(); st.Appended != 500 || st.Pending != 500 || st.Dropped != 0 || st.Bytes == 0 {
		t.Errorf("stats %+v", st)
	}

	// Records appended after the reader caught up follow in order.
	put(t, s, 500, 600)
	select {
	case <-s.Ready():
	default:
		t.Error("Ready not signalled after a flush")
	}
	more, _, _ := readAll(t, r)
	wantRecords(t, more, 500, 600)

	s.Commit(last, 500)
	if st := s.Stats(); st.Pending != 100 || st.Committed != 500 {
		t.Errorf("after commit: %+v", st)
	}
	// Rewind goes back to the committed position.
	r.Rewind()
	again, _, _ := readAll(t, r)
	wantRecords(t, again, 500, 600)
}

func TestConcurrentAppendersKeepEveryRecord(t *testing.T) {
	s, _ := open(t, Options{Dir: t.TempDir(), SegmentBytes: 16 << 10})
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				s.Put(rec(w*each + i))
			}
		})
	}
	wg.Wait()
	s.Flush()
	r := s.NewReader()
	defer r.Close()
	got, _, _ := readAll(t, r)
	seen := map[string]bool{}
	for _, g := range got {
		seen[g] = true
	}
	if len(got) != writers*each || len(seen) != writers*each {
		t.Fatalf("read %d records (%d distinct), want %d", len(got), len(seen), writers*each)
	}
}

func TestSegmentRotationAndDeletion(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Options{Dir: dir, SegmentBytes: 4 << 10, OffsetInterval: time.Millisecond})
	put(t, s, 0, 1000) // about 30 bytes a record: several segments
	files := segFiles(t, dir)
	if len(files) < 5 {
		t.Fatalf("%d segment files, want rotation into at least 5", len(files))
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Size() > 4<<10 {
			t.Errorf("segment %s: size %v, err %v; want at most 4 KiB", f, fi.Size(), err)
		}
	}
	r := s.NewReader()
	defer r.Close()

	// Commit the first half: the segments it covers are deleted.
	var half Pos
	for i := range 500 {
		e, ok, err := r.Next()
		if !ok || err != nil || string(e.Data) != string(rec(i)) {
			t.Fatalf("record %d: %q ok=%v err=%v", i, e.Data, ok, err)
		}
		half = e.Next
	}
	s.Commit(half, 500)
	eventually(t, "replayed segments deleted", func() bool {
		left := segFiles(t, dir)
		return len(left) < len(files) && filepath.Base(left[0]) == segName(half.Seg)
	})

	// Commit everything: every segment goes, and Bytes drops to zero.
	rest, last, _ := readAll(t, r)
	wantRecords(t, rest, 500, 1000)
	s.Commit(last, 500)
	eventually(t, "all segments deleted", func() bool { return len(segFiles(t, dir)) == 0 && s.Stats().Bytes == 0 })
	if st := s.Stats(); st.Pending != 0 {
		t.Errorf("pending %d after committing everything", st.Pending)
	}

	// Appending after the active segment was deleted starts a new one that
	// the reader finds.
	put(t, s, 1000, 1010)
	more, _, _ := readAll(t, r)
	wantRecords(t, more, 1000, 1010)
}

func TestOffsetPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, Options{Dir: dir, SegmentBytes: 4 << 10})
	put(t, s, 0, 300)
	r := s.NewReader()
	var at Pos
	for range 120 {
		e, _, _ := r.Next()
		at = e.Next
	}
	r.Close()
	s.Commit(at, 120)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Put(rec(999)) {
		t.Error("Put after Close accepted")
	}

	s2, _ := open(t, Options{Dir: dir, SegmentBytes: 4 << 10})
	if st := s2.Stats(); st.Pending != 180 {
		t.Fatalf("pending after reopen = %d, want 180", st.Pending)
	}
	if got := s2.Committed(); got != at {
		t.Fatalf("committed after reopen = %+v, want %+v", got, at)
	}
	// New records go to a new segment, after the old ones.
	put(t, s2, 300, 310)
	r2 := s2.NewReader()
	defer r2.Close()
	got, _, _ := readAll(t, r2)
	wantRecords(t, got, 120, 310)
}

func TestCommittedEverythingThenReopen(t *testing.T) {
	// Every segment replayed and deleted: a reopened spool must not give
	// new segments sequence numbers at or below the committed position.
	dir := t.TempDir()
	s, _ := open(t, Options{Dir: dir, OffsetInterval: time.Millisecond})
	put(t, s, 0, 10)
	r := s.NewReader()
	_, last, _ := readAll(t, r)
	r.Close()
	s.Commit(last, 10)
	put(t, s, 10, 11) // keeps the spool non-empty so that Close leaves the offset file
	_ = s.Close()
	if _, err := os.Stat(filepath.Join(dir, offsetName)); err != nil {
		t.Fatalf("offset file: %v", err)
	}
	for _, f := range segFiles(t, dir) { // as if the crash came after the deletion
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	s2, _ := open(t, Options{Dir: dir})
	put(t, s2, 11, 20)
	r2 := s2.NewReader()
	defer r2.Close()
	got, _, _ := readAll(t, r2)
	wantRecords(t, got, 11, 20)
}

func TestDamagedRecordsSkipped(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		want    []int // records read back
		skipped int
	}{
		{name: "torn tail", damage: func(t *testing.T, path string) {
			appendFile(t, path, `1234abcd {"id":"ev-000010","n":`) // a crash mid-write
		}, want: span(0, 10), skipped: 1},
		{name: "zero-filled tail", damage: func(t *testing.T, path string) {
			appendFile(t, path, string(make([]byte, 4096)))
		}, want: span(0, 10), skipped: 1},
		{name: "flipped byte in the middle", damage: func(t *testing.T, path string) {
			b, _ := os.ReadFile(path)
			i := bytes.Index(b, []byte(`"n":4}`))
			b[i+4] = '7'
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: append(span(0, 4), span(5, 10)...), skipped: 1},
		{name: "broken frame and garbage line", damage: func(t *testing.T, path string) {
			b, _ := os.ReadFile(path)
			i := bytes.Index(b, []byte(`{"id":"ev-000002"`))
			b[i-1] = 'x' // the space after the checksum
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			appendFile(t, path, "not a record\n"+string(appendFrame(nil, rec(10))))
		}, want: append(append(span(0, 2), span(3, 10)...), 10), skipped: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := open(t, Options{Dir: dir})
			put(t, s, 0, 10)
			_ = s.Close()
			files := segFiles(t, dir)
			if len(files) != 1 {
				t.Fatalf("%d segments", len(files))
			}
			tc.damage(t, files[0])

			s2, logs := open(t, Options{Dir: dir})
			if st := s2.Stats(); st.Pending != int64(len(tc.want)) {
				t.Errorf("pending %d, want %d", st.Pending, len(tc.want))
			}
			r := s2.NewReader()
			defer r.Close()
			got, last, skipped := readAll(t, r)
			if len(got) != len(tc.want) || skipped != tc.skipped {
				t.Fatalf("read %d records and %d skips, want %d and %d: %q", len(got), skipped, len(tc.want), tc.skipped, got)
			}
			for i, w := range tc.want {
				if got[i] != string(rec(w)) {
					t.Errorf("record %d = %s, want %s", i, got[i], rec(w))
				}
			}
			if st := s2.Stats(); st.Corrupt != int64(tc.skipped) || st.Dropped != int64(tc.skipped) {
				t.Errorf("stats %+v, want %d corrupt", st, tc.skipped)
			}
			if n := strings.Count(logs.String(), "damaged record skipped"); n != tc.skipped {
				t.Errorf("%d damage log lines, want %d:\n%s", n, tc.skipped, logs)
			}
			// Reading again after a rewind reports nothing twice, and
			// committing past the damage lets the segment go.
			r.Rewind()
			readAll(t, r)
			if st := s2.Stats(); st.Corrupt != int64(tc.skipped) {
				t.Errorf("damage counted again after rewind: %+v", st)
			}
			s2.Commit(last, len(got))
			_ = s2.Close()
			if _, err := os.Stat(dir); err == nil && len(segFiles(t, dir)) != 0 {
				t.Errorf("segments left after committing everything: %v", segFiles(t, dir))
			}
		})
	}
}

func TestFullSpoolDropsAndCounts(t *testing.T) {
	var mu sync.Mutex
	var dropped []error
	s, _ := open(t, Options{Dir: t.TempDir(), MaxBytes: 64 << 10, OnDrop: func(_ Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		dropped = append(dropped, err)
	}})
	const n = 5000 // about 150 KB of records for a 64 KiB spool
	put(t, s, 0, n)
	st := s.Stats()
	if st.Bytes > 64<<10 {
		t.Errorf("spool holds %d bytes, bound is %d", st.Bytes, 64<<10)
	}
	if st.Dropped == 0 || st.Appended+st.Dropped != n {
		t.Errorf("appended %d + dropped %d, want %d with some dropped", st.Appended, st.Dropped, n)
	}
	mu.Lock()
	defer mu.Unlock()
	if int64(len(dropped)) != st.Dropped || !errors.Is(dropped[0], ErrFull) {
		t.Errorf("%d drop callbacks (first %v), want %d with ErrFull", len(dropped), dropped[0], st.Dropped)
	}
	// What was kept reads back in order.
	r := s.NewReader()
	defer r.Close()
	got, _, _ := readAll(t, r)
	wantRecords(t, got, 0, int(st.Appended))
}

func TestAppendAfterCloseDrops(t *testing.T) {
	s, _ := open(t, Options{Dir: t.TempDir()})
	_ = s.Close()
	if s.Append(rec(1)) {
		t.Fatal("Append after Close accepted")
	}
	if st := s.Stats(); st.Dropped != 1 {
		t.Errorf("dropped %d, want 1", st.Dropped)
	}
}

func TestBadRecordsDropped(t *testing.T) {
	s, _ := open(t, Options{Dir: t.TempDir()})
	s.Put(Bytes("{\"a\":\n1}"))
	s.Put(Bytes(""))
	s.Put(Bytes(strings.Repeat("x", MaxRecordBytes+1)))
	s.Flush()
	if st := s.Stats(); st.Dropped != 3 || st.Appended != 0 {
		t.Errorf("stats %+v, want 3 dropped", st)
	}
}

func TestDirectoryLocked(t *testing.T) {
	dir := t.TempDir()
	open(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir, Log: slog.New(slog.DiscardHandler)}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

func TestOpenNeedsDirAndLogger(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want error
	}{
		{"no directory", Options{Log: slog.New(slog.DiscardHandler)}, errNoSpoolDir},
		{"no logger", Options{Dir: t.TempDir()}, errNoLogger},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.o)
			if !errors.Is(err, tc.want) {
				if s != nil {
					_ = s.Close()
				}
				t.Fatalf("open: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestEmptySpoolRemovesItsDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, _ := open(t, Options{Dir: dir})
	put(t, s, 0, 3)
	r := s.NewReader()
	_, last, _ := readAll(t, r)
	r.Close()
	s.Commit(last, 3)
	_ = s.Close()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty spool directory left behind: %v", err)
	}

	// A directory the operator made stays, and so does a non-empty spool.
	kept := t.TempDir()
	s2, _ := open(t, Options{Dir: kept})
	put(t, s2, 0, 1)
	_ = s2.Close()
	if len(segFiles(t, kept)) != 1 {
		t.Error("pending records not kept")
	}
}

func appendFile(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		_ = f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func span(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// TestCountsItemsOfRecords: with Options.Count, a record of several items
// (a batch of events) counts them all: written, pending across a reopen,
// in the reader's entries, committed, and dropped.
func TestCountsItemsOfRecords(t *testing.T) {
	items := func(p []byte) int { return bytes.Count(p, []byte(`"id"`)) }
	batch := func(from, n int) Bytes {
		b := []byte{'['}
		for i := range n {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, rec(from+i)...)
		}
		return append(b, ']')
	}
	dir := t.TempDir()
	s, _ := open(t, Options{Dir: dir, Count: items})
	s.Put(rec(0))
	s.Put(batch(1, 5))
	s.Put(batch(6, 3))
	s.Flush()
	if st := s.Stats(); st.Appended != 9 || st.Pending != 9 {
		t.Fatalf("after 1 + 5 + 3 items: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, _ := open(t, Options{Dir: dir, Count: items})
	if st := s2.Stats(); st.Pending != 9 {
		t.Fatalf("pending after reopen = %d, want 9", st.Pending)
	}
	r := s2.NewReader()
	defer r.Close()
	var counts []int
	var last Pos
	for range 2 {
		e, ok, err := r.Next()
		if !ok || err != nil {
			t.Fatalf("next: %v %v", ok, err)
		}
		counts, last = append(counts, e.Count), e.Next
	}
	if counts[0] != 1 || counts[1] != 5 {
		t.Errorf("entry counts %v, want [1 5]", counts)
	}
	s2.Commit(last, 6)
	if st := s2.Stats(); st.Pending != 3 || st.Committed != 6 {
		t.Errorf("after committing 6 items: %+v", st)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s2.Put(batch(9, 4))
	if st := s2.Stats(); st.Dropped != 4 {
		t.Errorf("a 4-item record refused after Close counts %d dropped, want 4", st.Dropped)
	}
}
