package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qyai/qyai/admin/internal/adminauth"
	"github.com/qyai/qyai/admin/internal/audit"
	auditch "github.com/qyai/qyai/admin/internal/audit/clickhouse"
	auditredis "github.com/qyai/qyai/admin/internal/audit/redis"
	"github.com/qyai/qyai/admin/internal/httpapi"
	"github.com/qyai/qyai/pkg/apikey"
)

func TestUpdateDisableEnable(t *testing.T) {
	e := newEnv(t)
	k := e.createKey(t, `{"name":"acme","tier":"basic","rpm":5,"models":["deepseek-v4-flash"]}`)
	path := "/admin/v1/keys/" + k.ID
	billingOK := func(want int) {
		t.Helper()
		code, b := e.do(t, "GET", "/v1/dashboard/billing/usage", "Bearer "+k.Key, "")
		if code != want {
			t.Fatalf("billing with the key: %d %s, want %d", code, b, want)
		}
	}
	view := func(b []byte) string {
		t.Helper()
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		delete(v, "created_at")
		delete(v, "updated_at")
		out, _ := json.Marshal(v)
		return string(out)
	}

	tests := []struct {
		name, body string
		want       string // the key view after, without dates
	}{
		{
			name: "rename only",
			body: `{"name":"acme prod"}`,
			want: `{"id":"` + k.ID + `","key_prefix":"` + k.KeyPrefix + `","models":["deepseek-v4-flash"],"monthly_limit":1000,"name":"acme prod","rpm":5,"status":"active","tier":"basic"}`,
		},
		{
			name: "tier change resets the limits to the tier's",
			body: `{"tier":"pro"}`,
			want: `{"id":"` + k.ID + `","key_prefix":"` + k.KeyPrefix + `","models":["deepseek-v4-flash"],"monthly_limit":3000,"name":"acme prod","rpm":30,"status":"active","tier":"pro"}`,
		},
		{
			name: "tier change with a given limit",
			body: `{"tier":"enterprise","monthly_limit":42}`,
			want: `{"id":"` + k.ID + `","key_prefix":"` + k.KeyPrefix + `","models":["deepseek-v4-flash"],"monthly_limit":42,"name":"acme prod","rpm":100,"status":"active","tier":"enterprise"}`,
		},
		{
			name: "same tier keeps custom limits; models emptied means all",
			body: `{"tier":"enterprise","rpm":7,"models":[]}`,
			want: `{"id":"` + k.ID + `","key_prefix":"` + k.KeyPrefix + `","models":[],"monthly_limit":42,"name":"acme prod","rpm":7,"status":"active","tier":"enterprise"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := e.admin(t, "PATCH", path, tt.body)
			if code != http.StatusOK || view(b) != tt.want {
				t.Fatalf("PATCH %s: %d %s\nwant %s", tt.body, code, view(b), tt.want)
			}
			code, b = e.admin(t, "GET", path, "")
			if code != http.StatusOK || view(b) != tt.want {
				t.Fatalf("GET after PATCH: %d %s", code, b)
			}
		})
	}
	// The auth entry (what the gateway reads) follows.
	if auth, _ := e.rdb.Get(t.Context(), apikey.AuthKey(apikey.Hash(pepper, k.Key))).Bytes(); !strings.Contains(string(auth), `"rpm":7`) {
		t.Errorf("auth entry not updated: %s", auth)
	}

	bad := []struct{ name, body, param string }{
		{"empty object", `{}`, ""},
		{"unknown field", `{"status":"active"}`, "status"},
		{"key is not settable", `{"key":"sk-x"}`, "key"},
		{"bad tier", `{"tier":"gold"}`, "tier"},
		{"bad rpm", `{"rpm":0}`, "rpm"},
		{"name wrong type", `{"name":1}`, "name"},
		{"models wrong type", `{"models":"a"}`, "models"},
		{"not an object", `[]`, ""},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, b := e.admin(t, "PATCH", path, tt.body)
			expectError(t, code, b, http.StatusBadRequest, "invalid_request_error", tt.param)
		})
	}

	// Disable: the key stops working at once; disabling again changes nothing.
	billingOK(http.StatusOK)
	for range 2 {
		code, b := e.admin(t, "POST", path+"/disable", "")
		if code != http.StatusOK || fieldString(t, b, "status") != "disabled" {
			t.Fatalf("disable: %d %s", code, b)
		}
		billingOK(http.StatusUnauthorized)
	}
	code, b := e.admin(t, "POST", path+"/enable", "")
	if code != http.StatusOK || fieldString(t, b, "status") != "active" {
		t.Fatalf("enable: %d %s", code, b)
	}
	billingOK(http.StatusOK)

	// Revoked: no more changes.
	if code, b := e.admin(t, "DELETE", path, ""); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, b)
	}
	for _, req := range [][3]string{{"PATCH", path, `{"name":"x"}`}, {"POST", path + "/disable", ""}, {"POST", path + "/enable", ""}} {
		code, b := e.admin(t, req[0], req[1], req[2])
		expectError(t, code, b, http.StatusConflict, "invalid_request_error", "")
	}
	for _, req := range [][3]string{{"PATCH", "/admin/v1/keys/key_0000000000000000", `{"name":"x"}`},
		{"POST", "/admin/v1/keys/key_0000000000000000/disable", ""}, {"POST", "/admin/v1/keys/nope/enable", ""}} {
		code, b := e.admin(t, req[0], req[1], req[2])
		expectError(t, code, b, http.StatusNotFound, "not_found_error", "id")
	}
	// Without an admin token nothing changes.
	code, b = e.do(t, "POST", path+"/enable", "Bearer nope", "")
	expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
}

// TestAuditLandsInClickHouse: changes made with two named tokens reach
// audit_log with their actors; a flush repeated after a crash counts once;
// with ClickHouse down, changes still work and their entries wait in Redis
// until it is back.
func TestAuditLandsInClickHouse(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	quiet := slog.New(slog.DiscardHandler)
	buf := auditredis.New(e.rdb, timeout)
	sink := auditch.New(e.conn, database, false, 10*time.Second)
	fl := &audit.Flusher{Buffer: buf, Sink: sink, Log: quiet, Interval: 50 * time.Millisecond, Batch: 2}

	k := e.createKey(t, `{"name":"a","tier":"basic"}`)
	if code, b := e.do(t, "PATCH", "/admin/v1/keys/"+k.ID, "Bearer "+aliceToken, `{"rpm":3}`); code != http.StatusOK {
		t.Fatalf("patch: %d %s", code, b)
	}
	if code, b := e.do(t, "POST", "/admin/v1/keys/"+k.ID+"/disable", "Bearer "+aliceToken, ""); code != http.StatusOK {
		t.Fatalf("disable: %d %s", code, b)
	}
	// A crash between insert and trim: the same entries are inserted twice.
	pending, err := buf.Oldest(ctx, 100)
	if err != nil || len(pending) != 3 {
		t.Fatalf("pending entries: %d (%v)", len(pending), err)
	}
	var first []audit.Entry
	for _, p := range pending {
		first = append(first, p.Entry)
	}
	if err := sink.Insert(ctx, first); err != nil {
		t.Fatalf("insert: %v", err)
	}
	if n, err := fl.Flush(ctx); err != nil || n != 3 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	if n, _ := buf.Len(ctx); n != 0 {
		t.Errorf("%d entries left in the buffer after a flush", n)
	}
	var stored uint64
	if err := e.ch.QueryRow(ctx, "SELECT count() FROM "+database+".audit_log").Scan(&stored); err != nil || stored != 6 {
		t.Fatalf("raw audit rows %d (%v), want 6: the test needs both copies on disk", stored, err)
	}
	got, err := sink.Entries(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"root create 1", "alice update 2", "alice disable 3"}
	if len(got) != len(want) {
		t.Fatalf("audit_log FINAL has %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, g := range got {
		if s := g.Actor + " " + g.Action + " " + itoa(int(g.Revision)); s != want[i] || g.ID != first[i].ID || !g.At.Equal(now) {
			t.Errorf("entry %d = %s (%+v), want %s", i, s, g, want[i])
		}
	}
	if got[1].Before.RPM != 10 || got[1].After.RPM != 3 || got[1].Fields[0] != "rpm" {
		t.Errorf("update entry before %d after %d fields %v", got[1].Before.RPM, got[1].After.RPM, got[1].Fields)
	}

	// ClickHouse down: changes work, entries wait, nothing is lost.
	e.click.Stop(t)
	if code, b := e.admin(t, "POST", "/admin/v1/keys/"+k.ID+"/enable", ""); code != http.StatusOK {
		t.Fatalf("enable with clickhouse down: %d %s", code, b)
	}
	if code, b := e.admin(t, "POST", "/admin/v1/keys/"+k.ID+"/rotate", ""); code != http.StatusOK {
		t.Fatalf("rotate with clickhouse down: %d %s", code, b)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if _, err := fl.Flush(fctx); err == nil {
		t.Error("Flush with clickhouse down: no error")
	}
	cancel()
	if n, _ := buf.Len(ctx); n != 2 {
		t.Fatalf("%d entries in the buffer with clickhouse down, want 2", n)
	}
	e.click.Start(t)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { fl.Run(runCtx, time.Second) })
	defer func() { stop(); wg.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err = sink.Entries(ctx, k.ID)
		if err == nil && len(got) == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit entries after clickhouse came back: %d (%v), want 5", len(got), err)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
	if got[3].Action != "enable" || got[4].Action != "rotate" || got[4].Revision != 5 || got[4].Before.Hash == got[4].After.Hash {
		t.Errorf("entries after recovery: %+v", got[3:])
	}
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestFailedAuthRateLimit(t *testing.T) {
	clk := &clock{t: now}
	e := newEnvWith(t, func(d *httpapi.Deps) {
		d.AuthFailures = adminauth.NewLimiter(3, time.Minute, clk.Now)
	})
	get := func(auth string, header ...string) (int, http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", e.url+"/admin/v1/keys", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	for i := range 3 {
		// X-Forwarded-For is not trusted: every attempt counts against the peer.
		code, _, b := get("Bearer wrong", "X-Forwarded-For", "10.0.0."+itoa(i))
		expectError(t, code, b, http.StatusUnauthorized, "authentication_error", "")
	}
	clk.Add(20 * time.Second)
	for _, auth := range []string{"Bearer wrong", ""} {
		code, h, b := get(auth)
		expectError(t, code, b, http.StatusTooManyRequests, "rate_limit_error", "")
		if ra := h.Get("Retry-After"); ra != "40" {
			t.Errorf("Retry-After %q, want 40 (the oldest failure leaves the window in 40 s)", ra)
		}
	}
	// A right token is accepted even from a blocked address (issue 11: a
	// client behind the same load balancer must not lock operators out).
	if code, _, b := get("Bearer " + adminToken); code != http.StatusOK {
		t.Errorf("right token from a blocked address: %d %s, want 200", code, b)
	}
	// The public billing endpoint and the probes are not behind the admin limit.
	code, body := e.do(t, "GET", "/v1/dashboard/billing/usage", "", "")
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
	if code, b := e.do(t, "GET", "/healthz", "", ""); code != http.StatusOK {
		t.Errorf("healthz while blocked: %d %s", code, b)
	}
	clk.Add(41 * time.Second)
	if code, _, b := get("Bearer " + adminToken); code != http.StatusOK {
		t.Fatalf("right token after the window: %d %s", code, b)
	}
	// Blocked attempts did not count: one more failure is allowed... and
	// the next two block again.
	for i, want := range []int{401, 401, 401, 429} {
		if code, _, b := get("Bearer wrong"); code != want {
			t.Fatalf("attempt %d: %d %s, want %d", i, code, b, want)
		}
	}
	for _, secret := range []string{adminToken, "Bearer wrong"} {
		if strings.Contains(e.logs.String(), secret) {
			t.Errorf("logs contain %q", secret[:6])
		}
	}
}

// TestTrustedProxy: behind a configured proxy, failures count per client
// named in X-Forwarded-For.
func TestTrustedProxy(t *testing.T) {
	e := newEnvWith(t, func(d *httpapi.Deps) {
		d.AuthFailures = adminauth.NewLimiter(2, time.Minute, func() time.Time { return now })
		d.TrustedProxies = []string{"127.0.0.1/32", "::1"}
	})
	try := func(client string) int {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", e.url+"/admin/v1/keys", nil)
		req.Header.Set("Authorization", "Bearer wrong")
		req.Header.Set("X-Forwarded-For", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for i, tc := range []struct {
		client string
		want   int
	}{
		{"203.0.113.1", 401}, {"203.0.113.1", 401}, {"203.0.113.1", 429},
		{"203.0.113.2", 401},
		// One IPv6 /64 is one client.
		{"2001:db8::1", 401}, {"2001:db8::2", 401}, {"2001:db8::3", 429}, {"2001:db8:0:1::1", 401},
	} {
		if got := try(tc.client); got != tc.want {
			t.Errorf("attempt %d from %s: %d, want %d", i, tc.client, got, tc.want)
		}
	}
}

func TestUsageByKeyAndCSV(t *testing.T) {
	e := newEnv(t)
	a := e.createKey(t, `{"name":"a","tier":"pro"}`)
	b := e.createKey(t, `{"name":"b","tier":"basic"}`)
	seed(t, e, a.ID, b.ID)
	// Keys sort by id in the report.
	first, second := a, b
	if b.ID < a.ID {
		first, second = b, a
	}
	rowsOf := map[string]string{
		a.ID: a.ID + ",3,1110,50,1060,255,150,0.003957650",
		b.ID: b.ID + ",2,10,0,10,10,0,0.000006600",
	}
	jsonOf := map[string]string{
		a.ID: `{"key_id":"` + a.ID + `","requests":3,"prompt_tokens":1110,"cache_hit_tokens":50,"cache_miss_tokens":1060,"completion_tokens":255,"reasoning_tokens":150,"cost_usd":"0.003957650"}`,
		b.ID: `{"key_id":"` + b.ID + `","requests":2,"prompt_tokens":10,"cache_hit_tokens":0,"cache_miss_tokens":10,"completion_tokens":10,"reasoning_tokens":0,"cost_usd":"0.000006600"}`,
	}
	const head = "requests,prompt_tokens,cache_hit_tokens,cache_miss_tokens,completion_tokens,reasoning_tokens,cost_usd\n"

	code, body := e.admin(t, "GET", "/admin/v1/usage?from=2026-05-01&to=2026-05-31&group_by=key", "")
	if want := `{"object":"list","data":[` + jsonOf[first.ID] + `,` + jsonOf[second.ID] + `]}`; code != http.StatusOK || string(body) != want {
		t.Errorf("group_by=key JSON: %d %s\nwant %s", code, body, want)
	}

	tests := []struct {
		name, query, accept, want, file string
	}{
		{
			name: "by key", query: "from=2026-05-01&to=2026-05-31&group_by=key", accept: "text/csv",
			want: "key_id," + head + rowsOf[first.ID] + "\n" + rowsOf[second.ID] + "\n",
			file: "qyai-usage-2026-05-01-2026-05-31-by-key.csv",
		},
		{
			name: "by day, one key, April included", query: "key_id=" + a.ID + "&from=2026-04-30&to=2026-05-19", accept: "text/csv; charset=utf-8",
			want: "day," + head +
				"2026-04-30,1,7777,0,7777,1,0,0.001711380\n" +
				"2026-05-01,1,100,40,60,50,0,0.000035400\n" +
				"2026-05-19,2,1010,10,1000,205,150,0.003922250\n",
			file: "qyai-usage-2026-04-30-2026-05-19-by-day.csv",
		},
		{
			name: "by model, csv preferred", query: "from=2026-05-01&to=2026-05-31&group_by=model", accept: "application/json;q=0.5, text/csv",
			want: "model," + head +
				"deepseek-v4-flash,4,120,50,70,65,0,0.000044250\n" +
				"deepseek-v4-pro,1,1000,0,1000,200,150,0.003920000\n",
			file: "qyai-usage-2026-05-01-2026-05-31-by-model.csv",
		},
		{
			name: "nothing in range: the header only", query: "from=2026-03-01&to=2026-03-31&group_by=key", accept: "text/csv",
			want: "key_id," + head, file: "qyai-usage-2026-03-01-2026-03-31-by-key.csv",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", e.url+"/admin/v1/usage?"+tt.query, nil)
			req.Header.Set("Authorization", "Bearer "+adminToken)
			req.Header.Set("Accept", tt.accept)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = resp.Body.Close() }()
			got, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(got) != tt.want {
				t.Errorf("got %d\n%s\nwant\n%s", resp.StatusCode, got, tt.want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename="`+tt.file+`"` {
				t.Errorf("Content-Disposition %q", cd)
			}
			if v := resp.Header.Get("Vary"); v != "Accept" {
				t.Errorf("Vary %q", v)
			}
		})
	}
	// Errors stay JSON even when CSV was asked for.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", e.url+"/admin/v1/usage?group_by=week", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Accept", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	expectError(t, resp.StatusCode, b2, http.StatusBadRequest, "invalid_request_error", "group_by")
}

func TestBillingDaily(t *testing.T) {
	e := newEnv(t)
	a := e.createKey(t, `{"name":"a","tier":"pro"}`)
	b := e.createKey(t, `{"name":"b","tier":"basic"}`)
	c := e.createKey(t, `{"name":"c","tier":"basic"}`)
	seed(t, e, a.ID, b.ID)
	days := func(nonZero map[string]string) string {
		var parts []string
		for d := 1; d <= 20; d++ { // the clock says 20 May
			day := "2026-05-" + map[bool]string{true: "0", false: ""}[d < 10] + itoa(d)
			v, ok := nonZero[day]
			if !ok {
				v = `"requests":0,"prompt_tokens":0,"completion_tokens":0`
			}
			parts = append(parts, `{"day":"`+day+`",`+v+`}`)
		}
		return `{"object":"list","data":[` + strings.Join(parts, ",") + `]}`
	}
	tests := []struct {
		name, key, want string
	}{
		{
			// April's event is not in May; the duplicate counts once.
			name: "this month per day", key: a.Key,
			want: days(map[string]string{
				"2026-05-01": `"requests":1,"prompt_tokens":100,"completion_tokens":50`,
				"2026-05-19": `"requests":2,"prompt_tokens":1010,"completion_tokens":205`,
			}),
		},
		{
			name: "another key sees only its own", key: b.Key,
			want: days(map[string]string{
				"2026-05-10": `"requests":1,"prompt_tokens":5,"completion_tokens":5`,
				"2026-05-11": `"requests":1,"prompt_tokens":5,"completion_tokens":5`,
			}),
		},
		{name: "no usage: zeros", key: c.Key, want: days(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.do(t, "GET", "/v1/dashboard/billing/daily", "Bearer "+tt.key, "")
			if code != http.StatusOK || string(body) != tt.want {
				t.Errorf("got %d %s\nwant %s", code, body, tt.want)
			}
		})
	}
	for _, auth := range []string{"", "Bearer " + adminToken, "Bearer sk-" + strings.Repeat("x", 48)} {
		code, body := e.do(t, "GET", "/v1/dashboard/billing/daily", auth, "")
		expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
	}
	// A disabled key sees nothing.
	if code, b := e.admin(t, "POST", "/admin/v1/keys/"+c.ID+"/disable", ""); code != http.StatusOK {
		t.Fatalf("disable: %d %s", code, b)
	}
	code, body := e.do(t, "GET", "/v1/dashboard/billing/daily", "Bearer "+c.Key, "")
	expectError(t, code, body, http.StatusUnauthorized, "authentication_error", "")
}
