// Package proxy forwards chat completions to the upstream provider: it
// validates and rewrites the request, retries where that is safe (never
// after the first byte reached the client), passes streams through event by
// event, and emits exactly one usage event for every request that reached
// the upstream.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
)

// Publisher takes usage events without blocking.
type Publisher interface {
	Publish(ev *usage.Event)
}

// Metrics counts what the proxy cannot tell the client.
type Metrics interface {
	UpstreamCredentialFailure(status int)
}

// Handler serves POST /v1/chat/completions.
type Handler struct {
	Catalog  *catalog.Holder
	Upstream *Upstream
	Pub      Publisher
	Metrics  Metrics
	Log      *slog.Logger
	Instance string
	MaxBody  int64
	// MaxAnswer bounds a non-streaming answer read from the upstream, in
	// bytes; a larger one is answered 502 upstream_error, never cut short
	// and relayed as a 200. Zero means DefaultMaxAnswer.
	MaxAnswer int64
	// MaxEventLine bounds one line of an upstream event stream, in bytes,
	// its newline included; a longer line ends the stream as an upstream
	// error. Zero means DefaultMaxEventLine.
	MaxEventLine int
	// WriteTimeout bounds each write to the client: one stream event (or
	// the events that arrived together), one piece of a non-streaming
	// answer. A client that stops reading is cut off once a write cannot
	// complete within it, and metered as client_cancelled. Zero leaves
	// writes unbounded.
	WriteTimeout time.Duration
	Now          func() time.Time
}

// Defaults of the limits on what the upstream sends.
const (
	// DefaultMaxAnswer is far beyond any real completion (DeepSeek's
	// longest output is a few hundred KiB of JSON).
	DefaultMaxAnswer = 64 << 20
	// DefaultMaxEventLine is far beyond any real chunk (one token of text,
	// or one tool-call fragment, per event).
	DefaultMaxEventLine = 1 << 20
)

func (h *Handler) maxAnswer() int64 {
	if h.MaxAnswer > 0 {
		return h.MaxAnswer
	}
	return DefaultMaxAnswer
}

func (h *Handler) maxEventLine() int {
	if h.MaxEventLine > 0 {
		return h.MaxEventLine
	}
	return DefaultMaxEventLine
}

// Request is what the HTTP layer knows before the proxy starts.
type Request struct {
	Key       *apikey.Record
	RequestID string
	TraceID   string
	// TraceParent and TraceState are the request span's W3C trace
	// context, when it is sampled; they travel with the usage event.
	TraceParent, TraceState string
	Start                   time.Time
	// Result, when not nil, receives what the HTTP layer reports in metrics.
	Result *Result
	// NotReached is called once when the request ends without reaching the
	// upstream (refused, invalid, or no member could be connected to), so
	// that its quota reservation can be given back. May be nil.
	NotReached func()
}

// Result is what a finished request reports for metrics.
type Result struct {
	Model string        // catalog id, empty when the request was refused before parsing
	TTFB  time.Duration // time to the first byte of the answer; 0 when none
	// Tokens is prompt + completion tokens used (reported or estimated).
	Tokens int64
	// InputTokens and OutputTokens are Tokens' two parts.
	InputTokens, OutputTokens int64
	// UpstreamModel is the upstream model the request went to; empty
	// when it never reached the upstream.
	UpstreamModel string
	// ErrorType is the API error type of a request that reached the
	// upstream and failed, or ended early (the usage event's error_type).
	ErrorType string
}

// errIdle cancels an upstream request that went quiet.
var errIdle = errors.New("upstream idle timeout")

// Chat handles one chat completion. A returned error is an *apierr.Error
// that has not been written yet (nothing reached the client); once
// streaming started, failures end the stream instead.
func (h *Handler) Chat(w http.ResponseWriter, r *http.Request, in Request) error {
	reached := false
	defer func() {
		if !reached && in.NotReached != nil {
			in.NotReached()
		}
	}()
	rc := http.NewResponseController(w)
	body, err := readAll(http.MaxBytesReader(w, r.Body, h.MaxBody), r.ContentLength, h.MaxBody)
	if err != nil {
		var mb *http.MaxBytesError
		switch {
		case errors.As(err, &mb):
			return apierr.New(http.StatusRequestEntityTooLarge, apierr.TypeInvalidRequest,
				"request body is larger than the limit of "+strconv.FormatInt(h.MaxBody, 10)+" bytes").WithCode("request_too_large")
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The read deadline (BODY_READ_TIMEOUT, set by the HTTP layer)
			// stays in the past: the connection cannot be reused with the
			// rest of a body still on it, and net/http's read of that rest
			// after the handler fails at once instead of waiting.
			w.Header().Set("Connection", "close")
			return apierr.RequestTimeout("the request body did not arrive in time; send it without pauses")
		}
		return apierr.InvalidRequest("could not read the request body")
	}
	// The whole body is here: lift its deadline before net/http's read-ahead
	// (which notices a client that hangs up) can run into it. Streams read
	// nothing more from the client, however long they last.
	_ = rc.SetReadDeadline(time.Time{}) // an error means no deadline was possible: none to lift
	req, err := prepare(body, h.Catalog.Get())
	if err != nil {
		return err
	}
	if in.Result != nil {
		in.Result.Model = req.model.ID
	}
	if !in.Key.Allows(req.model.ID) {
		return apierr.PermissionDenied("this API key may not use the model `" + req.model.ID + "`").WithParam("model").WithCode("model_not_allowed")
	}

	ev := &usage.Event{
		SchemaVersion: usage.SchemaVersion,
		ID:            newEventID(),
		RequestID:     in.RequestID,
		StartedAt:     in.Start.UTC(),
		KeyID:         in.Key.ID,
		KeyPrefix:     in.Key.KeyPrefix,
		Tier:          in.Key.Tier,
		Model:         req.model.ID,
		UpstreamModel: req.model.Upstream,
		Thinking:      req.thinking,
		Stream:        req.stream,
		Gateway:       h.Instance,
		TraceID:       in.TraceID,
		TraceParent:   in.TraceParent,
		TraceState:    in.TraceState,
		UsageSource:   usage.SourceNone,
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)

	var session uint64
	if h.Upstream.cfg.Affinity && len(h.Upstream.pool.members) > 1 { // members never change
		session = sessionOf(in.Key.ID, r.Header, req)
	}
	resp, fail := h.attempt(ctx, req.body, session)
	reached = fail == nil || fail.reached
	if fail != nil {
		if fail.reached {
			ev.Status = fail.apiErr.Status
			ev.ErrorType = fail.apiErr.Type
			ev.Outcome = fail.outcome
			if r.Context().Err() != nil {
				ev.Outcome = usage.OutcomeClientCancelled
				ev.Status = 499
				if fail.outcome == usage.OutcomeClientCancelled {
					// The client left while waiting for the answer, not
					// after an upstream error (in a retry's backoff): the
					// upstream has the prompt and charges for it.
					billHangUp(ev, req, 0)
				}
			}
			h.finish(ev, in.Result)
		}
		if fail.credentialStatus != 0 && h.Metrics != nil {
			h.Metrics.UpstreamCredentialFailure(fail.credentialStatus)
		}
		return fail.apiErr
	}
	defer func() { _ = resp.Body.Close() }() // read to the end or abandoned: no error to act on

	// The idle timer cancels the upstream read when the provider goes quiet
	// between two chunks (or mid-body).
	idle := h.Upstream.cfg.IdleTimeout
	timer := time.AfterFunc(idle, func() { cancel(errIdle) })
	defer timer.Stop()
	body2 := &idleReader{r: resp.Body, timer: timer, idle: idle}

	if req.stream {
		h.stream(ctx, w, r, req, body2, ev)
	} else {
		h.unary(ctx, w, req, resp, body2, ev)
	}
	h.finish(ev, in.Result)
	return nil
}

// attempt sends the request, retrying retryable failures with backoff on
// another pool member. Nothing has reached the client yet, so a retry is
// invisible to it; a retryable failure means the upstream did no billable
// work (connection refused, 429, 5xx). With affinity the first attempt goes
// to session's member and each retry to its next-highest one not tried yet.
func (h *Handler) attempt(ctx context.Context, body []byte, session uint64) (*http.Response, *attemptError) {
	backoff := 50 * time.Millisecond
	var fail *attemptError
	var last *poolMember
	var tried uint64
	for i := 0; ; i++ {
		var m *poolMember
		if h.Upstream.cfg.Affinity {
			m = h.Upstream.pool.pickFor(session, tried, last)
			tried |= m.triedBit()
		} else {
			m = h.Upstream.pool.pick(last)
		}
		last = m
		var resp *http.Response
		resp, fail = h.Upstream.send(ctx, m, body)
		// Only provider-side trouble counts against a member's health.
		h.Upstream.pool.report(m, fail == nil || !fail.retryable && fail.outcome != usage.OutcomeTimeout)
		if fail == nil {
			return resp, nil
		}
		if !fail.retryable || i >= h.Upstream.cfg.Retries {
			return nil, fail
		}
		select {
		case <-ctx.Done():
			return nil, fail
		case <-time.After(backoff):
		}
		backoff *= 4
	}
}

// readAll reads r to the end into one buffer sized by the declared length
// (Content-Length, -1 when unknown), trusting it only up to limit.
func readAll(r io.Reader, declared, limit int64) ([]byte, error) {
	if declared < 0 || declared > limit {
		return io.ReadAll(r)
	}
	buf := bytes.NewBuffer(make([]byte, 0, declared+bytes.MinRead))
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

// extendWrite gives the next write to the client WriteTimeout to complete.
// Deadlines are wall-clock times of the connection, hence time.Now rather
// than h.Now; an error only means the writer has no deadlines (a test
// recorder).
func (h *Handler) extendWrite(rc *http.ResponseController) {
	if h.WriteTimeout > 0 {
		_ = rc.SetWriteDeadline(time.Now().Add(h.WriteTimeout))
	}
}

// answerPiece is how much of a non-streaming answer one write carries, each
// with WriteTimeout of its own: a client that reads slowly but steadily
// gets a large answer, one that stopped reading is cut off.
const answerPiece = 64 << 10

func (h *Handler) unary(ctx context.Context, w http.ResponseWriter, req *chatRequest, resp *http.Response, body io.Reader, ev *usage.Event) {
	limit := h.maxAnswer()
	fail := func(ae *apierr.Error, outcome string) {
		// Metered like any answer that broke off: the upstream did the work,
		// the request counts once against the quota, no tokens are guessed.
		ev.Status, ev.ErrorType, ev.Outcome = ae.Status, ae.Type, outcome
		ae.Write(w)
	}
	if resp.ContentLength > limit {
		fail(answerTooLarge(limit), usage.OutcomeUpstreamError)
		return
	}
	// One byte past the limit tells an answer of exactly the limit from a
	// larger one.
	b, err := readAll(io.LimitReader(body, limit+1), resp.ContentLength, limit)
	if err != nil {
		outcome := outcomeOf(ctx)
		if outcome == usage.OutcomeClientCancelled {
			// The client hung up before its answer: nothing to write to it,
			// but the upstream read the whole prompt.
			ev.Status, ev.Outcome = 499, outcome
			billHangUp(ev, req, 0)
			return
		}
		fail(readFailure(ctx), outcome)
		return
	}
	if int64(len(b)) > limit {
		fail(answerTooLarge(limit), usage.OutcomeUpstreamError)
		return
	}
	if raw, ok := findMember(b, "usage"); ok && !isNull(raw) {
		var u upstreamUsage
		if u.parse(raw) || json.Unmarshal(raw, &u) == nil {
			u.apply(ev)
		}
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	ev.TTFTMs = h.Now().Sub(ev.StartedAt).Milliseconds()
	rc := http.NewResponseController(w)
	h.extendWrite(rc)
	w.WriteHeader(http.StatusOK)
	var werr error
	for rest := b; len(rest) > 0 && werr == nil; {
		n := min(len(rest), answerPiece)
		h.extendWrite(rc)
		_, werr = w.Write(rest[:n])
		rest = rest[n:]
	}
	// The client has its whole answer now, before the usage event, metrics
	// and span are recorded (net/http would send it only after the handler).
	if werr == nil {
		h.extendWrite(rc)
		werr = rc.Flush()
	}
	ev.Status = http.StatusOK
	ev.Outcome = usage.OutcomeCompleted
	if werr != nil && !errors.Is(werr, http.ErrNotSupported) {
		// The client hung up or stopped reading (the write deadline
		// passed): billed like a completed answer, flagged as not received.
		ev.Status = 499
		ev.Outcome = usage.OutcomeClientCancelled
	}
	if ev.UsageSource == usage.SourceNone {
		// A 200 without usage is a provider bug; bill an estimate rather than nothing.
		estimate(ev, req.promptBytes, int64(len(b)/4))
	}
}

// readFailure is the error a client sees when the upstream's answer broke
// off. It is never nil (a value, not a failure of its own), so it returns
// the concrete type its callers read Status and Type from.
func readFailure(ctx context.Context) *apierr.Error {
	if errors.Is(context.Cause(ctx), errIdle) {
		return apierr.Timeout("the upstream model provider stopped sending")
	}
	return apierr.Upstream("the connection to the upstream model provider broke")
}

// answerTooLarge is the error for a non-streaming upstream answer over limit.
func answerTooLarge(limit int64) *apierr.Error {
	return apierr.Upstream("the upstream model provider's answer is larger than the gateway's limit of " +
		strconv.FormatInt(limit, 10) + " bytes").WithCode("upstream_response_too_large")
}

func outcomeOf(ctx context.Context) string {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errIdle):
		return usage.OutcomeTimeout
	case cause != nil:
		return usage.OutcomeClientCancelled
	}
	return usage.OutcomeUpstreamError
}

func (h *Handler) finish(ev *usage.Event, res *Result) {
	if res != nil {
		res.TTFB = time.Duration(ev.TTFTMs) * time.Millisecond
		res.Tokens = ev.PromptTokens + ev.CompletionTokens
		res.InputTokens, res.OutputTokens = ev.PromptTokens, ev.CompletionTokens
		res.UpstreamModel, res.ErrorType = ev.UpstreamModel, ev.ErrorType
	}
	ev.FinishedAt = h.Now().UTC()
	ev.LatencyMs = ev.FinishedAt.Sub(ev.StartedAt).Milliseconds()
	h.Pub.Publish(ev)
}

// upstreamUsage is DeepSeek's usage object (OpenAI's, plus cache counts).
type upstreamUsage struct {
	PromptTokens          int64  `json:"prompt_tokens"`
	CompletionTokens      int64  `json:"completion_tokens"`
	PromptCacheHitTokens  *int64 `json:"prompt_cache_hit_tokens"`
	PromptCacheMissTokens *int64 `json:"prompt_cache_miss_tokens"`
	PromptTokensDetails   *struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails *struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
}

// parse reads the usual shape of the usage object without reflection;
// false means encoding/json must decide (anything unusual, errors included).
func (u *upstreamUsage) parse(raw []byte) bool {
	var v upstreamUsage
	err := eachMember(raw, func(k, _, val []byte) error {
		var err error
		switch string(k) {
		case "prompt_tokens":
			v.PromptTokens, err = plainInt(val)
		case "completion_tokens":
			v.CompletionTokens, err = plainInt(val)
		case "prompt_cache_hit_tokens":
			v.PromptCacheHitTokens, err = plainIntPtr(val)
		case "prompt_cache_miss_tokens":
			v.PromptCacheMissTokens, err = plainIntPtr(val)
		case "prompt_tokens_details":
			var n int64
			n, err = detail(val, "cached_tokens")
			v.PromptTokensDetails = &struct {
				CachedTokens int64 `json:"cached_tokens"`
			}{n}
		case "completion_tokens_details":
			var n int64
			n, err = detail(val, "reasoning_tokens")
			v.CompletionTokensDetails = &struct {
				ReasoningTokens int64 `json:"reasoning_tokens"`
			}{n}
		}
		return err
	})
	if err != nil {
		return false
	}
	*u = v
	return true
}

var errUnusual = errors.New("not a plain integer")

// detail reads the integer member name of a details object (0 when absent).
func detail(obj []byte, name string) (n int64, err error) {
	err = eachMember(obj, func(k, _, val []byte) error {
		if string(k) != name {
			return nil
		}
		var err error
		n, err = plainInt(val)
		return err
	})
	return n, err
}

// plainInt reads a JSON integer literal (no sign but '-', no leading zero).
func plainInt(val []byte) (int64, error) {
	digits := val
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || digits[0] < '0' || digits[0] > '9' || (digits[0] == '0' && len(digits) > 1) {
		return 0, errUnusual
	}
	n, err := strconv.ParseInt(string(val), 10, 64)
	if err != nil {
		return 0, errUnusual
	}
	return n, nil
}

func plainIntPtr(val []byte) (*int64, error) {
	n, err := plainInt(val)
	return &n, err
}

func (u *upstreamUsage) apply(ev *usage.Event) {
	ev.UsageSource = usage.SourceReported
	ev.PromptTokens = u.PromptTokens
	ev.CompletionTokens = u.CompletionTokens
	switch {
	case u.PromptCacheHitTokens != nil:
		ev.CacheHitTokens = *u.PromptCacheHitTokens
	case u.PromptTokensDetails != nil:
		ev.CacheHitTokens = u.PromptTokensDetails.CachedTokens
	}
	if u.PromptCacheMissTokens != nil {
		ev.CacheMissTokens = *u.PromptCacheMissTokens
	} else {
		ev.CacheMissTokens = max(0, u.PromptTokens-ev.CacheHitTokens)
	}
	if u.CompletionTokensDetails != nil {
		ev.ReasoningTokens = u.CompletionTokensDetails.ReasoningTokens
	}
}

// billHangUp bills a request whose client hung up before the upstream
// reported usage. The upstream read the whole prompt whatever the client
// did next, so the prompt is estimated from the request's messages, with
// the completion tokens relayed so far; usage the upstream did report
// before the client left is exact and wins.
func billHangUp(ev *usage.Event, req *chatRequest, completion int64) {
	if ev.UsageSource == usage.SourceNone {
		estimate(ev, req.promptBytes, completion)
	}
}

// estimate fills tokens the upstream never reported: about four bytes of
// JSON per prompt token, and the completion tokens counted as they passed.
func estimate(ev *usage.Event, promptBytes int, completion int64) {
	ev.UsageSource = usage.SourceEstimated
	ev.PromptTokens = int64(promptBytes / 4)
	ev.CacheMissTokens = ev.PromptTokens
	ev.CacheHitTokens = 0
	ev.CompletionTokens = completion
}

type idleReader struct {
	r     io.Reader
	timer *time.Timer
	idle  time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.timer.Reset(ir.idle)
	}
	return n, err
}

func newEventID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}
