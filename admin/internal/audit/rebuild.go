package audit

import (
	"context"
	"fmt"
	"slices"
	"sort"
)

// History is what the audit log knows of one key: its last state and every
// hash it ever had.
type History struct {
	Last   State
	Hashes []string
}

// HistorySource reads key histories: ClickHouse's audit_log, and the Redis
// buffer for entries not flushed yet.
type HistorySource interface {
	Histories(ctx context.Context) (map[string]History, error)
}

// Restorer writes a key's last state into the key store (record, auth entry,
// id set) unless the store holds the same or a newer revision, and removes
// the auth entries of its older hashes.
type Restorer interface {
	Restore(ctx context.Context, last State, oldHashes []string) (restored bool, err error)
}

// RebuildReport says what Rebuild did.
type RebuildReport struct {
	Keys     int // keys found in the audit log
	Restored int // written into the key store
	Current  int // already there with the same or a newer revision
}

// Rebuild restores every key the sources know into r, from its last state
// (highest revision across sources). It never overwrites a newer state, so
// running it twice, or on a Redis that kept part of its data, is safe.
func Rebuild(ctx context.Context, r Restorer, sources ...HistorySource) (RebuildReport, error) {
	merged := map[string]History{}
	for _, src := range sources {
		hs, err := src.Histories(ctx)
		if err != nil {
			return RebuildReport{}, err
		}
		for id, h := range hs {
			merged[id] = Merge(merged[id], h)
		}
	}
	ids := make([]string, 0, len(merged))
	for id := range merged {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rep := RebuildReport{Keys: len(ids)}
	for _, id := range ids {
		h := merged[id]
		var old []string
		for _, hash := range h.Hashes {
			if hash != "" && hash != h.Last.Hash {
				old = append(old, hash)
			}
		}
		ok, err := r.Restore(ctx, h.Last, old)
		if err != nil {
			return rep, fmt.Errorf("restore key %s: %w", id, err)
		}
		if ok {
			rep.Restored++
		} else {
			rep.Current++
		}
	}
	return rep, nil
}

// Merge combines two histories of one key: the later last state and the
// union of hashes.
func Merge(a, b History) History {
	out := a
	if b.Last.Revision > a.Last.Revision {
		out.Last = b.Last
	}
	out.Hashes = slices.Clone(a.Hashes)
	for _, h := range b.Hashes {
		if !slices.Contains(out.Hashes, h) {
			out.Hashes = append(out.Hashes, h)
		}
	}
	sort.Strings(out.Hashes)
	return out
}

// HistoriesOf folds entries into histories.
func HistoriesOf(entries []Entry) map[string]History {
	out := map[string]History{}
	for _, e := range entries {
		h := History{Last: e.After, Hashes: []string{e.After.Hash}}
		if e.Before != nil {
			h.Hashes = append(h.Hashes, e.Before.Hash)
		}
		out[e.KeyID] = Merge(out[e.KeyID], h)
	}
	return out
}
