package app

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/metric"

	"github.com/qyai/qyai/gateway/internal/publish"
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
