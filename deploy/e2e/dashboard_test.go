package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// TestDashboardClickPath drives the web dashboard in headless Chromium
// against the whole stack, along the path an operator and a key holder
// take: sign in (a wrong token first), create a key in the form, send chat
// requests through the gateway with the key read from the page, watch the
// operator's usage (totals, exact cost, charts, CSV) reach what was sent,
// see the same numbers in the key holder's view, regenerate the key there
// (both gateways refuse the old key within a second, the new one works),
// then rotate and revoke by clicks and check that the gateway refuses the
// old keys.
func TestDashboardClickPath(t *testing.T) {
	chromium := chromiumPath(t)
	s := startStack(t, 2) // two gateways: a regenerated key must be refused by both
	b := newBrowser(t, chromium)
	gw := s.gatewayURLs[0]
	today := time.Now().UTC().Format(time.DateOnly)

	// Sign in: / redirects to the dashboard; a wrong token shows the API's message.
	b.do(chromedp.Navigate(s.adminURL+"/"), chromedp.WaitVisible(chromedp.ID("signin-form")))
	if u := b.eval(`location.pathname`); u != "/dashboard/" {
		t.Fatalf("/ led to %q, want /dashboard/", u)
	}
	b.do(chromedp.SendKeys(chromedp.ID("admin-token"), "not-the-token"), chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("signin-error")))
	if msg := b.text("#signin-error"); !strings.Contains(msg, "Invalid admin token") {
		t.Errorf("sign-in error shows %q, want the API's message", msg)
	}
	b.shot("signin")
	b.clear("#admin-token")
	b.do(chromedp.SendKeys(chromedp.ID("admin-token"), s.adminToken),
		chromedp.Click(chromedp.ID("signin-submit")), chromedp.WaitVisible(chromedp.ID("app")))

	// Create a key with the form; the page shows it once.
	b.do(chromedp.Click(chromedp.ID("new-key")), chromedp.WaitVisible(chromedp.ID("create-dialog")),
		chromedp.SendKeys(chromedp.ID("new-name"), "finance-e2e"),
		chromedp.SetValue(chromedp.ID("new-tier"), "basic"),
		chromedp.SendKeys(chromedp.ID("new-limit"), "40"),
		chromedp.Click(chromedp.ID("create-submit")), chromedp.WaitVisible(chromedp.ID("secret-dialog")))
	key := b.value("#secret-key")
	keyID := b.attr("#secret-dialog", "data-key-id")
	if !strings.HasPrefix(key, "sk-") || !strings.HasPrefix(keyID, "key_") {
		t.Fatalf("the page shows key %q (id %q) after create", redact(key), keyID)
	}
	b.shot("key-created")
	b.do(chromedp.Click(chromedp.ID("secret-done")), chromedp.WaitNotVisible(chromedp.ID("secret-dialog")))
	if v := b.value("#secret-key"); v != "" {
		t.Errorf("the key stays in the page after the dialog closed")
	}
	row := `tr[data-key-id="` + keyID + `"]`
	b.do(chromedp.WaitVisible(chromedp.CSS(row)))
	if got := b.text(row); !strings.Contains(got, "finance-e2e") || !strings.Contains(got, "basic") || !strings.Contains(got, "40") || !strings.Contains(got, "active") {
		t.Errorf("keys table row %q lacks name, tier, limit or status", got)
	}

	// Requests through the gateway with the key read from the page.
	// Two models, so that the per-model charts and table have two rows.
	const sent = 3
	for i, model := range []string{"deepseek-v4-flash", "deepseek-v4-pro", "deepseek-v4-flash"} {
		if code, body := chatModel(t, gw, key, model); code != 200 {
			t.Fatalf("chat %d (%s) with the dashboard's key: %d %s", i, model, code, body)
		}
	}

	// Operator usage: refresh until the metered numbers arrive.
	b.do(chromedp.SetValue(chromedp.ID("usage-key"), keyID))
	b.poll("operator usage shows the requests sent", 60*time.Second, func() (bool, string) {
		b.do(chromedp.Click(chromedp.ID("refresh-usage")), chromedp.WaitEnabled(chromedp.ID("refresh-usage")))
		got := b.text("#total-requests")
		return got == strconv.Itoa(sent), "total requests " + got
	})
	var byDay, byModel struct {
		Data []struct {
			Day, Model string
			Requests   int    `json:"requests"`
			CostUSD    string `json:"cost_usd"`
		} `json:"data"`
	}
	getJSON(t, s.adminURL+"/admin/v1/usage?group_by=day&key_id="+keyID, s.adminToken, &byDay)
	getJSON(t, s.adminURL+"/admin/v1/usage?group_by=model&key_id="+keyID, s.adminToken, &byModel)
	var costs []string
	for _, r := range byDay.Data {
		costs = append(costs, r.CostUSD)
	}
	wantCost := sumDecimal(t, costs)
	if got := b.attr("#total-cost", "data-exact"); got != wantCost {
		t.Errorf("page total cost %q, API sum %q", got, wantCost)
	}
	if got := b.text("#total-cost"); got != "$"+wantCost {
		t.Errorf("page shows cost %q, want $%s", got, wantCost)
	}
	models := b.text("#model-body")
	for _, m := range byModel.Data {
		if !strings.Contains(models, m.Model) || !strings.Contains(models, m.CostUSD) {
			t.Errorf("model table %q lacks %s with %s", models, m.Model, m.CostUSD)
		}
	}
	if bars := b.eval(`[...document.querySelectorAll('#chart-day-requests rect.bar title')].map(t => t.textContent).join('|')`); !strings.Contains(bars, today+": 3 requests") {
		t.Errorf("requests-per-day chart has no bar %q: %s", today+": 3 requests", bars)
	}
	if len(byModel.Data) != 2 {
		t.Errorf("usage by model: %+v, want two models", byModel.Data)
	}
	if n := b.eval(`String(document.querySelectorAll('#chart-model-cost rect.bar').length)`); n != strconv.Itoa(len(byModel.Data)) {
		t.Errorf("cost-per-model chart has %s bars, want %d", n, len(byModel.Data))
	}
	b.shot("operator")

	// CSV download: the browser saves what the API answers for text/csv.
	csv := b.downloadCSV(t)
	if !strings.HasPrefix(csv, "day,requests,prompt_tokens,") || !strings.Contains(csv, "\n"+today+",3,") || !strings.Contains(csv, ","+wantCost+"\n") {
		t.Errorf("downloaded CSV:\n%s", csv)
	}

	// Key-holder view: a wrong key shows the API's message, the right one the numbers.
	b.do(chromedp.Navigate(s.adminURL+"/dashboard/me"), chromedp.WaitVisible(chromedp.ID("key-form")),
		chromedp.SendKeys(chromedp.ID("api-key"), "sk-not-a-key"), chromedp.Click(chromedp.ID("key-submit")),
		chromedp.WaitVisible(chromedp.ID("key-error")))
	if msg := b.text("#key-error"); !strings.Contains(msg, "Invalid API key") {
		t.Errorf("key error shows %q", msg)
	}
	b.clear("#api-key")
	b.do(chromedp.SendKeys(chromedp.ID("api-key"), key),
		chromedp.Click(chromedp.ID("key-submit")), chromedp.WaitVisible(chromedp.ID("app")))
	var bill struct {
		MonthlyRequests int64   `json:"monthly_requests"`
		MonthlyLimit    int64   `json:"monthly_limit"`
		Remaining       int64   `json:"remaining"`
		UsagePercent    float64 `json:"usage_percent"`
		Prompt          int64   `json:"total_prompt_tokens"`
		Completion      int64   `json:"total_completion_tokens"`
	}
	getJSON(t, gw+"/v1/dashboard/billing/usage", key, &bill)
	if bill.MonthlyRequests != sent || bill.MonthlyLimit != 40 || bill.Remaining != 40-sent {
		t.Errorf("billing API says %+v", bill)
	}
	for sel, want := range map[string]string{
		"#requests-used":     strconv.Itoa(sent),
		"#monthly-limit":     "40",
		"#remaining":         strconv.Itoa(40 - sent),
		"#usage-percent":     "7.5%",
		"#prompt-tokens":     groupDigits(bill.Prompt),
		"#completion-tokens": groupDigits(bill.Completion),
	} {
		if got := b.text(sel); got != want {
			t.Errorf("key-holder view %s shows %q, want %q", sel, got, want)
		}
	}
	if bars := b.eval(`[...document.querySelectorAll('#chart-requests rect.bar title')].map(t => t.textContent).join('|')`); !strings.Contains(bars, today+": 3 requests") {
		t.Errorf("key-holder chart has no bar for today with 3 requests: %s", bars)
	}
	if b.value("#api-key") != "" || strings.Contains(b.eval(`JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + location.href`), key) {
		t.Errorf("the API key stays in the input, in storage or in the URL")
	}
	b.shot("me")

	// Regenerate by clicks in the key holder's view: the new key is shown
	// once, every gateway refuses the old one within a second (each had it
	// cached), the new one works on all, and the page goes on with it,
	// showing the key's usage from before and after.
	original := key
	for _, g := range s.gatewayURLs {
		if code, _, body := chat(t, g, key, "before regenerate"); code != 200 {
			t.Fatalf("chat on %s before regenerating: %d %s", g, code, body)
		}
	}
	prefixBefore := b.text("#session-key")
	b.do(chromedp.Click(chromedp.ID("regenerate")), chromedp.WaitVisible(chromedp.ID("confirm-dialog")))
	if got := b.text("#confirm-text"); !strings.Contains(got, prefixBefore) {
		t.Errorf("the confirmation %q does not name the current key %s", got, prefixBefore)
	}
	b.shot("regenerate-confirm")
	b.do(chromedp.Click(chromedp.ID("confirm-ok")), chromedp.WaitVisible(chromedp.ID("secret-dialog")))
	shown := time.Now()
	regenerated := b.value("#secret-key")
	if title := b.text("#secret-title"); title != "Key regenerated" || !strings.HasPrefix(regenerated, "sk-") || regenerated == key {
		t.Fatalf("after regenerate the dialog shows %q with key %q", title, redact(regenerated))
	}
	refusedEverywhereWithin(t, s.gatewayURLs, original, shown, time.Second)
	b.shot("regenerated")
	b.do(chromedp.Click(chromedp.ID("secret-done")), chromedp.WaitNotVisible(chromedp.ID("secret-dialog")))
	if v := b.value("#secret-key"); v != "" {
		t.Errorf("the regenerated key stays in the page after the dialog closed")
	}
	if got := b.text("#session-key"); got == prefixBefore || !strings.HasPrefix(regenerated, strings.TrimSuffix(got, "...")) {
		t.Errorf("the page shows key prefix %q after regenerating (before: %q)", got, prefixBefore)
	}
	for _, g := range s.gatewayURLs {
		if code, _, body := chat(t, g, regenerated, "regenerated"); code != 200 {
			t.Errorf("the regenerated key on %s: %d %s", g, code, body)
		}
	}
	b.do(chromedp.Click(chromedp.ID("refresh")), chromedp.WaitEnabled(chromedp.ID("refresh")))
	if got := b.text("#alert"); got != "" {
		t.Errorf("refresh with the regenerated key shows %q", got)
	}
	getJSON(t, gw+"/v1/dashboard/billing/usage", regenerated, &bill)
	if min := int64(sent + 2*len(s.gatewayURLs)); bill.MonthlyRequests < min {
		t.Errorf("usage of the regenerated key: %d requests, want at least %d (before and after together)", bill.MonthlyRequests, min)
	}
	if got := b.text("#requests-used"); got != groupDigits(bill.MonthlyRequests) {
		t.Errorf("key-holder view shows %s requests after regenerating, the API %d", got, bill.MonthlyRequests)
	}
	if strings.Contains(b.eval(`JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + location.href`), regenerated) {
		t.Errorf("the regenerated key is in storage or in the URL")
	}
	key = regenerated

	// Rotate by clicks: the page shows the new key once; the old one gets 401.
	b.do(chromedp.Navigate(s.adminURL+"/dashboard/"), chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.Click(chromedp.CSS(row+` button[data-action="rotate"]`)), chromedp.WaitVisible(chromedp.ID("confirm-dialog")))
	b.shot("rotate-confirm")
	b.do(chromedp.Click(chromedp.ID("confirm-ok")), chromedp.WaitVisible(chromedp.ID("secret-dialog")))
	rotated := b.value("#secret-key")
	if title := b.text("#secret-title"); title != "Key rotated" || !strings.HasPrefix(rotated, "sk-") || rotated == key {
		t.Fatalf("after rotate the dialog shows %q with key %q", title, redact(rotated))
	}
	b.do(chromedp.Click(chromedp.ID("secret-done")), chromedp.WaitNotVisible(chromedp.ID("secret-dialog")))
	refusedWithin(t, gw, key, 5*time.Second)
	if code, _, body := chat(t, gw, rotated, "rotated"); code != 200 {
		t.Errorf("the rotated key: %d %s", code, body)
	}

	// Disable and enable by clicks.
	b.do(chromedp.Click(chromedp.CSS(row+` button[data-action="disable"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+`[data-status="disabled"] button[data-action="enable"]`)))
	refusedWithin(t, gw, rotated, 5*time.Second)
	b.do(chromedp.Click(chromedp.CSS(row+` button[data-action="enable"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+`[data-status="active"] button[data-action="disable"]`)))
	acceptedWithin(t, gw, rotated, 5*time.Second)

	// Revoke by clicks (with a confirmation); the key leaves the table.
	b.do(chromedp.Click(chromedp.CSS(row+` button[data-action="revoke"]`)), chromedp.WaitVisible(chromedp.ID("confirm-dialog")),
		chromedp.Click(chromedp.ID("confirm-ok")), chromedp.WaitNotPresent(chromedp.CSS(row)),
		chromedp.Click(chromedp.ID("show-revoked")), chromedp.WaitVisible(chromedp.CSS(row+`[data-status="revoked"]`)))
	if got := b.text("#alert"); !strings.Contains(got, "revoked") {
		t.Errorf("notice after revoke: %q", got)
	}
	refusedWithin(t, gw, rotated, 5*time.Second)
	b.shot("keys-revoked")

	// Sign out forgets the token.
	b.do(chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("signin-form")))
	if got := b.eval(`String(sessionStorage.length)`); got != "0" {
		t.Errorf("session storage holds %s entries after sign-out", got)
	}

	b.checkConsole()
	for _, p := range append([]*proc{s.admin}, s.gateways...) {
		logs, _ := os.ReadFile(p.log)
		for _, k := range []string{original, key, rotated, s.adminToken} {
			if strings.Contains(string(logs), k) {
				t.Errorf("%s log contains a key or the admin token", p.name)
			}
		}
	}
}

// chromiumPath finds Debian's chromium, installing it with apt-get when it
// is missing (CI runs as root). It fails, never skips, when that fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Geteuid() != 0 {
		t.Fatal("chromium is not installed and this test is not root: run `apt-get install -y chromium` (Debian package)")
	}
	install := func(args ...string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 2000))
		}
		return nil
	}
	t.Log("chromium is missing; installing it with apt-get")
	err := install("install", "-y", "--no-install-recommends", "chromium")
	if err != nil {
		// The package lists may be stale or absent (a fresh container).
		err = errors.Join(err, install("update"))
		if err2 := install("install", "-y", "--no-install-recommends", "chromium"); err2 != nil {
			t.Fatalf("cannot install chromium, which the dashboard test needs: %v", errors.Join(err, err2))
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("apt-get installed chromium but it is not on PATH: %v", err)
	}
	return p
}

// page is one headless Chromium tab and what the test saw in its console.
type page struct {
	t        *testing.T
	ctx      context.Context
	mu       sync.Mutex
	problems []string
}

func newBrowser(t *testing.T, execPath string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		// Without these Chromium keeps calling home, which the closed
		// network of CI answers slowly or never.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1366, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelTab(); cancelAlloc() })
	p := &page{t: t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium %s: %v", execPath, err)
	}
	err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg = fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, d.Text)
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
		case *cdplog.EventEntryAdded:
			// Network errors are expected (the wrong token's 401); script
			// errors and security ones (CSP violations) are not.
			if ev.Entry.Level == cdplog.EntryLevelError && ev.Entry.Source != cdplog.EntrySourceNetwork {
				msg = fmt.Sprintf("console %s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		}
		if msg != "" {
			p.mu.Lock()
			p.problems = append(p.problems, msg)
			p.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("listen to the tab: %v", err)
	}
	return p
}

func (p *page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.shot("failure")
		p.t.Fatalf("browser: %v", err)
	}
}

// clear empties an input, as selecting its text and deleting it would.
func (p *page) clear(sel string) {
	p.t.Helper()
	p.eval(`(() => { const e = document.querySelector(` + strconv.Quote(sel) + `); e.value = ''; e.focus(); return '' })()`)
}

func (p *page) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("read %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func (p *page) value(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Value(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("read the value of %s: %v", sel, err)
	}
	return s
}

func (p *page) attr(sel, name string) string {
	p.t.Helper()
	a, err := chromedp.Run(p.ctx, chromedp.AttributeValue(chromedp.CSS(sel), name))
	if err != nil {
		p.t.Fatalf("read %s of %s: %v", name, sel, err)
	}
	return a.Value
}

func (p *page) eval(js string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return s
}

// poll runs check until it reports true or the timeout passes.
func (p *page) poll(what string, timeout time.Duration, check func() (bool, string)) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			p.shot("failure")
			p.t.Fatalf("%s: not within %v (last: %s)", what, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// shot saves a full-page screenshot in the test's directory and a copy at
// /tmp/qyai-dashboard-<name>.png for people to look at.
func (p *page) shot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
		return
	}
	for _, path := range []string{filepath.Join(p.t.TempDir(), name+".png"), "/tmp/qyai-dashboard-" + name + ".png"} {
		if err := os.WriteFile(path, png, 0o644); err != nil {
			p.t.Errorf("save screenshot: %v", err)
		}
	}
	p.t.Logf("screenshot %s: /tmp/qyai-dashboard-%s.png", name, name)
}

// downloadCSV clicks the page's CSV button and returns the saved file.
func (p *page) downloadCSV(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	progress := chromedp.Events(ctx, browser.DownloadProgress)
	p.do(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		enabled := true
		_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: &enabled,
		})
		return err
	}), chromedp.Click(chromedp.ID("download-csv")))
	for ev, err := range progress {
		if err != nil {
			t.Fatalf("CSV download: %v", err)
		}
		switch ev.State {
		case browser.DownloadProgressStateCompleted:
			b, err := os.ReadFile(filepath.Join(dir, ev.GUID))
			if err != nil {
				t.Fatalf("CSV download: %v", err)
			}
			if status := p.text("#csv-status"); !strings.Contains(status, "qyai-usage-") {
				t.Errorf("CSV status %q", status)
			}
			return string(b)
		case browser.DownloadProgressStateCanceled:
			t.Fatal("CSV download canceled")
		}
	}
	t.Fatal("CSV download did not complete")
	return ""
}

// checkConsole fails the test on script exceptions and script or security
// (CSP) errors the pages logged.
func (p *page) checkConsole() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.problems {
		p.t.Errorf("browser: %s", m)
	}
}

// chatModel sends one small chat completion for model.
func chatModel(t *testing.T, gw, key, model string) (int, string) {
	t.Helper()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"How much did this cost?"}]}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, gw+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// refusedWithin polls the gateway until it refuses key with 401.
func refusedWithin(t *testing.T, gw, key string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		code, _, _ := chat(t, gw, key, "after")
		if code == 401 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the gateway still answers %d to the old key %v after the click", code, limit)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// acceptedWithin polls the gateway until it accepts key.
func acceptedWithin(t *testing.T, gw, key string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		code, _, body := chat(t, gw, key, "enabled")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the gateway still refuses the enabled key %v after the click: %d %s", limit, code, body)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sumDecimal adds decimal strings with 9 decimals exactly.
func sumDecimal(t *testing.T, amounts []string) string {
	t.Helper()
	sum := new(big.Int)
	for _, a := range amounts {
		intPart, frac, _ := strings.Cut(a, ".")
		n, ok := new(big.Int).SetString(intPart+(frac + "000000000")[:9], 10)
		if !ok {
			t.Fatalf("not a decimal: %q", a)
		}
		sum.Add(sum, n)
	}
	s := sum.String()
	if len(s) < 10 {
		s = strings.Repeat("0", 10-len(s)) + s
	}
	return s[:len(s)-9] + "." + s[len(s)-9:]
}

// groupDigits formats n as the page does (en-US digit groups).
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// redact keeps a key out of test output.
func redact(k string) string {
	if len(k) > 8 {
		return k[:6] + "…"
	}
	return k
}
