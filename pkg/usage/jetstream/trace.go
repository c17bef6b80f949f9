package usagejs

import (
	"github.com/nats-io/nats.go"
)

// W3C trace context headers of a usage message, as the traceparent and
// tracestate of the gateway span that produced the event.
const (
	TraceParentHeader = "traceparent"
	TraceStateHeader  = "tracestate"
)

// TraceHeader returns the message headers that carry an event's trace
// context (usage.Event's TraceParent and TraceState), or nil when it has
// none (its request span was not sampled): the usual case when tracing is
// off, which then costs nothing.
func TraceHeader(traceParent, traceState string) nats.Header {
	if traceParent == "" {
		return nil
	}
	h := nats.Header{TraceParentHeader: {traceParent}}
	if traceState != "" {
		h[TraceStateHeader] = []string{traceState}
	}
	return h
}

// HeaderCarrier adapts NATS message headers to OpenTelemetry's
// propagation.TextMapCarrier. NATS headers are case-sensitive, unlike
// HTTP's, so propagation.HeaderCarrier (which canonicalises keys) would not
// find the lower-case W3C names.
type HeaderCarrier nats.Header

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string { return nats.Header(c).Get(key) }

// Set sets key to value.
func (c HeaderCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
