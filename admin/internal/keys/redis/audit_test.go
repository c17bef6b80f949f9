package redis_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/audit"
	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/tier"
)

// streamEntries returns the audit entries waiting in the Redis buffer.
func streamEntries(t *testing.T, rdb *goredis.Client) []audit.Entry {
	t.Helper()
	msgs, err := rdb.XRange(t.Context(), audit.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s: %v", audit.StreamKey, err)
	}
	var out []audit.Entry
	for _, m := range msgs {
		e, err := audit.Decode(m.Values[audit.EntryField].(string))
		if err != nil {
			t.Fatalf("stream entry %s: %v", m.ID, err)
		}
		out = append(out, e)
	}
	return out
}

func str(s string) *string { return &s }
func i64(n int64) *int64   { return &n }

// TestAuditTrail checks that every change leaves exactly one entry, in the
// same write as the change: who, when, what, before and after (with the
// hash, never the key), with revisions 1, 2, 3...
func TestAuditTrail(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	is, err := svc.Create(ctx, "alice", keys.CreateRequest{Name: "acme", Tier: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	id := is.Record.ID
	if _, err := svc.Update(ctx, "bob", id, keys.UpdateRequest{Name: str("acme prod"), Tier: str("pro"), MonthlyLimit: i64(500)}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	// Nothing to change: no entry.
	if _, err := svc.Update(ctx, "bob", id, keys.UpdateRequest{Name: str("acme prod")}); err != nil {
		t.Fatalf("no-op Update: %v", err)
	}
	if _, err := svc.Disable(ctx, "carol", id); err != nil {
		t.Fatalf("Disable: %v", err)
	}
	if _, err := svc.Disable(ctx, "carol", id); err != nil { // no-op
		t.Fatalf("second Disable: %v", err)
	}
	if _, err := svc.Enable(ctx, "carol", id); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	rot, err := svc.Rotate(ctx, "dave", id)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if err := svc.Revoke(ctx, "erin", id); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := svc.Revoke(ctx, "erin", id); err != nil { // no-op
		t.Fatalf("second Revoke: %v", err)
	}

	entries := streamEntries(t, rdb)
	type want struct {
		actor, action string
		fields        []string
		status        string
	}
	wants := []want{
		{"alice", "create", []string{"id", "hash", "key_prefix", "name", "tier", "rpm", "monthly_limit", "tpm", "models", "status", "created_at"}, "active"},
		{"bob", "update", []string{"name", "tier", "rpm", "monthly_limit"}, "active"},
		{"carol", "disable", []string{"status"}, "disabled"},
		{"carol", "enable", []string{"status"}, "active"},
		{"dave", "rotate", []string{"hash", "key_prefix"}, "active"},
		{"erin", "revoke", []string{"status"}, "revoked"},
	}
	if len(entries) != len(wants) {
		t.Fatalf("%d audit entries, want %d: %+v", len(entries), len(wants), entries)
	}
	ids := map[string]bool{}
	for i, e := range entries {
		w := wants[i]
		if e.Actor != w.actor || e.Action != w.action || !slices.Equal(e.Fields, w.fields) || e.After.Status != w.status ||
			e.KeyID != id || e.Revision != uint64(i+1) || e.After.Revision != e.Revision || !strings.HasPrefix(e.ID, "aud_") ||
			!e.At.Equal(time.Date(2026, 5, 20, 12, 0, 0, 0, time.UTC)) || ids[e.ID] {
			t.Errorf("entry %d = %+v (fields %v), want %+v", i, e, e.Fields, w)
		}
		ids[e.ID] = true
		if (i == 0) != (e.Before == nil) {
			t.Errorf("entry %d: before %+v", i, e.Before)
		}
		if e.Before != nil && e.Before.Revision != e.Revision-1 {
			t.Errorf("entry %d: before revision %d", i, e.Before.Revision)
		}
	}
	// The update reset rpm to pro's (tier change) and kept the given limit.
	if a := entries[1].After; a.Tier != "pro" || a.RPM != 30 || a.MonthlyLimit != 500 || a.Name != "acme prod" {
		t.Errorf("after update: %+v", a)
	}
	// Hashes, never keys.
	if entries[0].After.Hash != apikey.Hash(pepper, is.Key) || entries[4].After.Hash != apikey.Hash(pepper, rot.Key) ||
		entries[4].Before.Hash != entries[0].After.Hash {
		t.Error("audit hashes do not match the keys' hashes")
	}
	raw, _ := rdb.XRange(ctx, audit.StreamKey, "-", "+").Result()
	for _, m := range raw {
		if s := m.Values[audit.EntryField].(string); strings.Contains(s, is.Key) || strings.Contains(s, rot.Key) {
			t.Errorf("audit entry holds a clear-text key: %s", s)
		}
	}
	// The record carries its revision.
	if rec, ok := rawRecord(t, rdb, apikey.RecordKey(id)); !ok || rec.Status != apikey.StatusRevoked {
		t.Fatalf("record %+v", rec)
	}
	b, _ := rdb.Get(ctx, apikey.RecordKey(id)).Bytes()
	var st audit.State
	if err := json.Unmarshal(b, &st); err != nil || st.Revision != 6 {
		t.Errorf("stored revision %d (%v), want 6", st.Revision, err)
	}
}

func TestDisableEnable(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	sub := rdb.Subscribe(ctx, apikey.ChangedChannel)
	defer func() { _ = sub.Close() }()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	changes := sub.Channel()
	expectChange := func(id string) {
		t.Helper()
		select {
		case m := <-changes:
			if m.Payload != id {
				t.Errorf("change message %q, want %q", m.Payload, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no change message for %s", id)
		}
	}
	is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "a", Tier: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	id, hash := is.Record.ID, apikey.Hash(pepper, is.Key)
	expectChange(id)

	rec, err := svc.Disable(ctx, "op", id)
	if err != nil || rec.Status != apikey.StatusDisabled {
		t.Fatalf("Disable = %+v, %v", rec, err)
	}
	expectChange(id)
	// The gateway reads the auth entry: it must say disabled.
	if auth, ok := rawRecord(t, rdb, apikey.AuthKey(hash)); !ok || auth.Status != apikey.StatusDisabled || auth.Active() {
		t.Fatalf("auth entry after disable: %+v (exists %v)", auth, ok)
	}
	if _, err := svc.Authenticate(ctx, is.Key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate(disabled) = %v", err)
	}
	// A disabled key can be rotated; it stays disabled.
	rot, err := svc.Rotate(ctx, "op", id)
	if err != nil || rot.Record.Status != apikey.StatusDisabled {
		t.Fatalf("Rotate(disabled) = %+v, %v", rot.Record, err)
	}
	expectChange(id)
	if _, err := svc.Authenticate(ctx, rot.Key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate(rotated while disabled) = %v", err)
	}

	rec, err = svc.Enable(ctx, "op", id)
	if err != nil || rec.Status != apikey.StatusActive {
		t.Fatalf("Enable = %+v, %v", rec, err)
	}
	expectChange(id)
	if _, err := svc.Authenticate(ctx, rot.Key); err != nil {
		t.Errorf("Authenticate(enabled) = %v", err)
	}
	if _, err := svc.Authenticate(ctx, is.Key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate(pre-rotation key) = %v", err)
	}

	if err := svc.Revoke(ctx, "op", id); err != nil {
		t.Fatal(err)
	}
	expectChange(id)
	for name, call := range map[string]func() error{
		"enable":  func() error { _, err := svc.Enable(ctx, "op", id); return err },
		"disable": func() error { _, err := svc.Disable(ctx, "op", id); return err },
		"update":  func() error { _, err := svc.Update(ctx, "op", id, keys.UpdateRequest{Name: str("x")}); return err },
	} {
		if err := call(); !errors.Is(err, keys.ErrRevoked) {
			t.Errorf("%s(revoked) = %v, want ErrRevoked", name, err)
		}
	}
}

// TestStaleStateCannotResurrect: a write of an older state (a slow admin
// request, a rebuild from a lagging audit log) never overrides a newer one.
func TestStaleStateCannotResurrect(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	store := redisstore.New(rdb, timeout)
	svc := keys.NewService(store, pepper, tier.Default(), time.Now)
	ctx := t.Context()
	is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "a", Tier: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	old := streamEntries(t, rdb)[0].After // revision 1, active
	if err := svc.Revoke(ctx, "op", is.Record.ID); err != nil {
		t.Fatal(err)
	}
	wrote, err := store.Restore(ctx, old, nil)
	if err != nil || wrote {
		t.Fatalf("Restore(older state) = %v, %v; want not written", wrote, err)
	}
	if _, err := svc.Authenticate(ctx, is.Key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Fatalf("a revoked key authenticates after a stale restore: %v", err)
	}
	if rec, _ := svc.Get(ctx, is.Record.ID); rec.Status != apikey.StatusRevoked {
		t.Fatalf("status %q after a stale restore", rec.Status)
	}
}

// TestChangesRacingRevoke runs every kind of change concurrently with a
// revoke: the revoke is final, no auth entry of the key authenticates, and
// the audit trail has one entry per committed revision, 1..N without gaps.
func TestChangesRacingRevoke(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	for round := range 20 {
		is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "race", Tier: "basic"})
		if err != nil {
			t.Fatal(err)
		}
		id := is.Record.ID
		var wg sync.WaitGroup
		var mu sync.Mutex
		var issued []string
		okErr := func(err error) bool {
			return err == nil || errors.Is(err, keys.ErrConflict) || errors.Is(err, keys.ErrRevoked)
		}
		for i := range 12 {
			wg.Go(func() {
				var err error
				switch i % 4 {
				case 0:
					var rot keys.Issued
					if rot, err = svc.Rotate(ctx, "op", id); err == nil {
						mu.Lock()
						issued = append(issued, rot.Key)
						mu.Unlock()
					}
				case 1:
					_, err = svc.Disable(ctx, "op", id)
				case 2:
					_, err = svc.Enable(ctx, "op", id)
				case 3:
					_, err = svc.Update(ctx, "op", id, keys.UpdateRequest{RPM: i64(int64(i + 1))})
				}
				if !okErr(err) {
					t.Errorf("round %d change %d: %v", round, i, err)
				}
			})
		}
		wg.Go(func() {
			for {
				err := svc.Revoke(ctx, "op", id)
				if err == nil {
					return
				}
				if !errors.Is(err, keys.ErrConflict) {
					t.Errorf("Revoke: %v", err)
					return
				}
			}
		})
		wg.Wait()
		if got := authEntriesFor(t, rdb, id); len(got) != 0 {
			t.Errorf("round %d: live auth entries after revoke: %v", round, got)
		}
		for _, k := range append(issued, is.Key) {
			if _, err := svc.Authenticate(ctx, k); !errors.Is(err, keys.ErrUnauthenticated) {
				t.Errorf("round %d: a key of the revoked record authenticates: %v", round, err)
			}
		}
		b, _ := rdb.Get(ctx, apikey.RecordKey(id)).Bytes()
		var st audit.State
		if err := json.Unmarshal(b, &st); err != nil || st.Status != apikey.StatusRevoked {
			t.Fatalf("round %d: record %s (%v)", round, b, err)
		}
		// The record's hash has the revoke's tombstone.
		ab, _ := rdb.Get(ctx, apikey.AuthKey(st.Hash)).Bytes()
		var tomb audit.State
		if err := json.Unmarshal(ab, &tomb); err != nil || tomb.Status != apikey.StatusRevoked || tomb.Revision != st.Revision {
			t.Errorf("round %d: auth entry of the final hash %s, want a tombstone at revision %d", round, ab, st.Revision)
		}
		var revs []uint64
		for _, e := range streamEntries(t, rdb) {
			if e.KeyID == id {
				revs = append(revs, e.Revision)
			}
		}
		if len(revs) != int(st.Revision) {
			t.Errorf("round %d: %d audit entries for %d revisions: %v", round, len(revs), st.Revision, revs)
		}
		for i, r := range revs {
			if r != uint64(i+1) {
				t.Errorf("round %d: audit revisions %v, want 1..%d in order", round, revs, st.Revision)
				break
			}
		}
	}
}

// TestChangesStayConsistent runs changes of every kind concurrently: in the
// end the auth entry of the record's hash is the record itself, byte for
// byte, and no other entry of the key authenticates.
func TestChangesStayConsistent(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	for round := range 20 {
		is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "race", Tier: "basic"})
		if err != nil {
			t.Fatal(err)
		}
		id := is.Record.ID
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Go(func() {
				var err error
				switch i % 4 {
				case 0:
					_, err = svc.Rotate(ctx, "op", id)
				case 1:
					_, err = svc.Disable(ctx, "op", id)
				case 2:
					_, err = svc.Enable(ctx, "op", id)
				case 3:
					_, err = svc.Update(ctx, "op", id, keys.UpdateRequest{RPM: i64(int64(i + 1))})
				}
				if err != nil && !errors.Is(err, keys.ErrConflict) {
					t.Errorf("round %d change %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		rec, _ := rdb.Get(ctx, apikey.RecordKey(id)).Bytes()
		var st audit.State
		if err := json.Unmarshal(rec, &st); err != nil {
			t.Fatal(err)
		}
		auth, _ := rdb.Get(ctx, apikey.AuthKey(st.Hash)).Bytes()
		if string(auth) != string(rec) {
			t.Errorf("round %d: auth entry\n%s\nrecord\n%s", round, auth, rec)
			for _, e := range streamEntries(t, rdb) {
				if e.KeyID == id {
					t.Logf("audit: revision %d %s -> %s, hash %s", e.Revision, e.Action, e.After.Status, e.After.Hash[:6])
				}
			}
		}
		if live := authEntriesFor(t, rdb, id); len(live) != 1 || live[0] != st.Hash {
			t.Errorf("round %d: live auth entries %v, want only %s", round, live, st.Hash)
		}
	}
}

// TestRecordWithoutRevision: a record written before revisions existed is
// changed and audited from revision 1 on.
func TestRecordWithoutRevision(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	rec := apikey.Record{ID: "key_00000000000000aa", Hash: apikey.Hash(pepper, "sk-"+strings.Repeat("a", 48)), KeyPrefix: "sk-aaa...",
		Name: "legacy", Tier: "basic", RPM: 10, MonthlyLimit: 1000, Models: []string{}, Status: apikey.StatusActive,
		CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), UpdatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b, _ := json.Marshal(rec)
	for _, k := range []string{apikey.RecordKey(rec.ID), apikey.AuthKey(rec.Hash)} {
		if err := rdb.Set(ctx, k, b, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Disable(ctx, "op", rec.ID); err != nil {
		t.Fatalf("Disable(legacy): %v", err)
	}
	es := streamEntries(t, rdb)
	if len(es) != 1 || es[0].Revision != 1 || es[0].Before.Revision != 0 || es[0].After.Status != apikey.StatusDisabled {
		t.Fatalf("entries %+v", es)
	}
	if auth, _ := rawRecord(t, rdb, apikey.AuthKey(rec.Hash)); auth.Status != apikey.StatusDisabled {
		t.Errorf("legacy auth entry not disabled: %+v", auth)
	}
}
