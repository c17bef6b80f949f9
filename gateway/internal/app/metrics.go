package app

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/metric"

	"github.com/qyai/qyai/gateway/internal/publish"
	"github.com/qyai/qyai/gateway/internal/quota"
)

// registerPublisherMetrics exposes the usage publisher's and spool's
// counters as OpenTelemetry observables, read at scrape time. Counter names
// get the Prometheus "_total" suffix from the exporter.
func registerPublisherMetrics(m metric.Meter, pub *publish.Publisher) error {
	type obs struct {
		name, help string
		counter    bool
		get        func(publish.Stats) int64
	}
	list := []obs{
		{"qyai_usage_events_queued", "Usage events in memory (queue and in flight), waiting for a JetStream ack.", false, func(s publish.Stats) int64 { return s.Queued }},
		{"qyai_usage_events_published", "Usage events acknowledged by JetStream (live and replayed from the spool).", true, func(s publish.Stats) int64 { return s.Published }},
		{"qyai_usage_events_retried", "Usage publish attempts that failed or timed out (the event went to the spool).", true, func(s publish.Stats) int64 { return s.Retried }},
		{"qyai_usage_events_spooled", "Usage events written to the disk spool.", true, func(s publish.Stats) int64 { return s.Spooled }},
		{"qyai_usage_events_replayed", "Spooled usage events acknowledged by JetStream.", true, func(s publish.Stats) int64 { return s.Replayed }},
		{"qyai_usage_events_dropped", "Usage events lost (spool full, damaged on disk, or published after shutdown).", true, func(s publish.Stats) int64 { return s.Dropped }},
		{"qyai_usage_spool_events", "Usage events in the disk spool, not yet replayed.", false, func(s publish.Stats) int64 { return s.SpoolEvents }},
		{"qyai_usage_spool_bytes", "Size of the disk spool's files in bytes.", false, func(s publish.Stats) int64 { return s.SpoolBytes }},
	}
	insts := make([]metric.Observable, len(list))
	var errs []error
	for i, o := range list {
		var err error
		if o.counter {
			insts[i], err = m.Int64ObservableCounter(o.name, metric.WithDescription(o.help))
		} else {
			insts[i], err = m.Int64ObservableGauge(o.name, metric.WithDescription(o.help))
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("publisher metrics: %w", err)
	}
	_, err := m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		st := pub.Stats()
		for i, o := range list {
			ob.ObserveInt64(insts[i].(metric.Int64Observable), o.get(st))
		}
		return nil
	}, insts...)
	return err
}

// registerFallbackMetrics exposes whether the limits run on the local
// fallback (Redis unreachable) and how many admissions it decided.
func registerFallbackMetrics(m metric.Meter, lim *quota.Limiter) error {
	active, err1 := m.Int64ObservableGauge("qyai_gateway_redis_fallback",
		metric.WithDescription("1 while the rate and quota limits run on this replica's local fallback because Redis is unreachable, else 0."))
	admissions, err2 := m.Int64ObservableCounter("qyai_gateway_limit_fallback_admissions",
		metric.WithDescription("Admissions decided by the local fallback limiter (each replica allows its share of a key's limits) while Redis was unreachable."))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("fallback metrics: %w", err)
	}
	_, err := m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		on, n := lim.Fallback()
		v := int64(0)
		if on {
			v = 1
		}
		ob.ObserveInt64(active, v)
		ob.ObserveInt64(admissions, n)
		return nil
	}, active, admissions)
	return err
}
