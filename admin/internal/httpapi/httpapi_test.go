package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gin-gonic/gin"
	goredis "github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/admin/internal/adminauth"
	"github.com/qyai/qyai/admin/internal/billing"
	chstore "github.com/qyai/qyai/admin/internal/billing/clickhouse"
	"github.com/qyai/qyai/admin/internal/httpapi"
	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/tier"
	"github.com/qyai/qyai/testkit/logbuf"
	"github.com/qyai/qyai/testkit/testenv"
)

const (
	adminToken = "test-admin-token-0123456789"
	// aliceToken is a second, named admin token.
	aliceToken = "alice-admin-token-9876543210"
	database   = "qyai"
	// timeout is generous: tests share two cores with other suites.
	timeout = 2 * time.Second
)

var (
	pepper = []byte("test-pepper")
	// now is the injected clock: 20 May 2026, noon UTC.
	now = time.Date(2026, 5, 20, 12, 0, 0, 0, time.UTC)
)

type env struct {
	url   string
	redis *testenv.Server
	click *testenv.Server
	rdb   *goredis.Client
	ch    driver.Conn
	conn  *chstore.Connector
	logs  *logbuf.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, nil)
}

// newEnvWith starts Redis and ClickHouse and serves the API; edit may change
// the dependencies first.
func newEnvWith(t *testing.T, edit func(*httpapi.Deps)) *env {
	t.Helper()
	rs, cs := scripts.Redis(t), scripts.ClickHouse(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: rs.Addr, ContextTimeoutEnabled: true, DisableIdentity: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	logs := &logbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	conn := chstore.NewConnector(chschema.Options{Addr: cs.Addr, Database: database}, chschema.ApplyOptions{}, log)
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := conn.Run(ctx); err != nil {
		t.Fatalf("connect to clickhouse and apply schema: %v", err)
	}
	ch, err := conn.Conn()
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return now }
	keyStore := redisstore.New(rdb, timeout)
	usage := chstore.NewStore(conn, database, 10*time.Second)
	d := httpapi.Deps{
		Keys:        keys.NewService(keyStore, pepper, tier.Default(), clock),
		Billing:     billing.NewService(usage, keyStore, clock),
		AdminTokens: []adminauth.Token{{Name: "root", Secret: adminToken}, {Name: "alice", Secret: aliceToken}},
		// Generous: the tests send many wrong tokens on purpose; the limit
		// itself is tested with its own clock.
		AuthFailures: adminauth.NewLimiter(1000, time.Minute, clock),
		Ready: []httpapi.Check{
			{Name: "redis", Timeout: timeout, Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
			{Name: "clickhouse", Timeout: timeout, Ping: conn.Ping},
		},
		Log: log,
		Now: clock,
	}
	if edit != nil {
		edit(&d)
	}
	srv := httptest.NewServer(httpapi.New(d))
	t.Cleanup(srv.Close)
	return &env{url: srv.URL, redis: rs, click: cs, rdb: rdb, ch: ch, conn: conn, logs: logs}
}

// do sends a request; auth is the whole Authorization header ("" for none).
func (e *env) do(t *testing.T, method, path, auth, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func (e *env) admin(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	return e.do(t, method, path, "Bearer "+adminToken, body)
}

type issued struct {
	ID, Key, KeyPrefix string
}

func (e *env) createKey(t *testing.T, body string) issued {
	t.Helper()
	code, b := e.admin(t, "POST", "/admin/v1/keys", body)
	if code != http.StatusCreated {
		t.Fatalf("create key: %d %s", code, b)
	}
	var out struct {
		ID        string `json:"id"`
		Key       string `json:"key"`
		KeyPrefix string `json:"key_prefix"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return issued{ID: out.ID, Key: out.Key, KeyPrefix: out.KeyPrefix}
}

type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// expectError checks status, type and (when not empty) param of an
// OpenAI-shaped error body.
func expectError(t *testing.T, code int, body []byte, wantCode int, wantType, wantParam string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("status %d, want %d: %s", code, wantCode, body)
	}
	var e apiError
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI-shaped error: %s", body)
	}
	if e.Error.Type != wantType {
		t.Errorf("type %q, want %q (%s)", e.Error.Type, wantType, body)
	}
	if wantParam != "" && (e.Error.Param == nil || *e.Error.Param != wantParam) {
		t.Errorf("param %v, want %q (%s)", e.Error.Param, wantParam, body)
	}
}

func fieldNames(t *testing.T, b []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	var names []string
	for k := range m {
		names = append(names, k)
	}
	return names
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]bool{}
	for _, x := range a {
		seen[x] = true
	}
	for _, x := range b {
		if !seen[x] {
			return false
		}
	}
	return true
}

func TestAdminAuth(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		auth string
		want int
	}{
		{"missing", "", http.StatusUnauthorized},
		{"wrong token", "Bearer not-the-token", http.StatusUnauthorized},
		{"token prefix", "Bearer " + adminToken[:10], http.StatusUnauthorized},
		{"token plus suffix", "Bearer " + adminToken + "x", http.StatusUnauthorized},
		{"basic scheme", "Basic " + adminToken, http.StatusUnauthorized},
		{"bare token", adminToken, http.StatusUnauthorized},
		{"empty bearer", "Bearer ", http.StatusUnauthorized},
		{"right token", "Bearer " + adminToken, http.StatusOK},
		{"second named token", "Bearer " + aliceToken, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + adminToken, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/admin/v1/keys", "/admin/v1/usage"} {
				code, body := e.do(t, "GET", path, tt.auth, "")
				if tt.want == http.StatusOK {
					if code != http.StatusOK {
						t.Errorf("GET %s: %d %s", path, code, body)
					}
					continue
				}
				expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
			}
		})
	}
	// Mutations are guarded too, and nothing is created without the token.
	code, body := e.do(t, "POST", "/admin/v1/keys", "Bearer wrong", `{"name":"x","tier":"basic"}`)
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
	if n, _ := e.rdb.SCard(t.Context(), apikey.IDsKey()).Result(); n != 0 {
		t.Errorf("%d keys exist after unauthorized create", n)
	}
	// Failures are logged, never with the presented token.
	logs := e.logs.String()
	if !strings.Contains(logs, "admin authentication failed") {
		t.Error("failed admin authentications are not logged")
	}
	for _, secret := range []string{adminToken, aliceToken, "not-the-token"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain a presented token %q...", secret[:4])
		}
	}
}

func TestCreateValidation(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body, param string
	}{
		{"empty body", "", ""},
		{"not json", "name=x", ""},
		{"array", `[]`, ""},
		{"name missing", `{"tier":"basic"}`, "name"},
		{"name wrong type", `{"name":5,"tier":"basic"}`, "name"},
		{"tier missing", `{"name":"a"}`, "tier"},
		{"tier unknown", `{"name":"a","tier":"platinum"}`, "tier"},
		{"rpm zero", `{"name":"a","tier":"pro","rpm":0}`, "rpm"},
		{"rpm string", `{"name":"a","tier":"pro","rpm":"10"}`, "rpm"},
		{"rpm fraction", `{"name":"a","tier":"pro","rpm":1.5}`, "rpm"},
		{"monthly negative", `{"name":"a","tier":"pro","monthly_limit":-5}`, "monthly_limit"},
		{"models not array", `{"name":"a","tier":"pro","models":"gpt-4o"}`, "models"},
		{"model empty", `{"name":"a","tier":"pro","models":[""]}`, "models"},
		{"unknown field", `{"name":"a","tier":"pro","monthlyLimit":5}`, "monthlyLimit"},
		{"two objects", `{"name":"a","tier":"pro"}{}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.admin(t, "POST", "/admin/v1/keys", tt.body)
			expectError(t, code, body, http.StatusBadRequest, "invalid_request_error", tt.param)
		})
	}
	if n, _ := e.rdb.SCard(t.Context(), apikey.IDsKey()).Result(); n != 0 {
		t.Errorf("%d keys exist after invalid creates", n)
	}
}

func TestKeyLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()

	// Create: exact answer, tier defaults, custom models.
	code, b := e.admin(t, "POST", "/admin/v1/keys", `{"name":"acme","tier":"enterprise","models":["deepseek-v4-pro"]}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	want := []string{"id", "key", "key_prefix", "name", "tier", "rpm", "monthly_limit", "models", "created_at"}
	if got := fieldNames(t, b); !sameSet(got, want) {
		t.Errorf("create fields %v, want %v", got, want)
	}
	var created struct {
		ID, Key, KeyPrefix, Name, Tier string
		RPM                            int64    `json:"rpm"`
		MonthlyLimit                   int64    `json:"monthly_limit"`
		Models                         []string `json:"models"`
		CreatedAt                      string   `json:"created_at"`
	}
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatal(err)
	}
	created.KeyPrefix = fieldString(t, b, "key_prefix")
	if created.RPM != 100 || created.MonthlyLimit != 10000 || created.Tier != "enterprise" || created.Name != "acme" ||
		len(created.Models) != 1 || created.CreatedAt != "2026-05-20T12:00:00Z" ||
		apikey.CheckFormat(created.Key) != nil || created.KeyPrefix != created.Key[:6]+"..." {
		t.Errorf("created %+v", created)
	}
	// Only the hash is stored, and the auth entry is found by it.
	hash := apikey.Hash(pepper, created.Key)
	raw, err := e.rdb.Get(ctx, apikey.AuthKey(hash)).Bytes()
	if err != nil {
		t.Fatalf("auth entry: %v", err)
	}
	var rec apikey.Record
	if err := json.Unmarshal(raw, &rec); err != nil || rec.ID != created.ID || rec.Hash != hash || rec.Status != apikey.StatusActive {
		t.Fatalf("auth entry %s (%v)", raw, err)
	}

	// Get and list never show the key or its hash.
	neverExposed := func(b []byte) {
		t.Helper()
		if bytes.Contains(b, []byte(created.Key)) || bytes.Contains(b, []byte(hash)) || bytes.Contains(b, []byte(`"hash"`)) || bytes.Contains(b, []byte(`"key"`)) {
			t.Errorf("body exposes the key or its hash: %s", b)
		}
	}
	code, b = e.admin(t, "GET", "/admin/v1/keys/"+created.ID, "")
	if code != http.StatusOK || fieldString(t, b, "status") != "active" || fieldString(t, b, "name") != "acme" {
		t.Fatalf("get: %d %s", code, b)
	}
	neverExposed(b)
	code, b = e.admin(t, "GET", "/admin/v1/keys", "")
	if code != http.StatusOK || !bytes.Contains(b, []byte(created.ID)) || fieldString(t, b, "object") != "list" {
		t.Fatalf("list: %d %s", code, b)
	}
	neverExposed(b)

	// The key works on the public billing endpoint.
	if code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+created.Key, ""); code != http.StatusOK {
		t.Fatalf("billing with new key: %d %s", code, b)
	}

	// Rotate: a new key, the old one stops working.
	code, b = e.admin(t, "POST", "/admin/v1/keys/"+created.ID+"/rotate", "")
	if code != http.StatusOK {
		t.Fatalf("rotate: %d %s", code, b)
	}
	if got := fieldNames(t, b); !sameSet(got, want) {
		t.Errorf("rotate fields %v, want %v", got, want)
	}
	newKey := fieldString(t, b, "key")
	if newKey == created.Key || fieldString(t, b, "id") != created.ID || apikey.CheckFormat(newKey) != nil {
		t.Fatalf("rotate answer %s", b)
	}
	if liveAuthEntry(t, e, hash) {
		t.Error("old auth entry survives rotation")
	}
	if n, _ := e.rdb.Exists(ctx, apikey.AuthKey(apikey.Hash(pepper, newKey))).Result(); n != 1 {
		t.Error("no auth entry for the rotated key")
	}
	code, b = e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+created.Key, "")
	expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
	if code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+newKey, ""); code != http.StatusOK {
		t.Fatalf("billing with rotated key: %d %s", code, b)
	}

	// Delete: 204, the key stops working, the record stays as revoked.
	code, b = e.admin(t, "DELETE", "/admin/v1/keys/"+created.ID, "")
	if code != http.StatusNoContent || len(b) != 0 {
		t.Fatalf("delete: %d %s", code, b)
	}
	code, b = e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+newKey, "")
	expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
	if liveAuthEntry(t, e, apikey.Hash(pepper, newKey)) {
		t.Error("auth entry survives deletion")
	}
	code, b = e.admin(t, "GET", "/admin/v1/keys/"+created.ID, "")
	if code != http.StatusOK || fieldString(t, b, "status") != "revoked" || fieldString(t, b, "name") != "acme" {
		t.Fatalf("get after delete: %d %s", code, b)
	}
	// Deleting again is idempotent; rotating a revoked key is refused.
	if code, b := e.admin(t, "DELETE", "/admin/v1/keys/"+created.ID, ""); code != http.StatusNoContent {
		t.Errorf("second delete: %d %s", code, b)
	}
	code, b = e.admin(t, "POST", "/admin/v1/keys/"+created.ID+"/rotate", "")
	expectError(t, code, b, http.StatusConflict, "invalid_request_error", "")

	// Unknown ids.
	for _, req := range [][2]string{
		{"GET", "/admin/v1/keys/key_0000000000000000"},
		{"GET", "/admin/v1/keys/nope"},
		{"POST", "/admin/v1/keys/key_0000000000000000/rotate"},
		{"DELETE", "/admin/v1/keys/key_0000000000000000"},
	} {
		code, b := e.admin(t, req[0], req[1], "")
		expectError(t, code, b, http.StatusNotFound, "not_found_error", "id")
	}
}

// liveAuthEntry reports whether the auth entry of hash exists and is not a
// tombstone (what a revoked key or a rotated-out hash leaves for an hour).
func liveAuthEntry(t *testing.T, e *env, hash string) bool {
	t.Helper()
	b, err := e.rdb.Get(t.Context(), apikey.AuthKey(hash)).Bytes()
	if err != nil {
		return false
	}
	var rec apikey.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("decode auth entry: %v", err)
	}
	return rec.Status != apikey.StatusRevoked
}

func TestMain(m *testing.M) {
	// Silence gin's debug route dump, as app.Serve does.
	gin.SetMode(gin.ReleaseMode)
	os.Exit(m.Run())
}

func fieldString(t *testing.T, b []byte, name string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	s, _ := m[name].(string)
	return s
}

func TestRoutingErrors(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, method, path string
		code               int
		typ                string
	}{
		{"unknown path", "GET", "/nope", http.StatusNotFound, "not_found_error"},
		{"unknown admin path", "GET", "/admin/v1/nope", http.StatusNotFound, "not_found_error"},
		{"wrong method on keys", "PUT", "/admin/v1/keys", http.StatusMethodNotAllowed, "invalid_request_error"},
		{"wrong method on billing", "POST", "/v1/dashboard/billing/usage", http.StatusMethodNotAllowed, "invalid_request_error"},
		{"wrong method on healthz", "DELETE", "/healthz", http.StatusMethodNotAllowed, "invalid_request_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := e.admin(t, tt.method, tt.path, "")
			expectError(t, code, b, tt.code, tt.typ, "")
		})
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, b := e.do(t, "GET", p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, code, b)
		}
	}
}

func TestBillingAuth(t *testing.T) {
	e := newEnv(t)
	k := e.createKey(t, `{"name":"a","tier":"basic"}`)
	for _, auth := range []string{
		"", "Bearer ", "Bearer sk-", "Bearer " + k.Key + "x", "Bearer " + adminToken, "Basic " + k.Key, k.Key,
		"Bearer sk-" + strings.Repeat("A", 48),
	} {
		code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", auth, "")
		expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
		if msg := errorMessage(t, b); msg != "Invalid API key provided" {
			t.Errorf("message %q", msg)
		}
	}
}

func errorMessage(t *testing.T, b []byte) string {
	t.Helper()
	var e apiError
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	return e.Error.Message
}

// event is one usage_events row of the tests.
type event struct {
	id, keyID, model                    string
	at                                  time.Time
	prompt, hit, miss, completion, reas uint64
	cost                                string
}

// insert writes events in one batch over the native protocol, as the meter does.
func (e *env) insert(t *testing.T, evs ...event) {
	t.Helper()
	ctx := t.Context()
	batch, err := e.ch.PrepareBatch(ctx, "INSERT INTO "+database+".usage_events (event_id, request_id, started_at, finished_at,"+
		" key_id, key_prefix, tier, model, upstream_model, thinking, stream, status, error_type, outcome,"+
		" prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens, usage_source,"+
		" latency_ms, ttft_ms, gateway, trace_id, price_version, cost_usd, schema_version)")
	if err != nil {
		t.Fatalf("prepare batch: %v", err)
	}
	for _, ev := range evs {
		err := batch.Append(ev.id, "req-"+ev.id, ev.at, ev.at.Add(time.Second),
			ev.keyID, "sk-abc...", "pro", ev.model, ev.model, uint8(0), uint8(1), uint16(200), "", "completed",
			ev.prompt, ev.hit, ev.miss, ev.completion, ev.reas, "reported",
			uint32(1000), uint32(100), "gw-1", "", "2026-01-01", decimal.RequireFromString(ev.cost), uint8(1))
		if err != nil {
			t.Fatalf("append %s: %v", ev.id, err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send batch: %v", err)
	}
}

// Prices (2026-01-01, nano-USD per token): flash miss 220, hit 5, output
// 440; pro miss 2800, hit 24, output 5600.
func seed(t *testing.T, e *env, keyA, keyB string) {
	t.Helper()
	may := func(d, h, m, s int) time.Time { return time.Date(2026, 5, d, h, m, s, 0, time.UTC) }
	dup := event{id: "e3", keyID: keyA, model: "deepseek-v4-flash", at: may(19, 8, 0, 0), prompt: 10, hit: 10, completion: 5, cost: "0.000002250"}
	e.insert(t,
		// Last month: never in May's figures.
		event{id: "e0", keyID: keyA, model: "deepseek-v4-flash", at: time.Date(2026, 4, 30, 23, 59, 59, 0, time.UTC), prompt: 7777, miss: 7777, completion: 1, cost: "0.001711380"},
		event{id: "e1", keyID: keyA, model: "deepseek-v4-flash", at: may(1, 0, 0, 0), prompt: 100, hit: 40, miss: 60, completion: 50, cost: "0.000035400"},
		event{id: "e2", keyID: keyA, model: "deepseek-v4-pro", at: may(19, 23, 59, 59), prompt: 1000, miss: 1000, completion: 200, reas: 150, cost: "0.003920000"},
		dup,
		// Another key.
		event{id: "b1", keyID: keyB, model: "deepseek-v4-flash", at: may(10, 0, 0, 0), prompt: 5, miss: 5, completion: 5, cost: "0.000003300"},
		event{id: "b2", keyID: keyB, model: "deepseek-v4-flash", at: may(11, 0, 0, 0), prompt: 5, miss: 5, completion: 5, cost: "0.000003300"},
	)
	// A redelivered event, stored again by a second insert: counted once.
	e.insert(t, dup)
	var stored uint64
	if err := e.ch.QueryRow(t.Context(), "SELECT count() FROM "+database+".usage_events WHERE event_id = 'e3'").Scan(&stored); err != nil || stored != 2 {
		t.Fatalf("duplicate rows stored: %d (%v); the test needs both copies on disk", stored, err)
	}
}

func TestBillingUsage(t *testing.T) {
	e := newEnv(t)
	a := e.createKey(t, `{"name":"a","tier":"pro","monthly_limit":7}`)
	b := e.createKey(t, `{"name":"b","tier":"basic","monthly_limit":1}`)
	c := e.createKey(t, `{"name":"c","tier":"enterprise"}`)
	seed(t, e, a.ID, b.ID)
	// d has a gateway counter ahead of ClickHouse (requests admitted, not yet
	// metered): billing reports what enforcement counts.
	d := e.createKey(t, `{"name":"d","tier":"enterprise"}`)
	if err := e.rdb.Set(t.Context(), apikey.MonthCounterKey(d.ID, apikey.Month(now)), 5, 0).Err(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, key, want string
	}{
		{
			name: "enforcement counter wins over metered rows", key: d.Key,
			want: `{"object":"billing.usage","key_prefix":"` + d.KeyPrefix + `","tier":"enterprise","monthly_requests":5,"monthly_limit":10000,` +
				`"remaining":9995,"usage_percent":0.1,"total_prompt_tokens":0,"total_completion_tokens":0}`,
		},
		{
			// 3 requests in May (e1, e2, e3 once); 3/7 = 42.857% -> 42.9.
			name: "this month, duplicate once, last month excluded", key: a.Key,
			want: `{"object":"billing.usage","key_prefix":"` + a.KeyPrefix + `","tier":"pro","monthly_requests":3,"monthly_limit":7,` +
				`"remaining":4,"usage_percent":42.9,"total_prompt_tokens":1110,"total_completion_tokens":255}`,
		},
		{
			name: "over the limit: remaining is 0", key: b.Key,
			want: `{"object":"billing.usage","key_prefix":"` + b.KeyPrefix + `","tier":"basic","monthly_requests":2,"monthly_limit":1,` +
				`"remaining":0,"usage_percent":200,"total_prompt_tokens":10,"total_completion_tokens":10}`,
		},
		{
			name: "no usage", key: c.Key,
			want: `{"object":"billing.usage","key_prefix":"` + c.KeyPrefix + `","tier":"enterprise","monthly_requests":0,"monthly_limit":10000,` +
				`"remaining":10000,"usage_percent":0,"total_prompt_tokens":0,"total_completion_tokens":0}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+tt.key, "")
			if code != http.StatusOK || string(body) != tt.want {
				t.Errorf("got %d %s\nwant %s", code, body, tt.want)
			}
		})
	}
}

func TestUsageReport(t *testing.T) {
	e := newEnv(t)
	a := e.createKey(t, `{"name":"a","tier":"pro"}`)
	b := e.createKey(t, `{"name":"b","tier":"basic"}`)
	seed(t, e, a.ID, b.ID)

	row := func(group, val string, req, prompt, hit, miss, compl, reas int, cost string) string {
		return `{"` + group + `":"` + val + `","requests":` + itoa(req) + `,"prompt_tokens":` + itoa(prompt) +
			`,"cache_hit_tokens":` + itoa(hit) + `,"cache_miss_tokens":` + itoa(miss) + `,"completion_tokens":` + itoa(compl) +
			`,"reasoning_tokens":` + itoa(reas) + `,"cost_usd":"` + cost + `"}`
	}
	list := func(rows ...string) string { return `{"object":"list","data":[` + strings.Join(rows, ",") + `]}` }
	tests := []struct {
		name, query, want string
	}{
		{
			name:  "by day, both bounds inclusive, duplicate counted once",
			query: "key_id=" + a.ID + "&from=2026-04-30&to=2026-05-19&group_by=day",
			want: list(
				row("day", "2026-04-30", 1, 7777, 0, 7777, 1, 0, "0.001711380"),
				row("day", "2026-05-01", 1, 100, 40, 60, 50, 0, "0.000035400"),
				row("day", "2026-05-19", 2, 1010, 10, 1000, 205, 150, "0.003922250"),
			),
		},
		{
			name:  "one day",
			query: "key_id=" + a.ID + "&from=2026-05-19&to=2026-05-19",
			want:  list(row("day", "2026-05-19", 2, 1010, 10, 1000, 205, 150, "0.003922250")),
		},
		{
			name:  "by model, default period is this month to today",
			query: "key_id=" + a.ID + "&group_by=model",
			want: list(
				row("model", "deepseek-v4-flash", 2, 110, 50, 60, 55, 0, "0.000037650"),
				row("model", "deepseek-v4-pro", 1, 1000, 0, 1000, 200, 150, "0.003920000"),
			),
		},
		{
			name:  "all keys by model",
			query: "from=2026-05-01&to=2026-05-31&group_by=model",
			want: list(
				row("model", "deepseek-v4-flash", 4, 120, 50, 70, 65, 0, "0.000044250"),
				row("model", "deepseek-v4-pro", 1, 1000, 0, 1000, 200, 150, "0.003920000"),
			),
		},
		{
			name:  "nothing in range",
			query: "key_id=" + a.ID + "&from=2026-03-01&to=2026-03-31",
			want:  list(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.admin(t, "GET", "/admin/v1/usage?"+tt.query, "")
			if code != http.StatusOK || string(body) != tt.want {
				t.Errorf("got %d %s\nwant %s", code, body, tt.want)
			}
		})
	}

	bad := []struct{ name, query, param string }{
		{"bad from", "from=2026-5-1", "from"},
		{"bad to", "to=tomorrow", "to"},
		{"to before from", "from=2026-05-10&to=2026-05-09", "to"},
		{"bad group", "group_by=week", "group_by"},
		{"bad group case", "group_by=Key", "group_by"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.admin(t, "GET", "/admin/v1/usage?"+tt.query, "")
			expectError(t, code, body, http.StatusBadRequest, "invalid_request_error", tt.param)
		})
	}
}

func itoa(n int) string { return decimal.NewFromInt(int64(n)).String() }

func TestRedisDownIs503(t *testing.T) {
	e := newEnv(t)
	k := e.createKey(t, `{"name":"a","tier":"basic"}`)
	e.redis.Stop(t)
	code, b := e.admin(t, "POST", "/admin/v1/keys", `{"name":"b","tier":"basic"}`)
	expectError(t, code, b, http.StatusServiceUnavailable, "service_unavailable", "")
	code, b = e.admin(t, "GET", "/admin/v1/keys", "")
	expectError(t, code, b, http.StatusServiceUnavailable, "service_unavailable", "")
	// A backend outage is not an invalid key.
	code, b = e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+k.Key, "")
	expectError(t, code, b, http.StatusServiceUnavailable, "service_unavailable", "")
	if code, b := e.do(t, "GET", "/readyz", "", ""); code != http.StatusServiceUnavailable {
		t.Errorf("readyz with redis down: %d %s", code, b)
	}
	if code, _ := e.do(t, "GET", "/healthz", "", ""); code != http.StatusOK {
		t.Errorf("healthz with redis down: %d", code)
	}
}
