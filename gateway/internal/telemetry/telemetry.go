// Package telemetry holds the gateway's tracer and instruments, on the
// providers pkg/telemetry builds: traces exported over OTLP/HTTP when an
// endpoint is configured, metrics in the Prometheus format at /metrics (on
// the internal listener, GATEWAY_METRICS_ADDR) and, when configured, pushed
// over OTLP/HTTP.
//
// Without an OTLP endpoint spans are still created unsampled, so every
// request has a trace id for logs and usage events at almost no cost.
//
// Chat requests are described in OpenTelemetry's GenAI semantic
// conventions (genai.go) besides the qyai_* series, which the chart's
// dashboards and alerts use.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	otelsetup "github.com/qyai/qyai/pkg/telemetry"
)

// Config selects exporters.
type Config struct {
	Service  string
	Instance string
	// OTLPTraces and OTLPMetrics, when set, are the OTLP/HTTP URLs spans
	// and metrics are exported to (the SDK also honours the other
	// OTEL_EXPORTER_OTLP_* variables and OTEL_METRIC_EXPORT_INTERVAL).
	OTLPTraces, OTLPMetrics string
}

// Telemetry is the gateway's tracer and instruments.
type Telemetry struct {
	Tracer     trace.Tracer
	Propagator propagation.TextMapPropagator
	Metrics    http.Handler
	Meter      metric.Meter

	requests      metric.Int64Counter
	duration      metric.Float64Histogram
	ttft          metric.Float64Histogram
	rateLimited   metric.Int64Counter
	upstreamFails metric.Int64Counter
	genai         genaiInstruments

	attrMu sync.RWMutex
	attrs  map[attrKey]metric.MeasurementOption
	gattrs map[genaiKey]*genaiSets

	providers *otelsetup.Providers
}

type attrKey struct {
	route, model string
	status       int
}

// New builds the providers.
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	p, err := otelsetup.New(ctx, otelsetup.Config{
		Service: cfg.Service, Instance: cfg.Instance, TracesEndpoint: cfg.OTLPTraces, MetricsEndpoint: cfg.OTLPMetrics,
	}, "github.com/qyai/qyai/gateway")
	if err != nil {
		return nil, err
	}
	t := &Telemetry{
		Tracer: p.Tracer, Propagator: p.Propagator, Metrics: p.Metrics, Meter: p.Meter, providers: p,
		attrs: map[attrKey]metric.MeasurementOption{}, gattrs: map[genaiKey]*genaiSets{},
	}

	latency := metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	t.requests, err = t.Meter.Int64Counter("qyai_gateway_requests", metric.WithDescription("HTTP requests served, by route, status and public model"))
	add(err)
	t.duration, err = t.Meter.Float64Histogram("qyai_gateway_request_duration", metric.WithUnit("s"),
		metric.WithDescription("Time from request to the end of the response (streams included)"), latency)
	add(err)
	t.ttft, err = t.Meter.Float64Histogram("qyai_gateway_time_to_first_byte", metric.WithUnit("s"),
		metric.WithDescription("Time from request to the first byte of the answer sent to the client"), latency)
	add(err)
	t.rateLimited, err = t.Meter.Int64Counter("qyai_gateway_rate_limited", metric.WithDescription("Requests refused by limits, by reason"))
	add(err)
	t.upstreamFails, err = t.Meter.Int64Counter("qyai_upstream_credential_failures",
		metric.WithDescription("Upstream 401/402/403 answers: the gateway's upstream key or balance is broken"))
	add(err)
	t.genai, err = newGenAIInstruments(t.Meter)
	add(err)
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(fmt.Errorf("create instruments: %w", err), p.Shutdown(ctx))
	}
	return t, nil
}

// attrs caches attribute sets, so the hot path does not allocate them.
func (t *Telemetry) attrSet(k attrKey) metric.MeasurementOption {
	t.attrMu.RLock()
	o, ok := t.attrs[k]
	t.attrMu.RUnlock()
	if ok {
		return o
	}
	o = metric.WithAttributeSet(attribute.NewSet(
		attribute.String("route", k.route), attribute.String("model", k.model), attribute.String("status", strconv.Itoa(k.status))))
	t.attrMu.Lock()
	if len(t.attrs) < 10000 { // bounded: routes x models x statuses
		t.attrs[k] = o
	}
	t.attrMu.Unlock()
	return o
}

// ObserveRequest records one finished request. model must come from the
// catalog (bounded), never from the client.
func (t *Telemetry) ObserveRequest(ctx context.Context, route, model string, status int, d, ttfb time.Duration) {
	o := t.attrSet(attrKey{route: route, model: model, status: status})
	t.requests.Add(ctx, 1, o)
	t.duration.Record(ctx, d.Seconds(), o)
	if ttfb > 0 {
		t.ttft.Record(ctx, ttfb.Seconds(), o)
	}
}

// RateLimited counts a refusal by the limits.
func (t *Telemetry) RateLimited(ctx context.Context, reason string) {
	t.rateLimited.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
}

// UpstreamCredentialFailure counts an upstream 401/402/403.
func (t *Telemetry) UpstreamCredentialFailure(status int) {
	t.upstreamFails.Add(context.Background(), 1, metric.WithAttributes(attribute.Int("status", status)))
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error { return t.providers.Shutdown(ctx) }
