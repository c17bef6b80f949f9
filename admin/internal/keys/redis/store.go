// Package redis stores key records in Redis with the layout documented in
// pkg/apikey, which the gateway reads:
//
//	qyai:key:{<id>}    the canonical record (SET, JSON)
//	qyai:auth:<hash>   the same record, found from a presented key's hash
//	qyai:keys          set of every key id
//	qyai:keys:changed  pub/sub channel; every change publishes the key id
//
// Every call carries its own timeout. No command touches keys of two hash
// slots, so the store works on a Redis Cluster too: writes that span slots
// are ordered so that a failure half-way leaves a key not working rather
// than working when it should not (fail closed), and a retry repairs it.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/keys"
	"github.com/qyai/qyai/pkg/apikey"
)

// maxAttempts bounds the optimistic retries of Update under concurrent writes.
const maxAttempts = 5

// Store implements keys.Store.
type Store struct {
	rdb     goredis.UniversalClient
	timeout time.Duration
}

// New returns a Store; timeout bounds each Redis round trip.
func New(rdb goredis.UniversalClient, timeout time.Duration) *Store {
	return &Store{rdb: rdb, timeout: timeout}
}

var _ keys.Store = (*Store)(nil)

// Create writes the record, its id, its auth entry and the change
// notification in one pipelined round trip.
func (s *Store) Create(ctx context.Context, rec apikey.Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode key record: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, apikey.RecordKey(rec.ID), b, 0)
		p.SAdd(ctx, apikey.IDsKey(), rec.ID)
		p.Set(ctx, apikey.AuthKey(rec.Hash), b, 0)
		p.Publish(ctx, apikey.ChangedChannel, rec.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis create key: %w", err)
	}
	return nil
}

// Get reads the canonical record.
func (s *Store) Get(ctx context.Context, id string) (apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return decode(s.rdb.Get(ctx, apikey.RecordKey(id)).Bytes())
}

// ByHash reads the record of an auth entry.
func (s *Store) ByHash(ctx context.Context, hash string) (apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return decode(s.rdb.Get(ctx, apikey.AuthKey(hash)).Bytes())
}

// List reads the id set, then every record in one pipelined round trip
// (not MGET: the records live in different hash slots).
func (s *Store) List(ctx context.Context) ([]apikey.Record, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	ids, err := s.rdb.SMembers(cctx, apikey.IDsKey()).Result()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("redis list key ids: %w", err)
	}
	if len(ids) == 0 {
		return []apikey.Record{}, nil
	}
	cctx, cancel = context.WithTimeout(ctx, s.timeout)
	defer cancel()
	cmds := make([]*goredis.StringCmd, len(ids))
	_, err = s.rdb.Pipelined(cctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.Get(cctx, apikey.RecordKey(id))
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis read key records: %w", err)
	}
	recs := make([]apikey.Record, 0, len(ids))
	for _, c := range cmds {
		rec, err := decode(c.Bytes())
		if errors.Is(err, keys.ErrNotFound) {
			continue // an id whose record is gone: nothing to show
		}
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// Update changes a record under WATCH (optimistic locking on the record's
// key, which is in one slot), in this order:
//
//  1. read the current record; let change compute the next one;
//  2. write the next auth entry (unless revoked) and delete the old one when
//     the hash changed or the key is revoked: from here the old key fails;
//  3. commit the record with MULTI/EXEC, which fails if anyone else wrote it
//     since step 1; then the new auth entry is removed and all is retried;
//  4. publish the id so that gateways drop their cached copies.
//
// A crash between 2 and 3 leaves at worst an auth entry for a secret nobody
// was ever shown, and a record whose old key no longer works: fail closed.
func (s *Store) Update(ctx context.Context, id string, change func(*apikey.Record) error) (apikey.Record, error) {
	for range maxAttempts {
		next, err := s.tryUpdate(ctx, id, change)
		if errors.Is(err, goredis.TxFailedErr) {
			continue
		}
		if err != nil {
			return apikey.Record{}, err
		}
		pctx, cancel := context.WithTimeout(ctx, s.timeout)
		err = s.rdb.Publish(pctx, apikey.ChangedChannel, id).Err()
		cancel()
		if err != nil {
			// The change is stored, but gateways may serve from cache until
			// their TTL: report it so that the operator retries.
			return apikey.Record{}, fmt.Errorf("redis publish key change: %w", err)
		}
		return next, nil
	}
	return apikey.Record{}, keys.ErrConflict
}

func (s *Store) tryUpdate(ctx context.Context, id string, change func(*apikey.Record) error) (apikey.Record, error) {
	recordKey := apikey.RecordKey(id)
	var next apikey.Record
	// The whole WATCH ... EXEC exchange is bounded; each call in it too.
	wctx, cancel := context.WithTimeout(ctx, 6*s.timeout)
	defer cancel()
	err := s.rdb.Watch(wctx, func(tx *goredis.Tx) error {
		cctx, cancel := context.WithTimeout(wctx, s.timeout)
		cur, err := decode(tx.Get(cctx, recordKey).Bytes())
		cancel()
		if err != nil {
			return err
		}
		next = cur
		next.Models = slices.Clone(cur.Models)
		if err := change(&next); err != nil {
			return err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode key record: %w", err)
		}
		revoked := next.Status == apikey.StatusRevoked
		cctx, cancel = context.WithTimeout(wctx, s.timeout)
		_, err = s.rdb.Pipelined(cctx, func(p goredis.Pipeliner) error {
			if !revoked {
				p.Set(cctx, apikey.AuthKey(next.Hash), b, 0)
			}
			if revoked || next.Hash != cur.Hash {
				p.Del(cctx, apikey.AuthKey(cur.Hash))
			}
			return nil
		})
		cancel()
		if err != nil {
			return fmt.Errorf("redis write auth entry: %w", err)
		}
		cctx, cancel = context.WithTimeout(wctx, s.timeout)
		_, err = tx.TxPipelined(cctx, func(p goredis.Pipeliner) error {
			p.Set(cctx, recordKey, b, 0)
			return nil
		})
		cancel()
		if err != nil && !revoked && next.Hash != cur.Hash {
			// Not committed: the new secret was never shown; drop its entry.
			dctx, cancel := context.WithTimeout(ctx, s.timeout)
			_ = s.rdb.Del(dctx, apikey.AuthKey(next.Hash)).Err()
			cancel()
		}
		if err != nil && !errors.Is(err, goredis.TxFailedErr) {
			return fmt.Errorf("redis commit key record: %w", err)
		}
		return err
	}, recordKey)
	return next, err
}

func decode(b []byte, err error) (apikey.Record, error) {
	if errors.Is(err, goredis.Nil) {
		return apikey.Record{}, keys.ErrNotFound
	}
	if err != nil {
		return apikey.Record{}, fmt.Errorf("redis read key record: %w", err)
	}
	var rec apikey.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return apikey.Record{}, fmt.Errorf("decode key record: %w", err)
	}
	return rec, nil
}

// MonthlyRequests reads the gateway's monthly counter of the key (see
// apikey.MonthCounterKey); it implements billing.Counter.
func (s *Store) MonthlyRequests(ctx context.Context, keyID, month string) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n, err := s.rdb.Get(ctx, apikey.MonthCounterKey(keyID, month)).Int64()
	if errors.Is(err, goredis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read monthly counter: %w", err)
	}
	return n, true, nil
}
