// Package apierr is the one catalogue of API errors and their OpenAI-shaped
// JSON body {"error":{"message","type","param","code"}}.
//
// Every error says where it came from: Source is "gateway" for errors we
// raise ourselves and "upstream" for errors relayed from the model provider.
package apierr

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Types of error, as the public API documents them.
const (
	TypeInvalidRequest     = "invalid_request_error"
	TypeAuthentication     = "authentication_error"
	TypePermission         = "permission_error"
	TypeNotFound           = "not_found_error"
	TypeRateLimit          = "rate_limit_error"
	TypeInternal           = "internal_error"
	TypeUpstream           = "upstream_error"
	TypeServiceUnavailable = "service_unavailable"
	TypeUpstreamTimeout    = "upstream_timeout"
)

// Sources of an error.
const (
	SourceGateway  = "gateway"
	SourceUpstream = "upstream"
)

// Error is an API error with its HTTP status.
type Error struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
	// Source tells whether we raised the error or relayed it from upstream.
	// It is not part of the OpenAI body; handlers expose it as a header.
	Source string `json:"-"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Type, e.Message)
}

// WithParam returns a copy of e that names the offending request field.
func (e *Error) WithParam(param string) *Error {
	c := *e
	c.Param = &param
	return &c
}

// WithCode returns a copy of e with a machine-readable code.
func (e *Error) WithCode(code string) *Error {
	c := *e
	c.Code = &code
	return &c
}

// FromUpstream returns a copy of e marked as relayed from the upstream.
func (e *Error) FromUpstream() *Error {
	c := *e
	c.Source = SourceUpstream
	return &c
}

// Body is the JSON wire form of an error response.
type Body struct {
	Error *Error `json:"error"`
}

// JSON renders the OpenAI-shaped body.
func (e *Error) JSON() []byte {
	b, _ := json.Marshal(Body{Error: e}) // cannot fail: only strings and pointers to strings
	return b
}

// Write sends e as the response.
func (e *Error) Write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	src := e.Source
	if src == "" {
		src = SourceGateway
	}
	h.Set("X-Error-Source", src)
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.JSON())
}

func newErr(status int, typ, msg string) *Error {
	return &Error{Status: status, Type: typ, Message: msg, Source: SourceGateway}
}

// New returns an error with the given status, type and message.
func New(status int, typ, msg string) *Error { return newErr(status, typ, msg) }

// InvalidRequest is a 400 invalid_request_error.
func InvalidRequest(msg string) *Error { return newErr(http.StatusBadRequest, TypeInvalidRequest, msg) }

// RequestTimeout is a 408 invalid_request_error with code request_timeout:
// the client did not send its request in time.
func RequestTimeout(msg string) *Error {
	return newErr(http.StatusRequestTimeout, TypeInvalidRequest, msg).WithCode("request_timeout")
}

// Unauthenticated is a 401 authentication_error.
func Unauthenticated(msg string) *Error {
	return newErr(http.StatusUnauthorized, TypeAuthentication, msg)
}

// PermissionDenied is a 403 permission_error.
func PermissionDenied(msg string) *Error {
	return newErr(http.StatusForbidden, TypePermission, msg)
}

// NotFound is a 404 not_found_error.
func NotFound(msg string) *Error { return newErr(http.StatusNotFound, TypeNotFound, msg) }

// RateLimited is a 429 rate_limit_error.
func RateLimited(msg string) *Error { return newErr(http.StatusTooManyRequests, TypeRateLimit, msg) }

// Internal is a 500 internal_error. Handlers avoid it: every failure we can
// name has a better status.
func Internal(msg string) *Error { return newErr(http.StatusInternalServerError, TypeInternal, msg) }

// Upstream is a 502 upstream_error.
func Upstream(msg string) *Error { return newErr(http.StatusBadGateway, TypeUpstream, msg) }

// Unavailable is a 503 service_unavailable.
func Unavailable(msg string) *Error {
	return newErr(http.StatusServiceUnavailable, TypeServiceUnavailable, msg)
}

// Timeout is a 504 upstream_timeout.
func Timeout(msg string) *Error { return newErr(http.StatusGatewayTimeout, TypeUpstreamTimeout, msg) }
