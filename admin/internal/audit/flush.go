package audit

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Buffered is one entry read from the buffer. Err is set when the stored
// form cannot be decoded.
type Buffered struct {
	// BufferID identifies the entry in the buffer (the Redis stream id).
	BufferID string
	Entry    Entry
	Err      error
}

// Buffer is where entries wait for ClickHouse (the Redis stream).
type Buffer interface {
	// Oldest returns up to n entries, oldest first.
	Oldest(ctx context.Context, n int) ([]Buffered, error)
	// Delete removes flushed entries.
	Delete(ctx context.Context, bufferIDs []string) error
	// SetAside moves undecodable entries out of the way.
	SetAside(ctx context.Context, bad []Buffered) error
}

// Sink stores entries durably. Insert must be idempotent per entry id
// (audit_log collapses copies).
type Sink interface {
	Insert(ctx context.Context, entries []Entry) error
}

// Flusher moves entries from a Buffer to a Sink: insert first, delete from
// the buffer after, so that a crash in between repeats an insert (harmless)
// and never loses an entry. Several admin replicas may flush at once: they
// may insert the same entry twice, which the sink collapses.
type Flusher struct {
	Buffer   Buffer
	Sink     Sink
	Log      *slog.Logger
	Interval time.Duration // between flushes when the buffer was empty
	Batch    int           // entries per insert
}

// ErrSinkNotReady may be returned by a Sink that is not connected yet; the
// flusher then waits quietly instead of logging a warning.
var ErrSinkNotReady = errors.New("audit sink not ready")

// Run flushes every Interval until ctx ends, backing off (up to 30 s) while
// the buffer or the sink fails. It makes one last attempt when ctx ends, so
// that a clean shutdown leaves nothing behind when ClickHouse is up.
func (f *Flusher) Run(ctx context.Context, final time.Duration) {
	wait := f.Interval
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), final)
			if n, err := f.Flush(fctx); err != nil {
				f.Log.Warn("audit entries left in the redis buffer at shutdown", "flushed", n, "err", err)
			}
			cancel()
			return
		case <-time.After(wait):
		}
		n, err := f.Flush(ctx)
		switch {
		case err == nil:
			wait = f.Interval
		case ctx.Err() != nil:
		case errors.Is(err, ErrSinkNotReady):
			wait = f.Interval
		default:
			wait = min(max(2*wait, f.Interval), 30*time.Second)
			f.Log.Warn("audit flush failed; entries stay in the redis buffer", "flushed", n, "err", err, "retry_in", wait)
		}
	}
}

// Flush moves entries until the buffer is empty and returns how many it
// moved.
func (f *Flusher) Flush(ctx context.Context) (int, error) {
	batch := max(f.Batch, 1)
	total := 0
	for {
		got, err := f.Buffer.Oldest(ctx, batch)
		if err != nil {
			return total, err
		}
		if len(got) == 0 {
			return total, nil
		}
		var (
			good    []Entry
			goodIDs []string
			bad     []Buffered
		)
		for _, b := range got {
			if b.Err != nil {
				bad = append(bad, b)
				continue
			}
			good = append(good, b.Entry)
			goodIDs = append(goodIDs, b.BufferID)
		}
		if len(bad) > 0 {
			for _, b := range bad {
				f.Log.Error("undecodable audit entry moved to "+DeadKey, "stream_id", b.BufferID, "err", b.Err)
			}
			if err := f.Buffer.SetAside(ctx, bad); err != nil {
				return total, err
			}
		}
		if len(good) > 0 {
			if err := f.Sink.Insert(ctx, good); err != nil {
				return total, err
			}
			if err := f.Buffer.Delete(ctx, goodIDs); err != nil {
				return total, err
			}
			total += len(good)
		}
		if len(got) < batch {
			return total, nil
		}
	}
}
