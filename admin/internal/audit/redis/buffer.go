// Package redis is the Redis side of the audit trail: the stream
// audit.StreamKey that buffers entries until they are in ClickHouse. The key
// store (keys/redis) appends to it in the transaction of each change; Buffer
// reads and trims it for the flusher, and lists what is pending for a
// rebuild.
package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/audit"
)

// Buffer implements audit.Buffer and audit.HistorySource on the stream.
type Buffer struct {
	rdb     goredis.UniversalClient
	timeout time.Duration
}

// New returns a Buffer; timeout bounds each Redis call.
func New(rdb goredis.UniversalClient, timeout time.Duration) *Buffer {
	return &Buffer{rdb: rdb, timeout: timeout}
}

var (
	_ audit.Buffer        = (*Buffer)(nil)
	_ audit.HistorySource = (*Buffer)(nil)
)

// Oldest reads up to n entries from the head of the stream.
func (b *Buffer) Oldest(ctx context.Context, n int) ([]audit.Buffered, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	msgs, err := b.rdb.XRangeN(ctx, audit.StreamKey, "-", "+", int64(n)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read audit buffer: %w", err)
	}
	out := make([]audit.Buffered, 0, len(msgs))
	for _, m := range msgs {
		bf := audit.Buffered{BufferID: m.ID}
		s, ok := m.Values[audit.EntryField].(string)
		if !ok {
			bf.Err = errors.New("no " + audit.EntryField + " field")
		} else {
			bf.Entry, bf.Err = audit.Decode(s)
		}
		out = append(out, bf)
	}
	return out, nil
}

// Delete removes flushed entries.
func (b *Buffer) Delete(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := b.rdb.XDel(ctx, audit.StreamKey, ids...).Err(); err != nil {
		return fmt.Errorf("redis trim audit buffer: %w", err)
	}
	return nil
}

// SetAside copies undecodable entries to audit.DeadKey, then deletes them
// from the buffer (two slots: not atomic, but a repeat only copies again).
func (b *Buffer) SetAside(ctx context.Context, bad []audit.Buffered) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	ids := make([]string, 0, len(bad))
	_, err := b.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, bf := range bad {
			p.XAdd(ctx, &goredis.XAddArgs{Stream: audit.DeadKey, Values: []any{"stream_id", bf.BufferID, "error", bf.Err.Error()}})
			ids = append(ids, bf.BufferID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis set aside audit entries: %w", err)
	}
	return b.Delete(ctx, ids)
}

// Len returns the number of entries waiting.
func (b *Buffer) Len(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	n, err := b.rdb.XLen(ctx, audit.StreamKey).Result()
	if err != nil {
		return 0, fmt.Errorf("redis audit buffer length: %w", err)
	}
	return n, nil
}

// Histories folds the entries still in the buffer (not in ClickHouse yet)
// into key histories, for a rebuild. It reads the stream in pages.
func (b *Buffer) Histories(ctx context.Context) (map[string]audit.History, error) {
	var entries []audit.Entry
	start := "-"
	for {
		cctx, cancel := context.WithTimeout(ctx, b.timeout)
		msgs, err := b.rdb.XRangeN(cctx, audit.StreamKey, start, "+", 1000).Result()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("redis read audit buffer: %w", err)
		}
		for _, m := range msgs {
			if s, ok := m.Values[audit.EntryField].(string); ok {
				if e, err := audit.Decode(s); err == nil {
					entries = append(entries, e)
				}
			}
		}
		if len(msgs) < 1000 {
			return audit.HistoriesOf(entries), nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}
