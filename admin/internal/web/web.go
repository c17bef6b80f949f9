// Package web is the dashboard that admin serves at /dashboard/: plain HTML,
// CSS and JavaScript modules embedded in the binary, with no build step and
// nothing loaded from elsewhere. The pages hold no secret of their own: the
// operator view calls /admin/v1 with the admin token the operator types in,
// the key-holder view (/dashboard/me) calls /v1/dashboard/billing with the
// caller's own API key. Neither is ever sent to or logged by this handler.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is where the dashboard is mounted.
const Prefix = "/dashboard/"

// contentSecurityPolicy allows only this origin: no inline script or style,
// no framing, no form posts elsewhere. Data URLs are allowed for images only
// (none are used today; browsers may synthesise them for SVG).
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// contentTypes are set explicitly rather than from the system's MIME table,
// which differs between machines (a wrong JavaScript type breaks modules).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// pages maps the dashboard's page paths to their files.
var pages = map[string]string{
	Prefix:         "index.html",
	Prefix + "me":  "me.html",
	Prefix + "me/": "me.html",
}

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the dashboard: the pages under /dashboard/, their assets
// under /dashboard/assets/, and a redirect from / to /dashboard/. Every
// answer carries the security headers (CSP, nosniff, no referrer, no
// framing).
func Handler() http.Handler {
	assets := map[string]asset{}
	root, _ := fs.Sub(static, "static")
	_ = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			return nil
		}
		b, err := fs.ReadFile(root, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		assets[p] = asset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w.Header())
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := r.URL.Path
		if p == "/" || p == strings.TrimSuffix(Prefix, "/") {
			http.Redirect(w, r, Prefix, http.StatusFound)
			return
		}
		name, ok := pages[p]
		if !ok && strings.HasPrefix(p, Prefix+"assets/") {
			name = strings.TrimPrefix(p, Prefix)
		}
		a, ok := assets[name]
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", a.contentType)
		// Revalidate every time: the files change with the binary, and a
		// 304 costs nothing.
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("ETag", a.etag)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	})
}

// secure sets the headers every dashboard answer carries.
func secure(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}
