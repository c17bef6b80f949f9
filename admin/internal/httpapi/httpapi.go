// Package httpapi is admin's HTTP surface: the admin API under /admin/v1
// (guarded by the admin token), the public dashboard endpoints that the
// gateway passes through (billing, and key regeneration by the key
// holder), and the health probes.
//
// Handlers return an error; renderError is the one place that turns errors
// into statuses and OpenAI-shaped bodies. routes is the whole route table.
package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/qyai/qyai/admin/internal/adminauth"
	"github.com/qyai/qyai/admin/internal/billing"
	"github.com/qyai/qyai/admin/internal/keys"
	"github.com/qyai/qyai/admin/internal/web"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/redisretry"
)

// Check is one readiness dependency.
type Check struct {
	Name    string
	Timeout time.Duration
	Ping    func(ctx context.Context) error
}

// Deps is what the API serves from.
type Deps struct {
	Keys    *keys.Service
	Billing *billing.Service
	// AdminTokens guard /admin/v1; the name of the token used is the actor
	// of every change made with it.
	AdminTokens []adminauth.Token
	// AuthFailures limits failed admin authentications per client address;
	// nil means 10 per minute.
	AuthFailures *adminauth.Limiter
	// TrustedProxies are the addresses (IPs or CIDRs) whose X-Forwarded-For
	// names the client; empty: the peer address is the client.
	TrustedProxies []string
	// BillingLimit limits the public billing requests per key (they run
	// ClickHouse queries); nil means no limit.
	BillingLimit BillingLimiter
	// RegenerateLimit limits how often a key may regenerate itself; nil
	// means no limit (admin's app always sets one).
	RegenerateLimit BillingLimiter
	Ready           []Check
	// Telemetry traces requests and records their durations; nil means none.
	Telemetry *Telemetry
	// Metrics, when set, is served at GET /metrics.
	Metrics http.Handler
	Log     *slog.Logger
	Now     func() time.Time
}

// BillingLimiter takes one request of a key's budget for a public
// dashboard endpoint (billing, regenerate); when none is left it says so
// and when to retry.
type BillingLimiter interface {
	Allow(ctx context.Context, keyID string) (retryAfter time.Duration, ok bool, err error)
}

type api struct {
	Deps
	tokens *adminauth.Tokens
}

// New returns the HTTP handler of admin.
func New(d Deps) http.Handler {
	if d.AuthFailures == nil {
		d.AuthFailures = adminauth.NewLimiter(10, time.Minute, d.Now)
	}
	a := &api{Deps: d, tokens: adminauth.NewTokens(d.AdminTokens)}
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	// Trust no proxy unless configured: a client must not pick the address
	// its failed attempts are counted against.
	if err := r.SetTrustedProxies(d.TrustedProxies); err != nil {
		d.Log.Error("invalid trusted proxies; trusting none", "err", err)
		_ = r.SetTrustedProxies(nil)
	}
	a.routes(r)
	return r
}

// routes is the whole route table.
func (a *api) routes(r *gin.Engine) {
	if a.Telemetry != nil {
		r.Use(a.trace)
	}
	r.Use(a.recoverAndLog)
	if a.Metrics != nil {
		r.GET("/metrics", gin.WrapH(a.Metrics))
	}
	r.NoRoute(a.h(a.notFound))
	r.NoMethod(a.h(a.methodNotAllowed))

	r.GET("/healthz", a.h(a.healthz))
	r.GET("/readyz", a.h(a.readyz))

	// Public, authenticated by the caller's API key; the gateway proxies them.
	r.GET("/v1/dashboard/billing/usage", a.h(a.billingUsage))
	r.GET("/v1/dashboard/billing/daily", a.h(a.billingDaily))
	r.POST("/v1/dashboard/key/regenerate", a.h(a.regenerateKey))

	admin := r.Group("/admin/v1", a.h(a.requireAdmin))
	admin.POST("/keys", a.h(a.createKey))
	admin.GET("/keys", a.h(a.listKeys))
	admin.GET("/keys/:id", a.h(a.getKey))
	admin.PATCH("/keys/:id", a.h(a.updateKey))
	admin.POST("/keys/:id/disable", a.h(a.disableKey))
	admin.POST("/keys/:id/enable", a.h(a.enableKey))
	admin.POST("/keys/:id/rotate", a.h(a.rotateKey))
	admin.DELETE("/keys/:id", a.h(a.revokeKey))
	admin.GET("/usage", a.h(a.usageReport))

	// The web dashboard: static pages (security headers set by web) that
	// call the two APIs above from the browser; / redirects to it.
	dashboard := gin.WrapH(web.Handler())
	r.GET("/", dashboard)
	r.GET("/dashboard", dashboard)
	r.GET("/dashboard/*file", dashboard)
}

// handler is a gin handler that reports failure by returning an error.
type handler func(c *gin.Context) error

// h adapts a handler (or a middleware that calls c.Next) to gin.
func (a *api) h(fn handler) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := fn(c); err != nil {
			a.renderError(c, err)
			c.Abort()
		}
	}
}

// Errors raised by this package.
var (
	errAdminToken = apierr.Unauthenticated("Invalid admin token. Send Authorization: Bearer <ADMIN_TOKEN>.")
	errAPIKey     = apierr.Unauthenticated("Invalid API key provided")
)

// renderError maps every error kind to its status and OpenAI-shaped body.
func (a *api) renderError(c *gin.Context, err error) {
	var (
		ae *apierr.Error
		ve *keys.ValidationError
	)
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &ve):
		ae = apierr.InvalidRequest(ve.Message)
		if ve.Param != "" {
			ae = ae.WithParam(ve.Param)
		}
	case errors.Is(err, keys.ErrNotFound):
		ae = apierr.NotFound("No API key with id '" + c.Param("id") + "'.").WithParam("id")
	case errors.Is(err, keys.ErrRevoked):
		ae = apierr.New(http.StatusConflict, apierr.TypeInvalidRequest, "The key is revoked; create a new one.").WithCode("key_revoked")
	case errors.Is(err, keys.ErrConflict):
		ae = apierr.New(http.StatusConflict, apierr.TypeInvalidRequest, "The key was changed concurrently; retry.").WithCode("conflict")
	case errors.Is(err, keys.ErrUnauthenticated):
		ae = errAPIKey
	case errors.Is(err, billing.ErrNotReady), unavailable(err):
		ae = apierr.Unavailable("A storage backend is temporarily unavailable; try again later.")
	default:
		ae = apierr.Internal("An unexpected internal server error occurred.")
	}
	if ae.Status >= http.StatusInternalServerError {
		a.Log.ErrorContext(c.Request.Context(), "request failed",
			"method", c.Request.Method, "route", c.FullPath(), "status", ae.Status, "err", err)
	}
	ae.Write(c.Writer)
}

// unavailable reports whether err means a backend could not be reached in
// time, dropped the connection, or (Redis) refused a command for its state:
// still loading its data, busy in a script, failing over (as opposed to
// refusing a query).
func unavailable(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		redisretry.IsTransient(err)
}

// recoverAndLog logs one line per request (route template, never the raw
// path or headers: they may carry keys) and turns a panic into a 500.
func (a *api) recoverAndLog(c *gin.Context) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			a.Log.ErrorContext(c.Request.Context(), "panic in handler", "route", c.FullPath(), "panic", p)
			if !c.Writer.Written() {
				apierr.Internal("An unexpected internal server error occurred.").Write(c.Writer)
			}
			c.Abort()
		}
		a.Log.DebugContext(c.Request.Context(), "request",
			"method", c.Request.Method, "route", c.FullPath(), "status", c.Writer.Status(),
			"duration", time.Since(start))
	}()
	c.Next()
}

func (a *api) notFound(c *gin.Context) error {
	return apierr.NotFound("Unknown request URL: " + c.Request.Method + " " + c.Request.URL.Path + ".")
}

func (a *api) methodNotAllowed(c *gin.Context) error {
	return apierr.New(http.StatusMethodNotAllowed, apierr.TypeInvalidRequest,
		"Method "+c.Request.Method+" is not allowed on "+c.Request.URL.Path+".")
}

// actorKey is where requireAdmin leaves the name of the admin token used,
// in the gin context; an unexported type, so that only setActor and actor
// reach it.
type actorKey struct{}

func setActor(c *gin.Context, name string) { c.Set(actorKey{}, name) }

// requireAdmin lets the request through only with an admin token, and
// records the token's name as the actor of the request. The presented
// token is never logged.
//
// A valid token is accepted even when its client address is over the
// failure limit; only wrong tokens are refused (429) there. Behind a load
// balancer that hides client addresses (ADMIN_TRUSTED_PROXIES unset) every
// client shares one address, and refusing right tokens too would let one
// client sending bad tokens lock every operator out. The price: a client
// over the limit still learns whether a guess is right (200 against 429),
// so the limit no longer slows a determined guesser, it turns noise into
// 429s and makes it visible in the logs. Against guessing, what protects
// is the token itself: a long random string (the README asks for 32
// random bytes), which no guessing rate finds. Keying the limit by
// (address, token) instead would change nothing for a guesser (each guess
// is a new token) and nothing for an operator's valid token (it never
// fails); a coarser per-address budget on top would bring the lock-out
// back.
func (a *api) requireAdmin(c *gin.Context) error {
	client := adminauth.ClientKey(c.ClientIP())
	tok, _ := bearer(c.GetHeader("Authorization"))
	name, ok := a.tokens.Identify(tok)
	if !ok {
		if wait, blocked := a.AuthFailures.Blocked(client); blocked {
			return tooManyFailures(c, wait) // refused attempts do not count
		}
		_, blocked := a.AuthFailures.Fail(client)
		a.Log.WarnContext(c.Request.Context(), "admin authentication failed",
			"client", client, "route", c.FullPath(), "blocked", blocked)
		return errAdminToken
	}
	setActor(c, name)
	c.Next()
	return nil
}

func tooManyFailures(c *gin.Context, wait time.Duration) error {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	c.Header("Retry-After", strconv.Itoa(secs))
	return apierr.RateLimited("Too many failed admin authentications from your address; retry after " +
		strconv.Itoa(secs) + " seconds.").WithCode("too_many_failed_attempts")
}

// actor is the name of the admin token that authenticated the request, ""
// before requireAdmin.
func actor(c *gin.Context) string { return c.GetString(actorKey{}) }

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(h string) (string, bool) {
	const scheme = "bearer "
	if len(h) < len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(scheme):])
	return tok, tok != ""
}
