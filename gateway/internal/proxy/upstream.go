package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/qyai/qyai/pkg/apierr"
)

// UpstreamConfig is the upstream provider: a pool of endpoints sharing
// one connection pool and one set of timeouts.
type UpstreamConfig struct {
	Members          []Member
	ConnectTimeout   time.Duration
	FirstByteTimeout time.Duration
	IdleTimeout      time.Duration
	MaxConns         int
	// Retries is how many more attempts a retryable failure (connection
	// refused, 429, 5xx) gets before the client sees an error.
	Retries int
	// EjectAfter consecutive failures take a member out for Cooldown.
	EjectAfter int
	Cooldown   time.Duration
	// Affinity routes each conversation to one member by weighted
	// rendezvous hashing of its session (see sessionOf), so that its turns
	// meet the prompt cache of one upstream account; off, members take
	// turns by weighted round robin whatever the conversation.
	Affinity bool
}

// Upstream sends requests to the provider over pooled keep-alive connections.
type Upstream struct {
	pool   *pool
	client *http.Client
	cfg    UpstreamConfig
}

// NewUpstream builds the client and its connection pool.
func NewUpstream(cfg UpstreamConfig) *Upstream {
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          cfg.MaxConns,
		MaxIdleConnsPerHost:   cfg.MaxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.FirstByteTimeout,
		ExpectContinueTimeout: time.Second,
	}
	if cfg.EjectAfter <= 0 {
		cfg.EjectAfter = 3
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = 10 * time.Second
	}
	return &Upstream{
		pool:   newPool(cfg.Members, cfg.EjectAfter, cfg.Cooldown, time.Now),
		client: &http.Client{Transport: tr},
		cfg:    cfg,
	}
}

// attemptError is a failed attempt, already mapped to what the client sees.
type attemptError struct {
	apiErr *apierr.Error // never nil: Chat returns it as its error
	// retryable: another attempt may succeed and nothing reached the client.
	retryable bool
	// reached: the upstream received the request (it may have done work).
	reached bool
	outcome string
	// credentialStatus is the upstream's 401/402/403: our key or balance is broken.
	credentialStatus int
}

var (
	contentTypeJSON = []string{"application/json"}
	acceptChat      = []string{"application/json, text/event-stream"}
)

// send posts body to member m and returns a 200 response, or the mapped failure.
func (u *Upstream) send(ctx context.Context, m *poolMember, body []byte) (*http.Response, *attemptError) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.url, bytes.NewReader(body))
	if err != nil {
		return nil, &attemptError{apiErr: apierr.Upstream("building the upstream request failed")}
	}
	// Shared, never modified value slices: no allocation per request.
	h := req.Header
	h["Content-Type"] = contentTypeJSON
	h["Accept"] = acceptChat
	if m.auth != nil {
		h["Authorization"] = m.auth
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, classifyTransportError(ctx, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer func() { _ = resp.Body.Close() }() // read-only: closing it loses nothing
	msg := upstreamMessage(resp.Body)
	return nil, mapUpstreamStatus(resp.StatusCode, msg)
}

func classifyTransportError(ctx context.Context, err error) *attemptError {
	if ctx.Err() != nil {
		return &attemptError{apiErr: apierr.Timeout("the client closed the request"), reached: true, outcome: "client_cancelled"}
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		if op.Timeout() {
			return &attemptError{apiErr: apierr.Timeout("connecting to the upstream model provider timed out"), retryable: true, outcome: "timeout"}
		}
		return &attemptError{apiErr: apierr.Upstream("failed to connect to the upstream model provider"), retryable: true, outcome: "upstream_error"}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		// The request was sent; the provider may be working on it, so a retry
		// could double the work: no retry.
		return &attemptError{apiErr: apierr.Timeout("the upstream model provider did not answer in time"), reached: true, outcome: "timeout"}
	}
	return &attemptError{apiErr: apierr.Upstream("the connection to the upstream model provider failed"), reached: true, outcome: "upstream_error"}
}

// mapUpstreamStatus turns a non-200 upstream answer into our error. Client
// mistakes (400, 422) pass through with the provider's message; our own
// credentials or balance (401, 402, 403) are never shown to the client.
func mapUpstreamStatus(status int, msg string) *attemptError {
	ae := &attemptError{reached: true, outcome: "upstream_error"}
	switch {
	case status == http.StatusBadRequest || status == http.StatusUnprocessableEntity:
		if msg == "" {
			msg = "the upstream model provider rejected the request"
		}
		ae.apiErr = apierr.InvalidRequest(msg).FromUpstream()
	case status == http.StatusUnauthorized || status == http.StatusPaymentRequired || status == http.StatusForbidden:
		ae.apiErr = apierr.Upstream("the upstream model provider refused the gateway's credentials; the operators have been alerted").
			WithCode(fmt.Sprintf("upstream_%d", status))
		ae.credentialStatus = status
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		ae.apiErr = apierr.Unavailable("the upstream model provider is overloaded; try again later").FromUpstream()
		ae.retryable = true
	case status >= 500:
		ae.apiErr = apierr.Upstream(fmt.Sprintf("the upstream model provider failed (%d)", status)).FromUpstream()
		ae.retryable = true
	default:
		ae.apiErr = apierr.Upstream(fmt.Sprintf("unexpected status %d from the upstream model provider", status)).FromUpstream()
	}
	return ae
}

// upstreamMessage reads the provider's error message, bounded.
func upstreamMessage(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil {
		return e.Error.Message
	}
	return ""
}
