package redis_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/tier"
)

var pepper = []byte("test-pepper")

// timeout is generous: tests run next to other suites on two cores, and
// asserting on speed is not their job.
const timeout = 2 * time.Second

func setup(t *testing.T) (*keys.Service, *goredis.Client) {
	t.Helper()
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	now := func() time.Time { return time.Date(2026, 5, 20, 12, 0, 0, 0, time.UTC) }
	return keys.NewService(redisstore.New(rdb, timeout), pepper, tier.Default(), now), rdb
}

func rawRecord(t *testing.T, rdb *goredis.Client, key string) (apikey.Record, bool) {
	t.Helper()
	b, err := rdb.Get(t.Context(), key).Bytes()
	if errors.Is(err, goredis.Nil) {
		return apikey.Record{}, false
	}
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	var r apikey.Record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("decode %s: %v", key, err)
	}
	return r, true
}

// authEntriesFor scans every auth entry and returns the hashes that point to
// id and are not tombstones (a tombstone is a revoked entry: it never
// authenticates, see the store's package comment).
func authEntriesFor(t *testing.T, rdb *goredis.Client, id string) []string {
	t.Helper()
	var out []string
	iter := rdb.Scan(t.Context(), 0, "qyai:auth:*", 100).Iterator()
	for iter.Next(t.Context()) {
		if r, ok := rawRecord(t, rdb, iter.Val()); ok && r.ID == id && r.Status != apikey.StatusRevoked {
			out = append(out, strings.TrimPrefix(iter.Val(), "qyai:auth:"))
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("scan auth entries: %v", err)
	}
	return out
}

func TestLifecycle(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	sub := rdb.Subscribe(ctx, apikey.ChangedChannel)
	defer func() { _ = sub.Close() }()
	if _, err := sub.Receive(ctx); err != nil { // subscription confirmed
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

	// Create.
	is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "acme", Tier: "pro"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	id, key := is.Record.ID, is.Key
	if apikey.CheckFormat(key) != nil || !strings.HasPrefix(id, "key_") || is.Record.KeyPrefix != key[:6]+"..." {
		t.Fatalf("issued id %q key prefix %q", id, is.Record.KeyPrefix)
	}
	expectChange(id)
	hash := apikey.Hash(pepper, key)
	auth, ok := rawRecord(t, rdb, apikey.AuthKey(hash))
	if !ok || auth.ID != id || auth.Hash != hash || auth.Status != apikey.StatusActive || auth.RPM != 30 || auth.MonthlyLimit != 3000 {
		t.Fatalf("auth entry %+v (exists %v)", auth, ok)
	}
	canon, ok := rawRecord(t, rdb, apikey.RecordKey(id))
	if !ok || canon.Hash != hash {
		t.Fatalf("record %+v (exists %v)", canon, ok)
	}
	if member, _ := rdb.SIsMember(ctx, apikey.IDsKey(), id).Result(); !member {
		t.Error("id not in the id set")
	}
	// Nothing stored holds the key itself.
	keysStored, _ := rdb.Keys(ctx, "*").Result()
	for _, k := range keysStored {
		if v, _ := rdb.Get(ctx, k).Result(); strings.Contains(v, key) || strings.Contains(k, key) {
			t.Errorf("redis key %s holds the clear-text key", k)
		}
	}
	if rec, err := svc.Authenticate(ctx, key); err != nil || rec.ID != id {
		t.Fatalf("Authenticate(new key) = %v, %v", rec.ID, err)
	}
	if got, err := svc.Get(ctx, id); err != nil || got.Name != "acme" {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	// Rotate.
	rot, err := svc.Rotate(ctx, "op", id)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	expectChange(id)
	if rot.Key == key || rot.Record.ID != id || rot.Record.Name != "acme" || !rot.Record.CreatedAt.Equal(is.Record.CreatedAt) {
		t.Fatalf("rotated %+v", rot.Record)
	}
	if old, ok := rawRecord(t, rdb, apikey.AuthKey(hash)); ok && old.Status != apikey.StatusRevoked {
		t.Errorf("old auth entry still live after rotate: %+v", old)
	}
	if _, err := svc.Authenticate(ctx, key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate(old key) = %v, want ErrUnauthenticated", err)
	}
	newHash := apikey.Hash(pepper, rot.Key)
	if got := authEntriesFor(t, rdb, id); len(got) != 1 || got[0] != newHash {
		t.Errorf("auth entries after rotate %v, want [%s]", got, newHash)
	}
	if _, err := svc.Authenticate(ctx, rot.Key); err != nil {
		t.Errorf("Authenticate(rotated key): %v", err)
	}

	// Revoke, twice.
	for i := range 2 {
		if err := svc.Revoke(ctx, "op", id); err != nil {
			t.Fatalf("Revoke #%d: %v", i+1, err)
		}
		expectChange(id)
	}
	if got := authEntriesFor(t, rdb, id); len(got) != 0 {
		t.Errorf("auth entries after revoke: %v", got)
	}
	if _, err := svc.Authenticate(ctx, rot.Key); !errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate(revoked key) = %v", err)
	}
	got, err := svc.Get(ctx, id)
	if err != nil || got.Status != apikey.StatusRevoked || got.Name != "acme" {
		t.Fatalf("Get(revoked) = %+v, %v", got, err)
	}
	list, err := svc.List(ctx)
	if err != nil || len(list) != 1 || list[0].Status != apikey.StatusRevoked {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := svc.Rotate(ctx, "op", id); !errors.Is(err, keys.ErrRevoked) {
		t.Errorf("Rotate(revoked) = %v, want ErrRevoked", err)
	}
	if _, err := svc.Get(ctx, "key_0000000000000000"); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("Get(unknown) = %v", err)
	}
	if err := svc.Revoke(ctx, "op", "key_0000000000000000"); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("Revoke(unknown) = %v", err)
	}
}

// TestConcurrentRotations checks the WATCH protocol: however rotations
// interleave, exactly one auth entry survives, the one the record names.
func TestConcurrentRotations(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "race", Tier: "basic"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	id := is.Record.ID
	var wg sync.WaitGroup
	issued := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			rot, err := svc.Rotate(ctx, "op", id)
			switch {
			case err == nil:
				issued <- rot.Key
			case !errors.Is(err, keys.ErrConflict):
				t.Errorf("Rotate: %v", err)
			}
		})
	}
	wg.Wait()
	close(issued)
	rec, err := svc.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	got := authEntriesFor(t, rdb, id)
	if len(got) != 1 || got[0] != rec.Hash {
		t.Fatalf("auth entries %v, want exactly the record's %s", got, rec.Hash)
	}
	working := 0
	for k := range issued {
		if _, err := svc.Authenticate(ctx, k); err == nil {
			working++
		}
	}
	if working != 1 {
		t.Errorf("%d of the returned keys work, want exactly 1 (the last committed)", working)
	}
}

// TestRevokeRacingRotations: a revoke that succeeds is final, whatever
// rotations run at the same time.
func TestRevokeRacingRotations(t *testing.T) {
	svc, rdb := setup(t)
	ctx := t.Context()
	is, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "race", Tier: "basic"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	id := is.Record.ID
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if _, err := svc.Rotate(ctx, "op", id); err != nil && !errors.Is(err, keys.ErrConflict) && !errors.Is(err, keys.ErrRevoked) {
				t.Errorf("Rotate: %v", err)
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
	if rec, _ := svc.Get(ctx, id); rec.Status != apikey.StatusRevoked {
		t.Errorf("status %q after revoke", rec.Status)
	}
	if got := authEntriesFor(t, rdb, id); len(got) != 0 {
		t.Errorf("auth entries survive the revoke: %v", got)
	}
}

func TestRedisDownFailsFast(t *testing.T) {
	srv := scripts.Redis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, DisableIdentity: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	svc := keys.NewService(redisstore.New(rdb, 200*time.Millisecond), pepper, tier.Default(), time.Now)
	is, err := svc.Create(t.Context(), "op", keys.CreateRequest{Name: "x", Tier: "basic"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // a hang fails the test instead of the suite
	defer cancel()
	if _, err := svc.Create(ctx, "op", keys.CreateRequest{Name: "y", Tier: "basic"}); err == nil {
		t.Error("Create with Redis down: no error")
	}
	if _, err := svc.Authenticate(ctx, is.Key); err == nil || errors.Is(err, keys.ErrUnauthenticated) {
		t.Errorf("Authenticate with Redis down = %v, want a backend error (not 'invalid key')", err)
	}
	if err := svc.Revoke(ctx, "op", is.Record.ID); err == nil {
		t.Error("Revoke with Redis down: no error")
	}
	if ctx.Err() != nil {
		t.Error("calls with Redis down did not respect their timeouts")
	}
}
