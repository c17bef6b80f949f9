// Package spool is a bounded, durable, first-in first-out queue of records
// on local disk: where the gateway keeps usage events that could not reach
// NATS JetStream, until they can be replayed.
//
// # Format
//
// A spool is a directory that holds:
//
//   - segment files seg-<16-digit sequence>.log, append-only, oldest first.
//     Each record is one line: the CRC-32C (Castagnoli) of the payload as
//     eight lowercase hex digits, a space, the payload (one JSON document,
//     which never contains a newline) and "\n". A segment is sealed when it
//     reaches Options.SegmentBytes and a new one is started; segments left
//     by an earlier process are sealed at Open and never appended to again.
//   - offset: {"segment":S,"offset":O}, the position of the first record
//     not yet committed, replaced atomically (temporary file, fsync,
//     rename, directory fsync).
//   - LOCK: held with flock(2) while the spool is open, so that two
//     processes never share a directory.
//
// Records are read back with `cut -d' ' -f2- seg-*.log` when need be.
//
// # Durability
//
// Append and Put only hand a record to the writer goroutine, which frames
// records into a batch, writes the batch with one write(2) and fsyncs it:
// group commit. It fsyncs at most once per Options.SyncInterval (5 ms),
// and at once when the batch reaches Options.SyncBytes, so a crash loses at
// most the last few milliseconds of records. A Reader sees a record only
// once it was fsynced. A record torn by a crash (or any other damage) fails
// its checksum; readers skip it, log it and count it, and carry on at the
// next newline.
//
// # Safety
//
// Whoever can write the spool directory can forge usage events (billed to
// any key), delete them, or hold LOCK so that the gateway cannot start.
// Open therefore refuses, with ErrUnsafe, a directory that is a symlink,
// is not owned by the process's effective user or is writable by group or
// others, and a spool file in it that is not a regular file owned by that
// user and closed to writes by others. It creates what is missing with
// mode 0700 (directories) and 0600 (files).
//
// # Bounds
//
// The segment files together never exceed Options.MaxBytes: a record that
// would pass it is dropped and counted (Stats.Dropped), never waited for.
// Segments whose records were all committed are deleted.
package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options' zero fields.
const (
	DefaultMaxBytes       = 1 << 30
	DefaultSyncInterval   = 5 * time.Millisecond
	DefaultSyncBytes      = 1 << 20
	DefaultOffsetInterval = 50 * time.Millisecond
	DefaultQueueLen       = 1 << 16
	// MaxSegmentBytes caps the default segment size; the default is
	// MaxBytes/8 within [64 KiB, 64 MiB].
	MaxSegmentBytes = 64 << 20
	// MaxRecordBytes is the largest payload a spool accepts.
	MaxRecordBytes = 1 << 20
)

// Errors reported to Options.OnDrop, and by Open.
var (
	ErrFull       = errors.New("spool full")
	ErrQueueFull  = errors.New("spool write queue full")
	ErrClosed     = errors.New("spool closed")
	ErrLocked     = errors.New("spool directory is in use by another process")
	ErrBadRecord  = errors.New("record cannot be spooled (empty, too large or contains a newline)")
	errNoSpoolDir = errors.New("spool directory not set")
	errNoLogger   = errors.New("spool logger not set")
)

// Record is what a spool stores: anything that encodes itself as one line
// of JSON. *usage.Event is one.
type Record interface {
	Marshal() ([]byte, error)
}

// Bytes is an already-encoded record.
type Bytes []byte

// Marshal returns b.
func (b Bytes) Marshal() ([]byte, error) { return b, nil }

// Options configure a spool.
type Options struct {
	// Dir is the spool directory; it is created (0700) when missing, and
	// must be owned by the process's user and not writable by others.
	Dir string
	// MaxBytes bounds the segment files together. Default 1 GiB.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is sealed and a new one
	// started. Default MaxBytes/8 within [64 KiB, 64 MiB].
	SegmentBytes int64
	// SyncInterval is the least time between two fsyncs. Default 5 ms.
	SyncInterval time.Duration
	// SyncBytes is the batch size written and fsynced without waiting for
	// SyncInterval. Default 1 MiB.
	SyncBytes int
	// OffsetInterval is the least time between two writes of the offset
	// file while records are being committed. Default 50 ms. A crash
	// replays what was committed since (JetStream drops the duplicates).
	OffsetInterval time.Duration
	// QueueLen is the capacity of the writer's queue. Default 65536.
	QueueLen int
	// Log receives errors and corrupt-record notices. Required.
	Log *slog.Logger
	// OnDrop, when set, is called (from any goroutine) for every record
	// that is dropped, with the reason; otherwise drops are logged.
	OnDrop func(rec Record, err error)
	// Count, when set, tells how many items an encoded record holds (a
	// batch of usage events holds several); the counts in Stats and the n
	// of Commit are in items. Default: every record is one item.
	Count func(payload []byte) int
}

func (o Options) withDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = min(max(o.MaxBytes/8, 64<<10), MaxSegmentBytes)
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.SyncBytes <= 0 {
		o.SyncBytes = DefaultSyncBytes
	}
	if o.OffsetInterval <= 0 {
		o.OffsetInterval = DefaultOffsetInterval
	}
	if o.QueueLen <= 0 {
		o.QueueLen = DefaultQueueLen
	}
	if o.Count == nil {
		o.Count = func([]byte) int { return 1 }
	}
	return o
}

// Stats are a spool's gauges and counters. Everything but Bytes and
// Corrupt counts items (see Options.Count).
type Stats struct {
	Bytes     int64 // size of the segment files
	Pending   int64 // items written and not yet committed
	Appended  int64 // items written since Open
	Committed int64 // items committed since Open
	Dropped   int64 // items lost: spool full, queue full, closed, write errors, corrupt (a damaged record counts one)
	Corrupt   int64 // damaged records skipped by a reader
}

// segment is one segment file. size and sealed are guarded by Spool.mu;
// size counts only fsynced bytes, so readers never see a partial batch.
type segment struct {
	seq    uint64
	size   int64
	sealed bool
}

// Spool is an open spool directory. Its methods are safe for concurrent
// use; one Reader at a time reads it.
type Spool struct {
	o       Options
	log     *slog.Logger
	lock    *os.File
	created bool // Dir did not exist before Open

	in       chan Record
	flushReq chan chan struct{}
	poke     chan struct{} // Commit moved the committed position
	ready    chan struct{} // new records are readable
	closing  chan struct{}
	done     chan struct{}
	stop     sync.Once

	// amu orders Append and Put against Close: once closed is set, no
	// send to in is under way, so the writer's final drain sees them all.
	amu    sync.RWMutex
	closed bool

	mu        sync.Mutex
	segs      []*segment // oldest first; the last one may be the active one
	committed Pos

	// Owned by the writer goroutine.
	active      *os.File
	activeSeg   *segment
	nextSeq     uint64
	batch       []byte
	ends        []int // end of each record in batch
	counts      []int // items of each record in batch
	lastSync    time.Time
	persisted   Pos
	lastPersist time.Time

	bytes, pending, appended, committedN, dropped, corrupt atomic.Int64
}

// Open opens (creating it if need be) the spool in o.Dir, seals what an
// earlier process left there and counts its pending records, and starts
// the writer. Close releases it.
//
// Open refuses (ErrUnsafe) a directory that is a symlink, is not owned by
// the process's effective user or is writable by group or others, and
// likewise a spool file in it (segment, offset, LOCK): whoever can write
// the spool can forge, delete or block usage events. It creates a missing
// directory, and the parents it needs, with mode 0700, and files 0600.
func Open(o Options) (*Spool, error) {
	o = o.withDefaults()
	if o.Dir == "" {
		return nil, errNoSpoolDir
	}
	if o.Log == nil {
		return nil, errNoLogger
	}
	created, err := prepareDir(o.Dir)
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{
		o: o, log: o.Log, lock: lock, created: created,
		in:       make(chan Record, o.QueueLen),
		flushReq: make(chan chan struct{}),
		poke:     make(chan struct{}, 1),
		ready:    make(chan struct{}, 1),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	if err := s.load(); err != nil {
		_ = lock.Close() // the load error is the one to report
		return nil, fmt.Errorf("open spool %s: %w", o.Dir, err)
	}
	go s.run()
	return s, nil
}

// load reads what an earlier process left: segments, the committed
// position, and the number of records not yet committed.
func (s *Spool) load() error {
	entries, err := os.ReadDir(s.o.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == offsetTmp {
			_ = os.Remove(filepath.Join(s.o.Dir, offsetTmp))
			continue
		}
		seq, ok := parseSegName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		s.segs = append(s.segs, &segment{seq: seq, size: info.Size(), sealed: true})
	}
	slices.SortFunc(s.segs, func(a, b *segment) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	committed, err := readOffset(s.o.Dir)
	if err != nil {
		// Replaying from the start re-sends committed records; JetStream
		// drops them as duplicates of their event ids.
		s.log.Warn("usage spool: unreadable offset file; replaying every segment", "dir", s.o.Dir, "err", err)
		committed = Pos{}
	}
	s.committed, s.persisted = committed, committed
	// Segments wholly before the committed position were replayed; a crash
	// came before their deletion.
	for len(s.segs) > 0 && consumed(s.segs[0], committed) {
		_ = os.Remove(filepath.Join(s.o.Dir, segName(s.segs[0].seq)))
		s.segs = s.segs[1:]
	}
	// New segments must sort after the committed position even when every
	// segment is gone, or new records would count as committed.
	s.nextSeq = committed.Seg + 1
	var total int64
	for _, g := range s.segs {
		s.nextSeq = max(s.nextSeq, g.seq+1)
		total += g.size
	}
	s.bytes.Store(total)
	r := &Reader{s: s, pos: committed, quiet: true}
	defer r.Close()
	var n int64
	for {
		e, ok, err := r.Next()
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		if !ok {
			break
		}
		n += int64(e.Count)
	}
	s.pending.Store(n)
	if len(s.segs) > 0 {
		s.log.Info("usage spool: found records from an earlier run; replaying them", "dir", s.o.Dir, "items", n, "bytes", total, "segments", len(s.segs))
	}
	return nil
}

// consumed reports whether every record of g comes before committed.
func consumed(g *segment, committed Pos) bool {
	return g.seq < committed.Seg || (g.seq == committed.Seg && committed.Off >= g.size)
}

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.o.Dir }

// Append hands rec to the writer without blocking. When the writer's
// queue is full, or the spool is closed, rec is dropped (and counted).
// Whether it fits is decided by the writer; a record that would exceed
// MaxBytes is dropped there.
func (s *Spool) Append(rec Record) bool {
	s.amu.RLock()
	defer s.amu.RUnlock()
	if s.closed {
		s.drop(rec, s.countOf(rec), ErrClosed)
		return false
	}
	select {
	case s.in <- rec:
		return true
	default:
		s.drop(rec, s.countOf(rec), ErrQueueFull)
		return false
	}
}

// Put hands rec to the writer, waiting while its queue is full: for
// background goroutines, never for a request.
func (s *Spool) Put(rec Record) bool {
	s.amu.RLock()
	defer s.amu.RUnlock()
	if s.closed {
		s.drop(rec, s.countOf(rec), ErrClosed)
		return false
	}
	s.in <- rec // the writer drains in until Close, which waits for us
	return true
}

// Flush returns once every record handed over before the call is written
// and fsynced (or dropped).
func (s *Spool) Flush() {
	reply := make(chan struct{})
	select {
	case s.flushReq <- reply:
	case <-s.done:
		return
	}
	select {
	case <-reply:
	case <-s.done:
	}
}

// Ready is signalled after new records became readable.
func (s *Spool) Ready() <-chan struct{} { return s.ready }

// Committed returns the position of the first record not yet committed.
func (s *Spool) Committed() Pos {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed
}

// Commit records that the n items before next were delivered. Commits
// must come in order; the position is made durable within
// Options.OffsetInterval, and fully committed segments are deleted.
func (s *Spool) Commit(next Pos, n int) {
	s.mu.Lock()
	if s.committed.Less(next) {
		s.committed = next
	}
	s.mu.Unlock()
	s.pending.Add(-int64(n))
	s.committedN.Add(int64(n))
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Stats returns the spool's gauges and counters.
func (s *Spool) Stats() Stats {
	return Stats{
		Bytes: s.bytes.Load(), Pending: s.pending.Load(), Appended: s.appended.Load(),
		Committed: s.committedN.Load(), Dropped: s.dropped.Load(), Corrupt: s.corrupt.Load(),
	}
}

// Close writes and fsyncs what was handed over, persists the committed
// position, deletes the spool's files when nothing is pending, and
// releases the directory. Later Appends are dropped.
func (s *Spool) Close() error {
	s.stop.Do(func() {
		s.amu.Lock()
		s.closed = true
		s.amu.Unlock()
		close(s.closing)
	})
	<-s.done
	return nil
}

// drop counts and reports rec, of n items, as lost.
func (s *Spool) drop(rec Record, n int, err error) {
	s.dropped.Add(int64(n))
	if s.o.OnDrop != nil {
		s.o.OnDrop(rec, err)
		return
	}
	s.log.Error("spool record dropped", "dir", s.o.Dir, "err", err)
}

func (s *Spool) signalReady() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// locate returns (a copy of) the first segment whose sequence is at least seq.
func (s *Spool) locate(seq uint64) (segment, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.segs {
		if g.seq >= seq {
			return *g, true
		}
	}
	return segment{}, false
}

// run is the writer goroutine: it owns every change to the directory.
func (s *Spool) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case rec := <-s.in:
			s.add(rec)
			s.gather(s.o.SyncBytes)
		case <-s.poke:
		case <-timer.C:
		case reply := <-s.flushReq:
			s.gather(-1)
			s.flush()
			close(reply)
		case <-s.closing:
			s.shutdown()
			return
		}
		// Group commit: write and fsync the batch when it is large, or when
		// the last fsync is SyncInterval old; otherwise wake up then.
		now := time.Now()
		wait := time.Duration(-1)
		if len(s.batch) > 0 {
			if d := s.lastSync.Add(s.o.SyncInterval).Sub(now); d <= 0 || len(s.batch) >= s.o.SyncBytes {
				s.flush()
			} else {
				wait = d
			}
		}
		if s.dirty() {
			if d := s.lastPersist.Add(s.o.OffsetInterval).Sub(now); d <= 0 {
				s.persistAndTrim()
			} else if wait < 0 || d < wait {
				wait = d
			}
		}
		if wait >= 0 {
			timer.Reset(wait)
		}
	}
}

// gather moves queued records into the batch without waiting, until the
// batch holds limit bytes (no limit when negative).
func (s *Spool) gather(limit int) {
	for limit < 0 || len(s.batch) < limit {
		select {
		case rec := <-s.in:
			s.add(rec)
		default:
			return
		}
	}
}

// add frames rec into the batch, sealing the active segment first when
// the record would not fit in it.
func (s *Spool) add(rec Record) {
	payload, err := rec.Marshal()
	if err != nil {
		s.drop(rec, 1, fmt.Errorf("encode record: %w", err))
		return
	}
	n := s.o.Count(payload)
	if len(payload) == 0 || len(payload) > MaxRecordBytes || slices.Contains(payload, '\n') {
		s.drop(rec, n, ErrBadRecord)
		return
	}
	size := int64(len(payload) + frameOverhead)
	if s.bytes.Load()+int64(len(s.batch))+size > s.o.MaxBytes {
		s.drop(rec, n, ErrFull)
		return
	}
	var cur int64
	if s.activeSeg != nil {
		cur = s.activeSeg.size
	}
	if logical := cur + int64(len(s.batch)); logical > 0 && logical+size > s.o.SegmentBytes {
		s.flush()
		s.seal()
	}
	s.batch = appendFrame(s.batch, payload)
	s.ends = append(s.ends, len(s.batch))
	s.counts = append(s.counts, n)
}

// countOf is the items of a record not yet encoded: the writer encodes
// it, so only already-encoded Bytes are counted, and anything else is one.
func (s *Spool) countOf(rec Record) int {
	if b, ok := rec.(Bytes); ok {
		return s.o.Count(b)
	}
	return 1
}

// flush writes the batch to the active segment (created when need be)
// with one write and one fsync, then makes its records readable.
func (s *Spool) flush() {
	if len(s.batch) == 0 {
		return
	}
	start := time.Now()
	defer s.resetBatch()
	if s.active == nil {
		if err := s.create(); err != nil {
			s.log.Error("usage spool: cannot create a segment; records dropped", "dir", s.o.Dir, "records", len(s.ends), "err", err)
			s.dropBatch(0, err)
			return
		}
	}
	seg := s.activeSeg
	n, err := s.active.Write(s.batch)
	if err != nil {
		// Keep the records that made it whole; cut a partial one off so the
		// segment ends on a record boundary, then start a new segment.
		k, _ := slices.BinarySearch(s.ends, n+1)
		good := 0
		if k > 0 {
			good = s.ends[k-1]
		}
		if good < n && s.active.Truncate(seg.size+int64(good)) == nil {
			n = good
		}
		s.log.Error("usage spool: write failed; records dropped, starting a new segment", "dir", s.o.Dir, "records", len(s.ends)-k, "err", err)
		s.dropBatch(k, err)
		s.grow(seg, n, k)
		s.seal()
		return
	}
	if err := s.active.Sync(); err != nil {
		// The data is probably in the page cache; keep counting it, but do
		// not append to a file whose durability is in doubt.
		s.log.Error("usage spool: fsync failed; starting a new segment", "dir", s.o.Dir, "err", err)
		s.grow(seg, n, len(s.ends))
		s.seal()
		return
	}
	s.lastSync = start
	s.grow(seg, n, len(s.ends))
}

// grow makes n more bytes holding k records of seg readable.
func (s *Spool) grow(seg *segment, n, k int) {
	s.mu.Lock()
	seg.size += int64(n)
	s.mu.Unlock()
	s.bytes.Add(int64(n))
	items := 0
	for _, c := range s.counts[:k] {
		items += c
	}
	s.appended.Add(int64(items))
	s.pending.Add(int64(items))
	s.signalReady()
}

// dropBatch drops the batch's records from the k-th on.
func (s *Spool) dropBatch(k int, err error) {
	for i := k; i < len(s.ends); i++ {
		start := 0
		if i > 0 {
			start = s.ends[i-1]
		}
		payload := s.batch[start+9 : s.ends[i]-1]
		s.drop(Bytes(slices.Clone(payload)), s.counts[i], err)
	}
}

func (s *Spool) resetBatch() {
	if cap(s.batch) > 4*s.o.SyncBytes {
		s.batch = nil
	}
	s.batch, s.ends, s.counts = s.batch[:0], s.ends[:0], s.counts[:0]
}

func (s *Spool) create() error {
	seq := s.nextSeq
	s.nextSeq++
	f, err := os.OpenFile(filepath.Join(s.o.Dir, segName(seq)), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := syncDir(s.o.Dir); err != nil {
		s.log.Warn("usage spool: fsync of the directory failed", "dir", s.o.Dir, "err", err)
	}
	g := &segment{seq: seq}
	s.mu.Lock()
	s.segs = append(s.segs, g)
	s.mu.Unlock()
	s.active, s.activeSeg = f, g
	return nil
}

// seal closes the active segment for good; the next write starts a new one.
func (s *Spool) seal() {
	if s.active == nil {
		return
	}
	_ = s.active.Close()
	s.mu.Lock()
	s.activeSeg.sealed = true
	s.mu.Unlock()
	s.active, s.activeSeg = nil, nil
	s.signalReady()
}

func (s *Spool) dirty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed != s.persisted
}

// persistAndTrim makes the committed position durable, then deletes the
// segments it passed, the active one included when it is fully committed.
func (s *Spool) persistAndTrim() {
	s.lastPersist = time.Now()
	c := s.Committed()
	if c != s.persisted {
		if err := writeOffset(s.o.Dir, c); err != nil {
			s.log.Error("usage spool: cannot persist the replay offset", "dir", s.o.Dir, "err", err)
			return
		}
		s.persisted = c
	}
	var gone []*segment
	s.mu.Lock()
	for len(s.segs) > 0 && consumed(s.segs[0], c) && (s.segs[0] != s.activeSeg || len(s.batch) == 0) {
		gone = append(gone, s.segs[0])
		s.segs = s.segs[1:]
	}
	s.mu.Unlock()
	for _, g := range gone {
		if g == s.activeSeg {
			_ = s.active.Close()
			s.active, s.activeSeg = nil, nil
		}
		if err := os.Remove(filepath.Join(s.o.Dir, segName(g.seq))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("usage spool: cannot delete a replayed segment", "dir", s.o.Dir, "segment", g.seq, "err", err)
		}
		s.bytes.Add(-g.size)
	}
}

// shutdown writes what was handed over, persists the offset, and removes
// the spool's files when nothing is left in it.
func (s *Spool) shutdown() {
	s.gather(-1)
	s.flush()
	s.persistAndTrim()
	if s.active != nil {
		_ = s.active.Close()
		s.active, s.activeSeg = nil, nil
	}
	s.mu.Lock()
	empty := len(s.segs) == 0
	s.mu.Unlock()
	if empty {
		_ = os.Remove(filepath.Join(s.o.Dir, offsetName))
		if s.created {
			_ = os.Remove(filepath.Join(s.o.Dir, lockName))
			_ = os.Remove(s.o.Dir) // only when empty
		}
	}
	_ = s.lock.Close()
}
