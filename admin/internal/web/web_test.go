package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestHandlerServesAssetsWithTypesAndSecurityHeaders(t *testing.T) {
	h := Handler()
	cases := []struct {
		name, method, path string
		status             int
		contentType        string
		location           string
		contains           string
	}{
		{name: "root redirects", method: "GET", path: "/", status: http.StatusFound, location: "/dashboard/"},
		{name: "bare prefix redirects", method: "GET", path: "/dashboard", status: http.StatusFound, location: "/dashboard/"},
		{name: "operator page", method: "GET", path: "/dashboard/", status: 200, contentType: "text/html; charset=utf-8", contains: "Operator sign-in"},
		{name: "key-holder page", method: "GET", path: "/dashboard/me", status: 200, contentType: "text/html; charset=utf-8", contains: "My usage"},
		{name: "key-holder page slash", method: "GET", path: "/dashboard/me/", status: 200, contentType: "text/html; charset=utf-8", contains: "My usage"},
		{name: "stylesheet", method: "GET", path: "/dashboard/assets/css/app.css", status: 200, contentType: "text/css; charset=utf-8", contains: ":root"},
		{name: "module", method: "GET", path: "/dashboard/assets/js/operator.js", status: 200, contentType: "text/javascript; charset=utf-8", contains: "import"},
		{name: "chart module", method: "GET", path: "/dashboard/assets/js/chart.js", status: 200, contentType: "text/javascript; charset=utf-8", contains: "createElementNS"},
		{name: "icon", method: "GET", path: "/dashboard/assets/favicon.svg", status: 200, contentType: "image/svg+xml", contains: "<svg"},
		{name: "head", method: "HEAD", path: "/dashboard/assets/js/api.js", status: 200, contentType: "text/javascript; charset=utf-8"},
		{name: "unknown asset", method: "GET", path: "/dashboard/assets/js/nope.js", status: 404},
		{name: "no traversal", method: "GET", path: "/dashboard/assets/../web.go", status: 404},
		{name: "pages are not assets", method: "GET", path: "/dashboard/index.html", status: 404},
		{name: "post refused", method: "POST", path: "/dashboard/", status: http.StatusMethodNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			res := rec.Result()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", res.StatusCode, tc.status, body)
			}
			hdr := res.Header
			csp := hdr.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "frame-ancestors 'none'", "script-src 'self'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("Content-Security-Policy %q allows inline code", csp)
			}
			if got := hdr.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			if got := hdr.Get("Referrer-Policy"); got != "no-referrer" {
				t.Errorf("Referrer-Policy %q", got)
			}
			if got := hdr.Get("X-Frame-Options"); got != "DENY" {
				t.Errorf("X-Frame-Options %q", got)
			}
			if tc.contentType != "" && hdr.Get("Content-Type") != tc.contentType {
				t.Errorf("Content-Type %q, want %q", hdr.Get("Content-Type"), tc.contentType)
			}
			if tc.location != "" && hdr.Get("Location") != tc.location {
				t.Errorf("Location %q, want %q", hdr.Get("Location"), tc.location)
			}
			if tc.contains != "" && !strings.Contains(string(body), tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
		})
	}
}

func TestHandlerRevalidatesWithETag(t *testing.T) {
	h := Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/dashboard/assets/css/app.css", nil))
	etag := rec.Header().Get("ETag")
	if etag == "" || rec.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("ETag %q, Cache-Control %q", etag, rec.Header().Get("Cache-Control"))
	}
	req := httptest.NewRequest("GET", "/dashboard/assets/css/app.css", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("status %d with a matching ETag, want 304", rec.Code)
	}
}

// TestPagesLoadNothingFromElsewhere checks what the CSP would block anyway,
// so that no page depends on something it cannot have: no inline scripts,
// styles or event handlers, no remote URLs, and no innerHTML in the scripts
// (API strings go through textContent).
func TestPagesLoadNothingFromElsewhere(t *testing.T) {
	inline := regexp.MustCompile(`<script(\s[^>]*)?>\s*[^<\s]|<style|\sstyle=|\son[a-z]+=`)
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(static, p)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "")
		if strings.Contains(s, "http://") || strings.Contains(s, "https://") {
			t.Errorf("%s references a remote URL", p)
		}
		if strings.HasSuffix(p, ".html") && inline.MatchString(s) {
			t.Errorf("%s has an inline script, style or event handler: %q", p, inline.FindString(s))
		}
		if strings.HasSuffix(p, ".js") {
			for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "localStorage", "console.log"} {
				if strings.Contains(s, bad) {
					t.Errorf("%s uses %s", p, bad)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
