// Package telemetry sets up OpenTelemetry for the gateway: traces exported
// over OTLP/HTTP when an endpoint is configured (the standard OTEL_*
// environment variables, read by the OpenTelemetry SDK itself), and
// metrics exposed in the Prometheus format at /metrics (on the internal
// listener, GATEWAY_METRICS_ADDR).
//
// Without an OTLP endpoint spans are still created unsampled, so every
// request has a trace id for logs and usage events at almost no cost.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config selects exporters.
type Config struct {
	Service  string
	Instance string
	// OTLPEndpoint, when set, exports traces over OTLP/HTTP (the SDK also
	// honours OTEL_EXPORTER_OTLP_* and OTEL_TRACES_SAMPLER* on its own).
	OTLPEndpoint string
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

	attrMu sync.RWMutex
	attrs  map[attrKey]metric.MeasurementOption

	shutdown []func(context.Context) error
}

type attrKey struct {
	route, model string
	status       int
}

// New builds the providers.
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.Service),
		attribute.String("service.instance.id", cfg.Instance),
	)
	t := &Telemetry{Propagator: propagation.TraceContext{}, attrs: map[attrKey]metric.MeasurementOption{}}

	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if cfg.OTLPEndpoint != "" {
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.OTLPEndpoint))
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	} else {
		topts = append(topts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(topts...)
	t.shutdown = append(t.shutdown, tp.Shutdown)
	t.Tracer = tp.Tracer("github.com/qyai/qyai/gateway")

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.Meter = mp.Meter("github.com/qyai/qyai/gateway")
	t.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

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
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("create instruments: %w", err)
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
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}
