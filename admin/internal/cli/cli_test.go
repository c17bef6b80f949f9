package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	goredis "github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/admin/internal/app"
	"github.com/qyai/qyai/admin/internal/audit"
	"github.com/qyai/qyai/admin/internal/cli"
	"github.com/qyai/qyai/admin/internal/config"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/chschema"
)

const (
	opsToken = "ops-token-0123456789abcdef"
	database = "qyai"
)

// stack is a real admin server (app.Serve, audit flusher included) on real
// Redis and ClickHouse, and the CLI's configuration for it.
type stack struct {
	cli config.Client
	url string
	rdb *goredis.Client
	ch  driver.Conn
}

func newStack(t *testing.T) *stack {
	t.Helper()
	rs, cs := scripts.Redis(t), scripts.ClickHouse(t)
	env := map[string]string{
		"ADMIN_ADDR": "127.0.0.1:0", "ADMIN_TOKENS": "ops:" + opsToken, "REDIS_ADDR": rs.Addr, "REDIS_TIMEOUT": "2s",
		"CLICKHOUSE_ADDR": cs.Addr, "AUDIT_FLUSH_INTERVAL": "100ms", "KEY_PEPPER": "cli-test-pepper",
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- app.Serve(ctx, cfg, slog.New(slog.DiscardHandler), ready) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Logf("admin stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("admin did not stop")
		}
	})
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr.String()
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	// Ready means the ClickHouse schema is applied.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("admin not ready within 60 s")
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: rs.Addr, DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	ch, err := chschema.Open(t.Context(), chschema.Options{Addr: cs.Addr, Database: database})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return &stack{
		cli: config.Client{URL: base, Token: opsToken, Redis: cfg.Redis, ClickHouse: cfg.ClickHouse},
		url: base, rdb: rdb, ch: ch,
	}
}

// run runs one CLI command and returns its stdout.
func (s *stack) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := cli.Run(t.Context(), args, s.cli, &out, &errOut)
	if err != nil && !strings.Contains(errOut.String(), err.Error()) {
		t.Errorf("error %q not reported on stderr: %q", err, errOut.String())
	}
	return out.String(), err
}

func (s *stack) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.run(t, args...)
	if err != nil {
		t.Fatalf("admin %s: %v", strings.Join(args, " "), err)
	}
	return out
}

type keyOut struct {
	ID           string   `json:"id"`
	Key          string   `json:"key"`
	KeyPrefix    string   `json:"key_prefix"`
	Name         string   `json:"name"`
	Tier         string   `json:"tier"`
	RPM          int64    `json:"rpm"`
	MonthlyLimit int64    `json:"monthly_limit"`
	Models       []string `json:"models"`
	Status       string   `json:"status"`
}

func (s *stack) key(t *testing.T, args ...string) keyOut {
	t.Helper()
	var k keyOut
	out := s.mustRun(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), &k); err != nil {
		t.Fatalf("admin %s --json: %q: %v", strings.Join(args, " "), out, err)
	}
	return k
}

// works reports how the public billing endpoint answers a key: what the
// gateway would decide too (same auth entry, same Active check).
func (s *stack) works(t *testing.T, key string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url+"/v1/dashboard/billing/usage", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestKeysCommands(t *testing.T) {
	s := newStack(t)

	// Human output of create shows the key once, then the fields.
	out := s.mustRun(t, "keys", "create", "--name", "acme", "--tier", "pro", "--models", "deepseek-v4-flash, deepseek-v4-pro")
	m := regexp.MustCompile(`(?m)^key +(sk-[0-9A-Za-z]{48}) +\(shown once: store it now\)\nid +(key_[0-9a-f]{16})\nprefix +(sk-...\.\.\.)\nname +acme\ntier +pro\nrpm +30\nmonthly limit +3000\nmodels +deepseek-v4-flash,deepseek-v4-pro\ncreated +\S+Z\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keys create output:\n%s", out)
	}
	key, id := m[1], m[2]
	if s.works(t, key) != http.StatusOK {
		t.Fatal("the created key does not work")
	}

	// Flags after the positional argument work too.
	k := s.key(t, "keys", "update", id, "--tier", "basic", "--monthly-limit", "50")
	if k.Tier != "basic" || k.RPM != 10 || k.MonthlyLimit != 50 || k.Status != "active" || len(k.Models) != 2 {
		t.Errorf("update: %+v", k)
	}
	if k := s.key(t, "keys", "disable", id); k.Status != "disabled" {
		t.Errorf("disable: %+v", k)
	}
	if s.works(t, key) != http.StatusUnauthorized {
		t.Error("a disabled key works")
	}
	if k := s.key(t, "keys", "enable", id); k.Status != "active" {
		t.Errorf("enable: %+v", k)
	}
	rot := s.key(t, "keys", "rotate", id)
	if rot.ID != id || rot.Key == key || apikey.CheckFormat(rot.Key) != nil {
		t.Fatalf("rotate: %+v", rot)
	}
	if s.works(t, key) != http.StatusUnauthorized || s.works(t, rot.Key) != http.StatusOK {
		t.Error("rotation: the old key works or the new one does not")
	}
	other := s.key(t, "keys", "create", "--name", "zeta", "--tier", "enterprise", "--rpm", "7")
	if other.RPM != 7 || other.MonthlyLimit != 10000 || len(other.Models) != 0 {
		t.Errorf("create --json: %+v", other)
	}

	// The table lists both (oldest first; these two may share a second,
	// then the id decides), never a key.
	out = s.mustRun(t, "keys", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	header := regexp.MustCompile(`^ID +PREFIX +NAME +TIER +RPM +MONTHLY LIMIT +MODELS +STATUS +CREATED$`)
	rowRE := map[string]*regexp.Regexp{
		id:       regexp.MustCompile(`^` + id + ` +sk-\S{3}\.\.\. +acme +basic +10 +50 +deepseek-v4-flash,deepseek-v4-pro +active +\S+Z$`),
		other.ID: regexp.MustCompile(`^` + other.ID + ` +sk-\S{3}\.\.\. +zeta +enterprise +7 +10000 +all +active +\S+Z$`),
	}
	if len(lines) != 3 || !header.MatchString(lines[0]) {
		t.Errorf("keys list:\n%s", out)
	}
	for _, l := range lines[1:] {
		if re := rowRE[strings.Fields(l)[0]]; re == nil || !re.MatchString(l) {
			t.Errorf("keys list row %q", l)
		}
	}
	if strings.Contains(out, rot.Key) || strings.Contains(out, other.Key) {
		t.Error("keys list shows a key")
	}
	var listed struct {
		Object string   `json:"object"`
		Data   []keyOut `json:"data"`
	}
	if err := json.Unmarshal([]byte(s.mustRun(t, "keys", "list", "--json")), &listed); err != nil || listed.Object != "list" || len(listed.Data) != 2 {
		t.Errorf("keys list --json: %+v (%v)", listed, err)
	}
	if k := s.key(t, "keys", "get", id); k.Name != "acme" || k.Key != "" {
		t.Errorf("get: %+v", k)
	}

	out = s.mustRun(t, "keys", "revoke", other.ID)
	if out != "Revoked "+other.ID+": the key no longer works.\n" {
		t.Errorf("revoke output %q", out)
	}
	if s.works(t, other.Key) != http.StatusUnauthorized {
		t.Error("a revoked key works")
	}
	if k := s.key(t, "keys", "revoke", other.ID); k.Status != "revoked" {
		t.Errorf("revoke --json (again): %+v", k)
	}

	// API errors come back as errors with the API's message.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "rotate", other.ID}, "admin API: 409 invalid_request_error: The key is revoked"},
		{[]string{"keys", "get", "key_0000000000000000"}, "admin API: 404 not_found_error"},
		{[]string{"keys", "create", "--name", "x", "--tier", "gold"}, "(param tier)"},
		{[]string{"keys", "update", id}, "nothing to update"},
	} {
		if _, err := s.run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("admin %v: %v, want %q", tc.args, err, tc.want)
		}
	}
	bad := *s
	bad.cli.Token = "wrong"
	if _, err := bad.run(t, "keys", "list"); err == nil || !strings.Contains(err.Error(), "401 authentication_error") {
		t.Errorf("wrong token: %v", err)
	}

	// Every change above is in ClickHouse, made by "ops": create, update,
	// disable, enable, rotate, create, revoke (the second revoke changed
	// nothing and the rotation of a revoked key failed).
	waitFlushed(t, s, 7)
	rows, err := s.ch.Query(t.Context(), "SELECT DISTINCT actor FROM "+database+".audit_log FINAL")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }()
	var actors []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		actors = append(actors, a)
	}
	if !slices.Equal(actors, []string{"ops"}) {
		t.Errorf("actors %v, want [ops]", actors)
	}
}

// waitFlushed waits until the Redis buffer is empty and audit_log holds n
// entries.
func waitFlushed(t *testing.T, s *stack, n uint64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got uint64
		pending, _ := s.rdb.XLen(t.Context(), audit.StreamKey).Result()
		err := s.ch.QueryRow(t.Context(), "SELECT count() FROM "+database+".audit_log FINAL").Scan(&got)
		if err == nil && got == n && pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit_log has %d entries (%v) and %d wait in redis; want %d and 0", got, err, pending, n)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
}

// insertUsage writes usage_events rows as the meter does.
func insertUsage(t *testing.T, ch driver.Conn, rows ...[]any) {
	t.Helper()
	batch, err := ch.PrepareBatch(t.Context(), "INSERT INTO "+database+".usage_events (event_id, started_at, key_id, model,"+
		" prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, cost_usd)")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if err := batch.Append(r...); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
}

func ev(id string, at time.Time, key, model string, prompt, hit, miss, compl, reas uint64, cost string) []any {
	return []any{id, at, key, model, prompt, hit, miss, compl, reas, decimal.RequireFromString(cost)}
}

func TestUsageCommand(t *testing.T) {
	s := newStack(t)
	may := func(d int) time.Time { return time.Date(2026, 5, d, 10, 0, 0, 0, time.UTC) }
	insertUsage(t, s.ch,
		ev("e1", may(1), "key_a", "deepseek-v4-flash", 100, 40, 60, 50, 0, "0.000035400"),
		ev("e2", may(19), "key_a", "deepseek-v4-pro", 1000, 0, 1000, 200, 150, "0.003920000"),
		ev("e3", may(19), "key_b", "deepseek-v4-flash", 10, 10, 0, 5, 0, "0.000002250"),
		ev("e4", time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), "key_b", "deepseek-v4-flash", 1, 0, 1, 1, 0, "0.000000660"),
	)
	// A redelivered event stored twice counts once.
	insertUsage(t, s.ch, ev("e3", may(19), "key_b", "deepseek-v4-flash", 10, 10, 0, 5, 0, "0.000002250"))

	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			name: "csv by key",
			args: []string{"usage", "--from", "2026-05-01", "--to", "2026-05-31", "--group-by", "key", "--csv"},
			want: "key_id,requests,prompt_tokens,cache_hit_tokens,cache_miss_tokens,completion_tokens,reasoning_tokens,cost_usd\n" +
				"key_a,2,1100,40,1060,250,150,0.003955400\n" +
				"key_b,1,10,10,0,5,0,0.000002250\n",
		},
		{
			name: "table by day with an exact total",
			args: []string{"usage", "--from", "2026-05-01", "--to", "2026-05-31"},
			want: "" +
				"         DAY  REQUESTS  PROMPT  CACHE HIT  CACHE MISS  COMPLETION  REASONING     COST USD\n" +
				"  2026-05-01         1     100         40          60          50          0  0.000035400\n" +
				"  2026-05-19         2    1010         10        1000         205        150  0.003922250\n" +
				"       TOTAL         3    1110         50        1060         255        150  0.003957650\n",
		},
		{
			name: "json by model for one key",
			args: []string{"usage", "--key", "key_a", "--from", "2026-05-01", "--to", "2026-06-30", "--group-by", "model", "--json"},
			want: `{"object":"list","data":[` +
				`{"model":"deepseek-v4-flash","requests":1,"prompt_tokens":100,"cache_hit_tokens":40,"cache_miss_tokens":60,"completion_tokens":50,"reasoning_tokens":0,"cost_usd":"0.000035400"},` +
				`{"model":"deepseek-v4-pro","requests":1,"prompt_tokens":1000,"cache_hit_tokens":0,"cache_miss_tokens":1000,"completion_tokens":200,"reasoning_tokens":150,"cost_usd":"0.003920000"}]}` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.mustRun(t, tt.args...); got != tt.want {
				t.Errorf("admin %s:\n%s\nwant\n%s", strings.Join(tt.args, " "), got, tt.want)
			}
		})
	}
	if _, err := s.run(t, "usage", "--group-by", "week"); err == nil || !strings.Contains(err.Error(), "(param group_by)") {
		t.Errorf("bad group: %v", err)
	}
}

// TestRebuildRedis: keys created, updated, disabled, rotated and revoked
// through the CLI; Redis loses everything; rebuild-redis brings back every
// record and auth entry byte for byte, and every key that worked works
// again while every key that did not still does not.
func TestRebuildRedis(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()

	type issued struct{ id, key string }
	var all []issued // every key ever shown, current or not
	create := func(args ...string) keyOut {
		k := s.key(t, append([]string{"keys", "create"}, args...)...)
		all = append(all, issued{k.ID, k.Key})
		return k
	}
	plain := create("--name", "plain", "--tier", "basic")
	updated := create("--name", "updated", "--tier", "basic")
	s.key(t, "keys", "update", updated.ID, "--tier", "enterprise", "--models", "deepseek-v4-pro", "--name", "updated twice")
	rotated := create("--name", "rotated", "--tier", "pro")
	all = append(all, issued{rotated.ID, s.key(t, "keys", "rotate", rotated.ID).Key})
	all = append(all, issued{rotated.ID, s.key(t, "keys", "rotate", rotated.ID).Key})
	revoked := create("--name", "revoked", "--tier", "pro")
	s.mustRun(t, "keys", "revoke", revoked.ID)
	disabled := create("--name", "disabled", "--tier", "basic")
	s.key(t, "keys", "disable", disabled.ID)
	bounced := create("--name", "bounced", "--tier", "basic", "--rpm", "3")
	all = append(all, issued{bounced.ID, s.key(t, "keys", "rotate", bounced.ID).Key})
	s.key(t, "keys", "disable", bounced.ID)
	s.key(t, "keys", "enable", bounced.ID)
	_ = plain
	// 6 creates, 1 update, 3 rotations, 1 revoke, 2 disables, 1 enable.
	waitFlushed(t, s, 14)

	// This month's gateway counter of a key, backed by metered usage.
	now := time.Now().UTC()
	month := apikey.Month(now)
	insertUsage(t, s.ch,
		ev("u1", now, updated.ID, "deepseek-v4-pro", 1, 0, 1, 1, 0, "0.000008400"),
		ev("u2", now, updated.ID, "deepseek-v4-pro", 1, 0, 1, 1, 0, "0.000008400"),
		ev("u3", now, updated.ID, "deepseek-v4-pro", 1, 0, 1, 1, 0, "0.000008400"))
	if err := s.rdb.Set(ctx, apikey.MonthCounterKey(updated.ID, month), 3, 0).Err(); err != nil {
		t.Fatal(err)
	}

	type snapshot struct {
		status  map[string]int    // key -> billing status
		records map[string]string // redis key -> raw value, for the key layout
		list    string
	}
	take := func() snapshot {
		sn := snapshot{status: map[string]int{}, records: map[string]string{}}
		for _, k := range all {
			sn.status[k.key] = s.works(t, k.key)
		}
		var cursor uint64
		for {
			ks, next, err := s.rdb.Scan(ctx, cursor, "qyai:*", 100).Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				typ, _ := s.rdb.Type(ctx, k).Result()
				ttl, _ := s.rdb.TTL(ctx, k).Result()
				switch {
				case typ == "set":
					m, _ := s.rdb.SMembers(ctx, k).Result()
					slices.Sort(m)
					sn.records[k] = strings.Join(m, ",")
				case typ == "string" && strings.HasPrefix(k, "qyai:quota:"):
					v, _ := s.rdb.Get(ctx, k).Result()
					sn.records[k] = v
				case typ == "string" && ttl < 0: // tombstones expire: not compared
					v, _ := s.rdb.Get(ctx, k).Result()
					sn.records[k] = v
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
		sn.list = s.mustRun(t, "keys", "list", "--json")
		return sn
	}
	before := take()
	wantStatus := map[string]int{}
	for i, k := range all {
		wantStatus[k.key] = http.StatusUnauthorized
		_ = i
	}
	for _, k := range []string{plain.Key, updated.Key, all[4].key /* rotated, second rotation */, all[8].key /* bounced, rotated */} {
		wantStatus[k] = http.StatusOK
	}
	for k, want := range wantStatus {
		if before.status[k] != want {
			t.Fatalf("before the loss, key %s... answers %d, want %d", k[:8], before.status[k], want)
		}
	}
	if len(before.records) < 6*2+1 {
		t.Fatalf("snapshot too small: %v", before.records)
	}

	if err := s.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		if code := s.works(t, k.key); code != http.StatusUnauthorized {
			t.Fatalf("a key works after FLUSHALL: %d", code)
		}
	}

	out := s.mustRun(t, "keys", "rebuild-redis", "--json")
	if out != `{"keys":6,"restored":6,"current":0,"month_counters":1}`+"\n" {
		t.Errorf("rebuild-redis report %q", out)
	}
	after := take()
	for k, want := range before.status {
		if after.status[k] != want {
			t.Errorf("after the rebuild, key %s... answers %d, before %d", k[:8], after.status[k], want)
		}
	}
	for k, v := range before.records {
		if after.records[k] != v {
			t.Errorf("redis %s after the rebuild:\n%s\nbefore:\n%s", k, after.records[k], v)
		}
	}
	for k := range after.records {
		if _, ok := before.records[k]; !ok {
			t.Errorf("redis %s exists only after the rebuild: %s", k, after.records[k])
		}
	}
	if after.list != before.list {
		t.Errorf("keys list after the rebuild:\n%s\nbefore:\n%s", after.list, before.list)
	}
	if ttl, _ := s.rdb.TTL(ctx, apikey.MonthCounterKey(updated.ID, month)).Result(); ttl <= 0 {
		t.Errorf("restored monthly counter has no expiry: %v", ttl)
	}

	// Again: nothing to do.
	if out := s.mustRun(t, "keys", "rebuild-redis"); out != "Rebuilt Redis from the audit log: 6 keys, 0 restored, 6 already current; 0 monthly counters restored.\n" {
		t.Errorf("second rebuild-redis: %q", out)
	}
	// Life goes on: revisions continue where the audit log left them.
	next := s.key(t, "keys", "rotate", plain.ID)
	if s.works(t, next.Key) != http.StatusOK || s.works(t, plain.Key) != http.StatusUnauthorized {
		t.Error("rotation after the rebuild")
	}
	waitFlushed(t, s, 15)
	var rev uint64
	if err := s.ch.QueryRow(ctx, "SELECT max(revision) FROM "+database+".audit_log FINAL WHERE key_id = ?", plain.ID).Scan(&rev); err != nil || rev != 2 {
		t.Errorf("revision after the rebuild %d (%v), want 2", rev, err)
	}
}

func TestRebuildRedisFailsClearly(t *testing.T) {
	rs := scripts.Redis(t)
	cfg := config.Client{
		URL:        "http://127.0.0.1:1",
		Redis:      config.Redis{Addrs: []string{rs.Addr}, Timeout: time.Second},
		ClickHouse: config.ClickHouse{Addr: "127.0.0.1:1", Database: database, User: "default", QueryTimeout: time.Second},
	}
	var out, errOut bytes.Buffer
	err := cli.Run(t.Context(), []string{"keys", "rebuild-redis"}, cfg, &out, &errOut)
	if err == nil || errors.Is(err, cli.ErrUsage) || !strings.Contains(errOut.String(), "rebuild-redis") {
		t.Errorf("rebuild-redis without clickhouse: %v, stderr %q", err, errOut.String())
	}
	if _, err := s0(t, cfg, "keys", "list"); err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN is not set") {
		t.Errorf("keys list without a token: %v", err)
	}
}

func s0(t *testing.T, cfg config.Client, args ...string) (string, error) {
	var out bytes.Buffer
	err := cli.Run(t.Context(), args, cfg, &out, io.Discard)
	return out.String(), err
}
