// Package redis stores key records in Redis with the layout documented in
// pkg/apikey, which the gateway reads:
//
//	qyai:key:{<id>}    the canonical record (SET, JSON)
//	qyai:auth:<hash>   the same record, found from a presented key's hash
//	qyai:keys          set of every key id
//	qyai:keys:changed  pub/sub channel; every change publishes the key id
//	qyai:audit         stream of audit entries waiting for ClickHouse (package audit)
//
// Records are audit.State: the apikey.Record plus a "revision" (1 at create,
// +1 per committed change; the gateway ignores it). Auth entries carry the
// revision too, and every write of an auth entry goes through a script that
// refuses to replace a newer revision with an older one; a revoked key's
// entry and the entry of a replaced hash are tombstones (status revoked,
// expiring after an hour) rather than deletions, so that a delayed write of
// an older state cannot bring a revoked or rotated-out key back to life.
//
// Every call carries its own timeout. No command touches keys of two hash
// slots, so the store works on a Redis Cluster too. On one Redis server the
// record and its audit entry are written in one MULTI/EXEC, so a change is
// never stored without its audit entry; on a cluster they live in different
// slots and the entry is appended right after the commit (a crash in that
// instant loses the entry, not the change). Auth entries live in other
// slots than the record: a weakening write (revoke, disable, the old hash of
// a rotation) is made before the record commits (at the current revision,
// see weakening) and again after it, a strengthening one (enable, new
// limits) only after, so a failure half-way leaves a key not working rather
// than working when it should not, and a retry repairs it.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/audit"
	"github.com/qyai/qyai/admin/internal/keys"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/redisretry"
)

// maxAttempts bounds the optimistic retries of Update under concurrent writes.
const maxAttempts = 5

// TombstoneTTL is how long the tombstone of a revoked key or a replaced hash
// stays. It only has to outlive any admin request still in flight.
const TombstoneTTL = time.Hour

// setIfNewer writes a revisioned JSON value unless the stored one has a
// higher revision (KEYS[1]; ARGV: value, revision, ttl ms or 0, and "1" to
// also refuse an equal revision). It returns 1 when it wrote. A value
// without a revision (written before revisions existed) counts as 0.
var setIfNewer = goredis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and type(rec['revision']) == 'number' then
    local rev = tonumber(ARGV[2])
    if rec['revision'] > rev or (ARGV[4] == '1' and rec['revision'] == rev) then
      return 0
    end
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
`)

// raiseCounter sets a counter to ARGV[1] unless it is already higher, and
// expires it at ARGV[2] (Unix seconds). It returns 1 when it wrote.
var raiseCounter = goredis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
`)

// Store implements keys.Store.
type Store struct {
	rdb     goredis.UniversalClient
	timeout time.Duration
	// cluster is true on a Redis Cluster, where one transaction cannot hold
	// both a record and the audit stream.
	cluster bool
}

// New returns a Store; timeout bounds each Redis round trip.
func New(rdb goredis.UniversalClient, timeout time.Duration) *Store {
	_, cluster := rdb.(*goredis.ClusterClient)
	return &Store{rdb: rdb, timeout: timeout, cluster: cluster}
}

var (
	_ keys.Store     = (*Store)(nil)
	_ audit.Restorer = (*Store)(nil)
)

// Create writes the record, its id, its auth entry, its audit entry and the
// change notification in one round trip: one MULTI/EXEC on a single server,
// a pipeline on a cluster.
func (s *Store) Create(ctx context.Context, rec apikey.Record, actor string) error {
	st := audit.State{Record: rec, Revision: 1}
	entry, err := audit.NewEntry(rec.CreatedAt, actor, audit.ActionCreate, nil, st)
	if err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode key record: %w", err)
	}
	ev, err := entry.Encode()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	write := func(p goredis.Pipeliner) error {
		p.Set(ctx, apikey.RecordKey(rec.ID), b, 0)
		p.SAdd(ctx, apikey.IDsKey(), rec.ID)
		p.Set(ctx, apikey.AuthKey(rec.Hash), b, 0)
		p.XAdd(ctx, &goredis.XAddArgs{Stream: audit.StreamKey, Values: []any{audit.EntryField, ev}})
		p.Publish(ctx, apikey.ChangedChannel, rec.ID)
		return nil
	}
	// A transaction refused for the server's state (LOADING right after a
	// restart, BUSY) executed nothing and runs under no WATCH: send it again
	// within the bound (redisretry.Hook leaves transactions to their caller).
	err = redisretry.Do(ctx, redisretry.IsServerTransient, func(ctx context.Context) error {
		if s.cluster {
			_, err := s.rdb.Pipelined(ctx, write)
			return err
		}
		_, err := s.rdb.TxPipelined(ctx, write)
		return err
	})
	if err != nil {
		return fmt.Errorf("redis create key: %w", err)
	}
	return nil
}

// Get reads the canonical record.
func (s *Store) Get(ctx context.Context, id string) (apikey.Record, error) {
	st, err := s.state(ctx, id)
	return st.Record, err
}

func (s *Store) state(ctx context.Context, id string) (audit.State, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return decode(s.rdb.Get(ctx, apikey.RecordKey(id)).Bytes())
}

// ByHash reads the record of an auth entry.
func (s *Store) ByHash(ctx context.Context, hash string) (apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	st, err := decode(s.rdb.Get(ctx, apikey.AuthKey(hash)).Bytes())
	return st.Record, err
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
		st, err := decode(c.Bytes())
		if errors.Is(err, keys.ErrNotFound) {
			continue // an id whose record is gone: nothing to show
		}
		if err != nil {
			return nil, err
		}
		recs = append(recs, st.Record)
	}
	return recs, nil
}

// attempt is the outcome of one optimistic try of Update.
type attempt struct {
	cur, next audit.State
	changed   bool
	entry     audit.Entry
}

// Update changes a record under WATCH (optimistic locking on the record's
// key, which is in one slot), in this order:
//
//  1. read the current record; let ch.Apply compute the next one;
//  2. when something changed: write the new hash's auth entry (a secret
//     nobody was shown yet), and weaken the current hash's entry when the
//     key is revoked, disabled or rotated: from here the old key fails;
//  3. commit the record with MULTI/EXEC (with its audit entry on a single
//     server), which fails if anyone else wrote it since step 1; then the
//     new hash's entry is removed and all is retried;
//  4. write the auth entries of the committed state (they may have been
//     overtaken, see the package comment), the audit entry on a cluster,
//     and publish the id so that gateways drop their cached copies.
//
// When it fails after an attempt weakened an auth entry (a commit lost to a
// concurrent writer, then an error or ErrConflict), it writes the entries of
// the record's committed state again, so that the key is not left weaker
// than its record says.
func (s *Store) Update(ctx context.Context, id string, ch keys.Change) (apikey.Record, error) {
	weakened := false
	fail := func(err error) (apikey.Record, error) {
		if weakened {
			s.repair(ctx, id)
		}
		return apikey.Record{}, err
	}
	for range maxAttempts {
		a, err := s.tryUpdate(ctx, id, ch, &weakened)
		if errors.Is(err, goredis.TxFailedErr) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		if err := s.afterCommit(ctx, a); err != nil {
			// The change is stored, but gateways may serve from cache until
			// their TTL: report it so that the operator retries (a retry
			// finds nothing to change and repeats this step).
			return apikey.Record{}, err
		}
		return a.next.Record, nil
	}
	return fail(keys.ErrConflict)
}

// repair writes the auth entry of the key's committed state (best effort:
// the caller already reports an error).
func (s *Store) repair(ctx context.Context, id string) {
	ctx = context.WithoutCancel(ctx)
	cur, err := s.state(ctx, id)
	if err != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_ = s.writeAuth(cctx, []authWrite{entryFor(cur)})
}

func (s *Store) tryUpdate(ctx context.Context, id string, ch keys.Change, weakened *bool) (attempt, error) {
	recordKey := apikey.RecordKey(id)
	var a attempt
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
		next := cur
		next.Models = slices.Clone(cur.Models)
		if err := ch.Apply(&next.Record); err != nil {
			return err
		}
		next.UpdatedAt = cur.UpdatedAt
		a = attempt{cur: cur, next: next, changed: !reflect.DeepEqual(cur, next)}
		if !a.changed {
			a.next = cur
			return nil
		}
		a.next.UpdatedAt = ch.At
		a.next.Revision = cur.Revision + 1
		if a.entry, err = audit.NewEntry(ch.At, ch.Actor, ch.Action, &a.cur, a.next); err != nil {
			return err
		}
		b, err := json.Marshal(a.next)
		if err != nil {
			return fmt.Errorf("encode key record: %w", err)
		}
		ev, err := a.entry.Encode()
		if err != nil {
			return err
		}
		rotated := a.next.Hash != cur.Hash
		if pre := s.weakening(a); len(pre) > 0 {
			*weakened = true
			cctx, cancel = context.WithTimeout(wctx, s.timeout)
			err = s.writeAuth(cctx, pre)
			cancel()
			if err != nil {
				return err
			}
		}
		cctx, cancel = context.WithTimeout(wctx, s.timeout)
		_, err = tx.TxPipelined(cctx, func(p goredis.Pipeliner) error {
			p.Set(cctx, recordKey, b, 0)
			if !s.cluster {
				p.XAdd(cctx, &goredis.XAddArgs{Stream: audit.StreamKey, Values: []any{audit.EntryField, ev}})
			}
			return nil
		})
		cancel()
		if err != nil && rotated {
			// Not committed: the new secret was never shown; drop its entry.
			dctx, cancel := context.WithTimeout(ctx, s.timeout)
			_ = s.rdb.Del(dctx, apikey.AuthKey(a.next.Hash)).Err()
			cancel()
		}
		if err != nil && !errors.Is(err, goredis.TxFailedErr) {
			return fmt.Errorf("redis commit key record: %w", err)
		}
		return err
	}, recordKey)
	return a, err
}

// authWrite is one revisioned auth entry write: it replaces an entry of the
// same or a lower revision, never of a higher one.
type authWrite struct {
	hash string
	st   audit.State
	ttl  time.Duration // tombstones expire
}

// tombstone is the auth entry of a hash that must not authenticate any
// more, at revision rev.
func tombstone(id, hash string, rev uint64) authWrite {
	st := audit.State{Record: apikey.Record{ID: id, Hash: hash, Status: apikey.StatusRevoked, Models: []string{}}, Revision: rev}
	return authWrite{hash: hash, st: st, ttl: TombstoneTTL}
}

// entryFor is the auth entry of st's own hash.
func entryFor(st audit.State) authWrite {
	if st.Status == apikey.StatusRevoked {
		return tombstone(st.ID, st.Hash, st.Revision)
	}
	return authWrite{hash: st.Hash, st: st}
}

// weakening lists the writes made before the commit: the new hash's entry
// (nobody knows that secret yet) and the weakened entry of the current hash.
//
// The weakened entry carries the CURRENT revision, not the next one: the
// commit may still fail (a concurrent writer), and then nobody ever commits
// what it says. At the current revision it is replaced by the winner's
// entries (a higher revision), or by a repair that writes the committed
// current state again (same revision); at the next revision it would block
// both.
func (s *Store) weakening(a attempt) []authWrite {
	var w []authWrite
	if a.next.Hash != a.cur.Hash {
		w = append(w, entryFor(a.next))
		w = append(w, tombstone(a.cur.ID, a.cur.Hash, a.cur.Revision))
	} else if !a.next.Active() {
		weak := a.next
		weak.Revision = a.cur.Revision
		w = append(w, entryFor(weak))
	}
	return w
}

// afterCommit writes the committed state's auth entries, the audit entry on
// a cluster, and publishes the change, in one pipeline.
func (s *Store) afterCommit(ctx context.Context, a attempt) error {
	w := []authWrite{entryFor(a.next)}
	if a.changed && a.next.Hash != a.cur.Hash {
		w = append(w, tombstone(a.cur.ID, a.cur.Hash, a.next.Revision))
	}
	var ev string
	if a.changed && s.cluster {
		var err error
		if ev, err = a.entry.Encode(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		if err := queueAuth(ctx, p, w); err != nil {
			return err
		}
		if ev != "" {
			p.XAdd(ctx, &goredis.XAddArgs{Stream: audit.StreamKey, Values: []any{audit.EntryField, ev}})
		}
		p.Publish(ctx, apikey.ChangedChannel, a.next.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis write auth entries and publish key change: %w", err)
	}
	return nil
}

func (s *Store) writeAuth(ctx context.Context, w []authWrite) error {
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error { return queueAuth(ctx, p, w) })
	if err != nil {
		return fmt.Errorf("redis write auth entry: %w", err)
	}
	return nil
}

// queueAuth queues revisioned writes. EVAL, not EVALSHA: a pipeline cannot
// fall back when the script is not cached, and admin writes are rare.
func queueAuth(ctx context.Context, p goredis.Pipeliner, w []authWrite) error {
	for _, x := range w {
		b, err := json.Marshal(x.st)
		if err != nil {
			return fmt.Errorf("encode auth entry: %w", err)
		}
		setIfNewer.Eval(ctx, p, []string{apikey.AuthKey(x.hash)}, string(b), x.st.Revision, x.ttl.Milliseconds(), "0")
	}
	return nil
}

// Restore implements audit.Restorer: it writes last as the key's record
// unless Redis holds the same or a newer revision, then asserts the auth
// entry of whichever state is current, adds the id to the id set, turns
// the auth entries of the key's older hashes into tombstones, and publishes
// the id. It reports whether it wrote the record.
func (s *Store) Restore(ctx context.Context, last audit.State, oldHashes []string) (bool, error) {
	b, err := json.Marshal(last)
	if err != nil {
		return false, fmt.Errorf("encode key record: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	wrote, err := setIfNewer.Run(cctx, s.rdb, []string{apikey.RecordKey(last.ID)}, string(b), last.Revision, 0, "1").Int()
	cancel()
	if err != nil {
		return false, fmt.Errorf("redis restore key record: %w", err)
	}
	cur, err := s.state(ctx, last.ID)
	if err != nil {
		return false, err
	}
	w := []authWrite{entryFor(cur)}
	for _, h := range oldHashes {
		if h != cur.Hash {
			w = append(w, tombstone(cur.ID, h, cur.Revision))
		}
	}
	cctx, cancel = context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err = s.rdb.Pipelined(cctx, func(p goredis.Pipeliner) error {
		p.SAdd(cctx, apikey.IDsKey(), cur.ID)
		if err := queueAuth(cctx, p, w); err != nil {
			return err
		}
		p.Publish(cctx, apikey.ChangedChannel, cur.ID)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("redis restore auth entries: %w", err)
	}
	return wrote == 1, nil
}

// RestoreMonthCounter raises the gateway's monthly counter of a key (see
// apikey.MonthCounterKey) to n unless it is already higher, expiring it at
// expireAt. It reports whether it wrote.
func (s *Store) RestoreMonthCounter(ctx context.Context, keyID, month string, n int64, expireAt time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	wrote, err := raiseCounter.Run(ctx, s.rdb, []string{apikey.MonthCounterKey(keyID, month)},
		strconv.FormatInt(n, 10), expireAt.Unix()).Int()
	if err != nil {
		return false, fmt.Errorf("redis restore monthly counter: %w", err)
	}
	return wrote == 1, nil
}

func decode(b []byte, err error) (audit.State, error) {
	if errors.Is(err, goredis.Nil) {
		return audit.State{}, keys.ErrNotFound
	}
	if err != nil {
		return audit.State{}, fmt.Errorf("redis read key record: %w", err)
	}
	var st audit.State
	if err := json.Unmarshal(b, &st); err != nil {
		return audit.State{}, fmt.Errorf("decode key record: %w", err)
	}
	return st, nil
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
