package httpapi

import (
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry traces admin's requests and records their durations.
type Telemetry struct {
	Tracer     trace.Tracer
	Propagator propagation.TextMapPropagator
	// Duration is http.server.request.duration (seconds).
	Duration metric.Float64Histogram
}

// NewTelemetry creates the request instruments on m.
func NewTelemetry(tracer trace.Tracer, prop propagation.TextMapPropagator, m metric.Meter) (*Telemetry, error) {
	d, err := m.Float64Histogram("http.server.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP server requests, by method, route and status."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	if err != nil {
		return nil, err
	}
	return &Telemetry{Tracer: tracer, Propagator: prop, Duration: d}, nil
}

// trace runs the request in a server span named "{method} {route}" (the
// route template, never the raw path: it may hold a key id), joined to the
// caller's traceparent (the gateway's, for the billing passthrough).
func (a *api) trace(c *gin.Context) {
	t := a.Telemetry
	start := time.Now()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	ctx := t.Propagator.Extract(c.Request.Context(), propagation.HeaderCarrier(c.Request.Header))
	ctx, span := t.Tracer.Start(ctx, c.Request.Method+" "+route, trace.WithSpanKind(trace.SpanKindServer))
	c.Request = c.Request.WithContext(ctx)
	c.Next()
	status := c.Writer.Status()
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", c.Request.Method),
		attribute.String("http.route", route),
		attribute.Int("http.response.status_code", status),
	}
	if status >= 500 {
		attrs = append(attrs, attribute.String("error.type", strconv.Itoa(status)))
	}
	if span.IsRecording() {
		span.SetAttributes(attrs...)
		if status >= 500 {
			span.SetStatus(codes.Error, strconv.Itoa(status))
		}
	}
	span.End()
	t.Duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(attrs...))
}
