// Package telemetry sets up OpenTelemetry the same way for every QYAI
// service: traces exported over OTLP/HTTP when an endpoint is configured
// (otherwise spans are created unsampled, so that every request still has
// a trace id for logs and usage events at almost no cost), and metrics both
// in the Prometheus format (a handler the service mounts at /metrics) and,
// when an endpoint is configured, pushed over OTLP/HTTP.
//
// The endpoints come from the standard variables, read by each service's
// config loader (Endpoints): OTEL_EXPORTER_OTLP_ENDPOINT, a base URL to
// which /v1/traces and /v1/metrics are appended, or the per-signal
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
// used as they are. The SDK itself still honours the other OTEL_* variables
// (headers, compression, timeouts, OTEL_METRIC_EXPORT_INTERVAL, ...).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config selects the exporters of one service.
type Config struct {
	Service  string // service.name, e.g. "qyai-gateway"
	Instance string // service.instance.id; may be empty
	// TracesEndpoint, when set, is the full OTLP/HTTP URL spans are sent to
	// (e.g. http://otel-collector:4318/v1/traces).
	TracesEndpoint string
	// MetricsEndpoint, when set, is the full OTLP/HTTP URL metrics are
	// pushed to, besides the Prometheus handler.
	MetricsEndpoint string
}

// Endpoints returns the OTLP/HTTP trace and metric URLs from the standard
// variables, read through getenv: the per-signal variable as it is, else
// the base OTEL_EXPORTER_OTLP_ENDPOINT with the signal's path appended, as
// the OpenTelemetry specification says.
func Endpoints(getenv func(string) string) (traces, metrics string) {
	base := strings.TrimRight(strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_ENDPOINT")), "/")
	signal := func(name, path string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		if base == "" {
			return ""
		}
		return base + path
	}
	return signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces"), signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "/v1/metrics")
}

// Providers are a service's tracer and meter providers.
type Providers struct {
	// Tracer is the service's tracer: a real one even when nothing is
	// exported (its spans are then unsampled and not recorded).
	Tracer trace.Tracer
	// Meter is the service's meter.
	Meter metric.Meter
	// Propagator reads and writes W3C trace context (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
	// Metrics renders the metrics in the Prometheus format.
	Metrics http.Handler
	// Exporting reports whether spans are exported (sampled).
	Exporting bool

	shutdown []func(context.Context) error
}

// New builds the providers; scope names the tracer and meter (the
// service's module path).
func New(ctx context.Context, cfg Config, scope string) (*Providers, error) {
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.Service),
		attribute.String("service.instance.id", cfg.Instance),
	)
	p := &Providers{Propagator: propagation.TraceContext{}}

	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if cfg.TracesEndpoint != "" {
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.TracesEndpoint))
		if err != nil {
			return nil, fmt.Errorf("create otlp trace exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
		p.Exporting = true
	} else {
		topts = append(topts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(topts...)
	p.shutdown = append(p.shutdown, tp.Shutdown)
	p.Tracer = tp.Tracer(scope)

	reg := prometheus.NewRegistry()
	prom, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("create prometheus exporter: %w", err), p.Shutdown(ctx))
	}
	mopts := []sdkmetric.Option{sdkmetric.WithReader(prom), sdkmetric.WithResource(res)}
	if cfg.MetricsEndpoint != "" {
		exp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(cfg.MetricsEndpoint))
		if err != nil {
			return nil, errors.Join(fmt.Errorf("create otlp metric exporter: %w", err), p.Shutdown(ctx))
		}
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	mp := sdkmetric.NewMeterProvider(mopts...)
	p.shutdown = append(p.shutdown, mp.Shutdown)
	p.Meter = mp.Meter(scope)
	p.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return p, nil
}

// Shutdown flushes what is left to export and stops the providers.
func (p *Providers) Shutdown(ctx context.Context) error {
	var errs []error
	for i := len(p.shutdown) - 1; i >= 0; i-- {
		errs = append(errs, p.shutdown[i](ctx))
	}
	return errors.Join(errs...)
}
