package upstreamsim

import (
	"net/http"
	"strconv"
)

// apiError is a DeepSeek-style error response.
type apiError struct {
	status  int
	message string
	typ     string
	code    string
}

// body renders {"error":{"message","type","param","code"}} as DeepSeek does:
// param is always null.
func (e *apiError) body() []byte {
	b := make([]byte, 0, 96+len(e.message))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, e.message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.typ)
	b = append(b, `,"param":null,"code":`...)
	b = appendJSONString(b, e.code)
	return append(b, "}}"...)
}

// DeepSeek puts "invalid_request_error" in code for most of its errors.
const codeInvalidRequest = "invalid_request_error"

func errInvalid(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, message: msg, typ: "invalid_request_error", code: codeInvalidRequest}
}

func errParam(msg string) *apiError {
	return &apiError{status: http.StatusUnprocessableEntity, message: msg, typ: "invalid_request_error", code: codeInvalidRequest}
}

func errAuthFormat() *apiError {
	return &apiError{
		status:  http.StatusUnauthorized,
		message: "Authentication Fails (auth header format should be Bearer sk-...)",
		typ:     "authentication_error",
		code:    codeInvalidRequest,
	}
}

// errAuthKey names the last four characters of the key, as DeepSeek does.
func errAuthKey(key string) *apiError {
	tail := key
	if len(tail) > 4 {
		tail = tail[len(tail)-4:]
	}
	return &apiError{
		status:  http.StatusUnauthorized,
		message: "Authentication Fails, Your api key: ****" + tail + " is invalid",
		typ:     "authentication_error",
		code:    codeInvalidRequest,
	}
}

// errStatus is the error a status knob asks for, worded like DeepSeek's error
// catalogue.
func errStatus(status int) *apiError {
	switch status {
	case http.StatusBadRequest:
		return errInvalid("Invalid Format")
	case http.StatusUnauthorized:
		return errAuthKey("sim")
	case http.StatusPaymentRequired:
		return &apiError{status: status, message: "Insufficient Balance", typ: "unknown_error", code: codeInvalidRequest}
	case http.StatusUnprocessableEntity:
		return errParam("Invalid Parameters")
	case http.StatusTooManyRequests:
		return &apiError{status: status, message: "Rate Limit Reached", typ: "rate_limit_error", code: "rate_limit_reached"}
	case http.StatusInternalServerError:
		return &apiError{status: status, message: "Server Error", typ: "server_error", code: "server_error"}
	case http.StatusServiceUnavailable:
		return &apiError{status: status, message: "Server Overloaded", typ: "server_overloaded", code: "server_overloaded"}
	}
	text := http.StatusText(status)
	if text == "" {
		text = "Status " + strconv.Itoa(status)
	}
	typ := "invalid_request_error"
	if status >= 500 {
		typ = "server_error"
	}
	return &apiError{status: status, message: text, typ: typ, code: typ}
}

// writeErrorBody writes e without touching the chat counters.
func (s *Server) writeErrorBody(w http.ResponseWriter, e *apiError) {
	body := e.body()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}

// writeError answers a chat request with e and counts it.
func (s *Server) writeError(w http.ResponseWriter, e *apiError) {
	s.stats.status(e.status)
	s.stats.errors.Add(1)
	s.writeErrorBody(w, e)
}
