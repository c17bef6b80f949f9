// Package httpapi is the gateway's HTTP surface: the route table, the
// middleware every request passes (request id, timing, authentication) and
// the one place that renders errors.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/qyai/qyai/gateway/internal/auth"
	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/gateway/internal/proxy"
	"github.com/qyai/qyai/gateway/internal/quota"
	"github.com/qyai/qyai/gateway/internal/telemetry"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
)

// Deps are what the routes need.
type Deps struct {
	Catalog  *catalog.Holder
	Verifier *auth.Verifier
	// AuthFailures limits failed key verifications per client address (the
	// TCP peer); nil means no limit.
	AuthFailures *auth.FailLimiter
	Limiter      *quota.Limiter
	Proxy        *proxy.Handler
	AdminURL     *url.URL
	Log          *slog.Logger
	// Ready reports whether the gateway should receive traffic (false while draining).
	Ready *atomic.Bool
	// Telemetry traces requests and records request metrics; may be nil.
	Telemetry *telemetry.Telemetry
	Now       func() time.Time
	// BodyReadTimeout bounds the arrival of a request body, counted from
	// the end of the headers; zero leaves it unbounded. The chat handler
	// lifts the bound once it has the whole body.
	BodyReadTimeout time.Duration
	// WriteTimeout bounds the write of what is left of a response once its
	// handler returned (the proxy bounds each of its own writes); zero
	// leaves it unbounded.
	WriteTimeout time.Duration
}

// reqState is what the middleware learns about a request, for the handlers
// after it. requestContext stores one per request in the gin context, under
// an unexported key type so that nothing else can set or read it; stateOf
// reads it back. One struct rather than a key per value: one allocation per
// request, and the handlers read typed fields.
type reqState struct {
	start time.Time
	id    string
	trace string         // set when tracing
	key   *apikey.Record // set by authenticate
	quota quota.Decision // set by admit
	res   proxy.Result   // set by chat, for the span and the request metrics
	// traceParent and traceState are the span's W3C trace context, set
	// only when the span is sampled (so never when tracing is off).
	traceParent, traceState string
}

// traceCarrier receives the request span's trace context from the
// propagator, into the request state: no map per request.
type traceCarrier struct{ st *reqState }

func (c traceCarrier) Get(string) string { return "" }
func (c traceCarrier) Keys() []string    { return nil }
func (c traceCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.st.traceParent = value
	case "tracestate":
		c.st.traceState = value
	}
}

type stateKey struct{}

func setState(c *gin.Context, st *reqState) { c.Set(stateKey{}, st) }

// stateOf returns the request's state. Every route passes requestContext
// first (New installs it before any route); without it a handler would get
// an empty state.
func stateOf(c *gin.Context) *reqState {
	if st, ok := c.Get(stateKey{}); ok {
		if st, ok := st.(*reqState); ok {
			return st
		}
	}
	return &reqState{}
}

// New returns the gateway's public handler. The whole route table is here.
// Operational endpoints (metrics) are not in it: they are served by
// Operational on a separate, internal listener, so that a public ingress
// never exposes them; /metrics here is the usual 404.
func New(d Deps) http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(d.requestContext, recovery(d.Log))

	r.GET("/healthz", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
	r.GET("/readyz", d.readyz)

	v1 := r.Group("/v1")
	v1.GET("/models", d.listModels)
	v1.GET("/models/:id", d.getModel)
	v1.POST("/chat/completions", d.authenticate, d.admit, d.chat)
	// Answered by admin, which authenticates the caller's key itself.
	dashboard := gin.WrapH(d.dashboardProxy())
	v1.GET("/dashboard/billing/usage", dashboard)
	v1.GET("/dashboard/billing/daily", dashboard)
	v1.POST("/dashboard/key/regenerate", dashboard)

	r.NoRoute(func(c *gin.Context) {
		render(c, apierr.NotFound("Invalid URL ("+c.Request.Method+" "+c.Request.URL.Path+")").WithCode("unknown_url"))
	})
	r.NoMethod(func(c *gin.Context) {
		render(c, apierr.New(http.StatusMethodNotAllowed, apierr.TypeInvalidRequest,
			"Method "+c.Request.Method+" is not allowed on "+c.Request.URL.Path).WithCode("method_not_allowed"))
	})
	return r
}

// render writes an API error; it is the only place errors are written.
func render(c *gin.Context, e *apierr.Error) {
	if c.Writer.Written() {
		return
	}
	e.Write(c.Writer)
	c.Abort()
}

// bound sets the connection deadlines of one request. The read deadline is
// set only when a body follows: net/http reads ahead on the connection once
// the body is read (to notice a client that hangs up), and that read must
// not time out. A body that does not arrive in time fails its read (the
// chat handler answers 408), or, on a route that never reads it, the
// bounded read net/http does after the handler, which then closes the
// connection; either way a stalled client cannot hold the connection open.
// The returned func, deferred until the handlers are done, bounds the write
// of what net/http still has buffered of the response (the proxy bounds
// each of its own writes); net/http clears the write deadline once the
// response is out, so it never reaches the next request on the connection.
//
// Deadlines are wall-clock times of the connection, hence time.Now rather
// than the injected clock. Errors only mean the writer has no deadlines (a
// test recorder): there is nothing to bound then.
func (d *Deps) bound(c *gin.Context) func() {
	rc := http.NewResponseController(c.Writer)
	if d.BodyReadTimeout > 0 && c.Request.ContentLength != 0 && c.Request.Body != http.NoBody {
		_ = rc.SetReadDeadline(time.Now().Add(d.BodyReadTimeout))
	}
	if d.WriteTimeout <= 0 {
		return func() {}
	}
	return func() { _ = rc.SetWriteDeadline(time.Now().Add(d.WriteTimeout)) }
}

// requestContext assigns the request id and sets openai-processing-ms just
// before the response headers go out, whatever writes them.
func (d *Deps) requestContext(c *gin.Context) {
	start := d.Now()
	id := c.GetHeader("X-Request-Id")
	if !validRequestID(id) {
		id = newRequestID()
	}
	st := &reqState{start: start, id: id}
	setState(c, st)
	boundRest := d.bound(c)
	defer boundRest()
	c.Header("X-Request-Id", id)
	tw := &timingWriter{ResponseWriter: c.Writer, start: start, now: d.Now}
	c.Writer = tw
	if d.Telemetry == nil {
		c.Next()
		return
	}
	// A span per request, joined to the client's trace when it sent a
	// traceparent; its trace id goes into the usage event and logs.
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	ctx := d.Telemetry.Propagator.Extract(c.Request.Context(), propagation.HeaderCarrier(c.Request.Header))
	ctx, span := d.Telemetry.Tracer.Start(ctx, c.Request.Method+" "+route, trace.WithSpanKind(trace.SpanKindServer))
	c.Request = c.Request.WithContext(ctx)
	sc := span.SpanContext()
	st.trace = sc.TraceID().String()
	if sc.IsSampled() {
		d.Telemetry.Propagator.Inject(ctx, traceCarrier{st})
	}
	c.Next()
	status := c.Writer.Status()
	res := &st.res
	duration := d.Now().Sub(start)
	var chat telemetry.Chat
	isChat := route == chatRoute && res.Model != ""
	if isChat {
		chat = telemetry.Chat{
			RequestModel: res.Model, ResponseModel: res.UpstreamModel,
			InputTokens: res.InputTokens, OutputTokens: res.OutputTokens,
			ErrorType: res.ErrorType, Duration: duration, TTFT: res.TTFB,
		}
		if chat.ErrorType == "" && status >= 400 {
			chat.ErrorType = telemetry.ErrorTypeOther
		}
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.response.status_code", status), attribute.String("qyai.request_id", id),
			attribute.String("qyai.model", res.Model))
		if isChat {
			// The GenAI conventions name a chat span "chat {model}".
			span.SetName(telemetry.ChatSpanName(res.Model))
			telemetry.ChatSpanAttributes(span, chat)
		}
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
	}
	span.End()
	d.Telemetry.ObserveRequest(ctx, route, res.Model, status, duration, res.TTFB)
	if isChat {
		d.Telemetry.ObserveChat(ctx, chat)
	}
}

// chatRoute is the route of chat completions, described in the GenAI
// conventions.
const chatRoute = "/v1/chat/completions"

func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.' || ch == ':') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

type timingWriter struct {
	gin.ResponseWriter
	start time.Time
	now   func() time.Time
	done  bool
}

func (w *timingWriter) stamp() {
	if !w.done && !w.ResponseWriter.Written() {
		w.done = true
		w.Header().Set("Openai-Processing-Ms", strconv.FormatInt(w.now().Sub(w.start).Milliseconds(), 10))
	}
}

func (w *timingWriter) WriteHeader(code int)        { w.stamp(); w.ResponseWriter.WriteHeader(code) }
func (w *timingWriter) WriteHeaderNow()             { w.stamp(); w.ResponseWriter.WriteHeaderNow() }
func (w *timingWriter) Write(b []byte) (int, error) { w.stamp(); return w.ResponseWriter.Write(b) }
func (w *timingWriter) WriteString(s string) (int, error) {
	w.stamp()
	return w.ResponseWriter.WriteString(s)
}
func (w *timingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func recovery(log *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			if p := recover(); p != nil {
				if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(p)
				}
				log.Error("panic serving request", "path", c.Request.URL.Path, "panic", p)
				render(c, apierr.Internal("an unexpected internal error occurred"))
			}
		}()
		c.Next()
	}
}

// Operational returns the handler of the internal listener
// (GATEWAY_METRICS_ADDR): GET /metrics renders metrics, and /healthz and
// /readyz answer as on the public listener, so that a probe may use
// either.
func Operational(metrics http.Handler, ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil && !ready.Load() {
			apierr.Unavailable("draining").Write(w)
			return
		}
		_, _ = w.Write([]byte("ready"))
	})
	return mux
}

func (d *Deps) readyz(c *gin.Context) {
	if d.Ready != nil && !d.Ready.Load() {
		render(c, apierr.Unavailable("draining"))
		return
	}
	c.String(http.StatusOK, "ready")
}

func (d *Deps) listModels(c *gin.Context) {
	c.Data(http.StatusOK, "application/json", d.Catalog.Get().ListJSON())
}

func (d *Deps) getModel(c *gin.Context) {
	b := d.Catalog.Get().ModelJSON(c.Param("id"))
	if b == nil {
		render(c, apierr.NotFound("The model `"+c.Param("id")+"` does not exist").WithParam("model").WithCode("model_not_found"))
		return
	}
	c.Data(http.StatusOK, "application/json", b)
}

// authenticate verifies the bearer key and stores its record.
func (d *Deps) authenticate(c *gin.Context) {
	tok, err := auth.BearerToken(c.GetHeader("Authorization"))
	if err != nil {
		render(c, apierr.Unauthenticated("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."))
		return
	}
	client := clientOf(c.Request)
	var wait time.Duration
	rec, err := d.Verifier.VerifyGated(c.Request.Context(), tok, func() error {
		if w, blocked := d.AuthFailures.Blocked(client); blocked {
			wait = w
			return errTooManyFailures
		}
		return nil
	})
	if errors.Is(err, auth.ErrInvalidKey) {
		d.AuthFailures.Fail(client)
	}
	switch {
	case errors.Is(err, errTooManyFailures):
		render(c, tooManyFailures(c.Writer.Header(), wait))
		return
	case errors.Is(err, auth.ErrUnavailable):
		d.Log.Warn("key store unavailable", "err", err)
		render(c, apierr.Unavailable("The service is temporarily unavailable; try again later."))
		return
	case err != nil:
		render(c, apierr.Unauthenticated("Invalid API key provided"))
		return
	}
	stateOf(c).key = rec
	c.Next()
}

// errTooManyFailures is why authenticate refuses a client before its key
// reaches the store.
var errTooManyFailures = errors.New("too many failed key verifications from the client address")

// admit takes an RPM slot and a monthly unit for the key, and reports the
// limits in OpenAI's headers on every response, refusals included.
func (d *Deps) admit(c *gin.Context) {
	st := stateOf(c)
	rec := st.key
	dec := d.Limiter.Admit(c.Request.Context(), rec, st.id+"/"+newRequestID())
	h := c.Writer.Header()
	h.Set("X-Ratelimit-Limit-Requests", strconv.FormatInt(dec.Limit, 10))
	h.Set("X-Ratelimit-Remaining-Requests", strconv.FormatInt(dec.Remaining, 10))
	h.Set("X-Ratelimit-Reset-Requests", formatReset(dec.Reset))
	if dec.TokensLimit > 0 {
		h.Set("X-Ratelimit-Limit-Tokens", strconv.FormatInt(dec.TokensLimit, 10))
		h.Set("X-Ratelimit-Remaining-Tokens", strconv.FormatInt(dec.TokensRemaining, 10))
		h.Set("X-Ratelimit-Reset-Tokens", formatReset(dec.TokensReset))
	}
	if dec.Degraded {
		d.Log.Warn("limit store unavailable: applying this replica's share of the limits", "key_id", rec.ID)
	}
	if !dec.Allowed {
		if d.Telemetry != nil {
			d.Telemetry.RateLimited(c.Request.Context(), dec.Reason)
		}
		h.Set("Retry-After", strconv.FormatInt(int64((dec.RetryAfter+time.Second-1)/time.Second), 10))
		if dec.Reason == quota.ReasonQuota {
			render(c, apierr.RateLimited("You exceeded your monthly quota of "+strconv.FormatInt(dec.MonthlyLimit, 10)+
				" requests. It resets at the start of the next UTC month; contact us for a higher tier.").WithCode(quota.ReasonQuota))
			return
		}
		if dec.Reason == quota.ReasonTokens {
			render(c, apierr.RateLimited("Rate limit reached for tokens: limit "+strconv.FormatInt(dec.TokensLimit, 10)+
				" per minute. Please try again in "+formatReset(dec.RetryAfter)+".").WithCode(quota.ReasonRate))
			return
		}
		render(c, apierr.RateLimited("Rate limit reached for requests: limit "+strconv.FormatInt(dec.Limit, 10)+
			" per minute. Please try again in "+formatReset(dec.RetryAfter)+".").WithCode(quota.ReasonRate))
		return
	}
	st.quota = dec
	c.Next()
}

// formatReset renders a duration the way OpenAI's reset headers do ("1s", "6m0s", "20ms").
func formatReset(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func (d *Deps) chat(c *gin.Context) {
	st := stateOf(c)
	rec, dec := st.key, st.quota
	ctx := c.Request.Context()
	var res proxy.Result
	err := d.Proxy.Chat(c.Writer, c.Request, proxy.Request{
		Key:         rec,
		RequestID:   st.id,
		TraceID:     st.trace,
		TraceParent: st.traceParent,
		TraceState:  st.traceState,
		Start:       st.start,
		Result:      &res,
		NotReached:  func() { d.Limiter.Release(ctx, rec.ID, dec) },
	})
	st.res = res
	if rec.TPM > 0 && res.Tokens > 0 {
		// Off the request path: the response is complete.
		go d.Limiter.AddTokens(context.WithoutCancel(ctx), rec.ID, res.Tokens)
	}
	if err != nil {
		var ae *apierr.Error
		if !errors.As(err, &ae) { // Chat returns only API errors; a bug otherwise
			d.Log.Error("chat failed without an API error", "err", err)
			ae = apierr.Internal("an unexpected internal error occurred")
		}
		if st.res.ErrorType == "" {
			st.res.ErrorType = ae.Type // error.type of the GenAI metrics and span
		}
		render(c, ae)
	}
}

// dashboardProxy forwards the public dashboard endpoints (billing, and key
// regeneration) to admin, which authenticates the caller's key itself (and
// limits each key's requests: BILLING_RPM, REGENERATE_RPM). Failed
// authentications there count against the client address like the
// gateway's own, and an address over the limit is refused here before
// admin is asked. A regenerated key takes effect here as any rotation
// does: admin publishes the change and the key cache drops the old key.
func (d *Deps) dashboardProxy() http.Handler {
	rp := httputil.NewSingleHostReverseProxy(d.AdminURL)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		d.Log.Warn("dashboard proxy to admin failed", "route", r.URL.Path, "err", err)
		apierr.Unavailable("The dashboard service is temporarily unavailable; try again later.").Write(w)
	}
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.StatusCode == http.StatusUnauthorized {
			d.AuthFailures.Fail(clientOf(resp.Request))
		}
		return nil
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wait, blocked := d.AuthFailures.Blocked(clientOf(r)); blocked {
			tooManyFailures(w.Header(), wait).Write(w)
			return
		}
		if d.Telemetry != nil {
			// Admin's span becomes a child of this request's span: the
			// client's trace context, which the proxy would copy, is
			// replaced by the span's.
			r.Header.Del("Traceparent")
			r.Header.Del("Tracestate")
			d.Telemetry.Propagator.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
		}
		rp.ServeHTTP(w, r)
	})
}

// clientOf is the unit failed authentications count per: the TCP peer
// (the gateway trusts no X-Forwarded-For, so that a client cannot pick the
// address its failures count against), an IPv6 peer by its /64.
func clientOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return auth.ClientKey(host)
}

// tooManyFailures is the refusal of a client over its failed-authentication
// limit; it sets Retry-After in h.
func tooManyFailures(h http.Header, wait time.Duration) *apierr.Error {
	secs := max(1, int64((wait+time.Second-1)/time.Second))
	h.Set("Retry-After", strconv.FormatInt(secs, 10))
	return apierr.RateLimited("Too many requests with invalid API keys from your address; retry after " +
		strconv.FormatInt(secs, 10) + " seconds.").WithCode("too_many_failed_attempts")
}
