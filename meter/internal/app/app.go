// Package app wires the meter: configuration, NATS JetStream (the USAGE
// stream and the shared durable pull consumer), ClickHouse (migrations, the
// price table and the usage_events writer), the sink loop, the rollup loop
// of the hourly aggregates, and the health and metrics server.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"

	"github.com/qyai/qyai/meter/internal/config"
	"github.com/qyai/qyai/meter/internal/rollup"
	"github.com/qyai/qyai/meter/internal/sink"
	chsink "github.com/qyai/qyai/meter/internal/sink/clickhouse"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/ledger"
	"github.com/qyai/qyai/pkg/logging"
	"github.com/qyai/qyai/pkg/natsconn"
	"github.com/qyai/qyai/pkg/pricing"
	"github.com/qyai/qyai/pkg/telemetry"
	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// Run is the meter's main: it parses args (without the program name),
// reads the environment, and serves until ctx is done. It writes the error
// it returns to stderr once, as one line "meter: ..." (logging.Report):
// main only exits.
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	err := start(ctx, args, stderr)
	logging.Report(stderr, "meter", err)
	return err
}

func start(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("meter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	validate := fs.Bool("validate", false, "validate the configuration from the environment and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return logging.Reported(err) // the flag set printed it, with the usage
	}
	cfg, err := config.Load(os.Getenv)
	if err = errors.Join(err, cfg.Validate()); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	if *validate {
		_, _ = fmt.Fprintln(stderr, "meter: configuration is valid")
		return nil
	}
	return Serve(ctx, cfg, Options{Logger: logging.New(stderr, "meter", cfg.LogLevel)})
}

// Options holds what Serve needs beyond the configuration.
type Options struct {
	Logger *slog.Logger // required
	// Listener, when set, serves health and metrics instead of listening
	// on cfg.Addr (tests pass one on port 0).
	Listener net.Listener
	// OpenClickHouse opens the ClickHouse connection; nil means
	// chschema.Open. Embedders wrap the connection with it (tests inject
	// faults into inserts that way).
	OpenClickHouse func(ctx context.Context, opts chschema.Options) (driver.Conn, error)
}

// ConsumerConfig is the durable pull consumer every meter replica shares.
func ConsumerConfig(cfg config.Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       cfg.NATS.Consumer,
		Description:   "QYAI meter: usage events into ClickHouse",
		FilterSubject: usage.SubjectFilter,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.NATS.AckWait,
		// Never give up on a message: poison messages are terminated
		// explicitly after dead-lettering, and anything else is retried.
		MaxDeliver: -1,
		// Room for twenty replicas each holding three full batches (one
		// being inserted, possibly retried while ClickHouse is down, one
		// prepared, one being fetched).
		MaxAckPending: 60 * cfg.Batch.Size,
	}
}

// Serve runs the meter until ctx is done, then stores and acks the batch in
// hand and returns nil. Transient failures (NATS or ClickHouse down) are
// retried forever; only a broken setup returns an error.
func Serve(ctx context.Context, cfg config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		return errors.New("meter: Options.Logger is required")
	}

	tel, err := telemetry.New(ctx, telemetry.Config{
		Service: "qyai-meter", Instance: hostname(), TracesEndpoint: cfg.OTLPTraces, MetricsEndpoint: cfg.OTLPMetrics,
	}, "github.com/qyai/qyai/meter")
	if err != nil {
		return fmt.Errorf("set up telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			log.Warn("shut down telemetry", "err", err)
		}
	}()
	meter := tel.Meter

	h := &health{}
	ln := opts.Listener
	if ln == nil {
		if ln, err = new(net.ListenConfig).Listen(ctx, "tcp", cfg.Addr); err != nil {
			return fmt.Errorf("listen on METER_ADDR: %w", err)
		}
	}
	srv := &http.Server{
		Handler:           h.routes(tel.Metrics),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("meter starting", "addr", ln.Addr().String(), "nats", natsconn.RedactURLs(cfg.NATS.URL), "nats_auth", cfg.NATS.Auth.Method(),
		"clickhouse", cfg.ClickHouse.Addr, "database", cfg.ClickHouse.Database)

	natsOpts, err := cfg.NATS.Auth.Options(log)
	if err != nil {
		return fmt.Errorf("nats options: %w", err)
	}
	nc, err := nats.Connect(cfg.NATS.URL, append(natsOpts,
		nats.Name("qyai-meter"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.Timeout(2*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil on our own Close
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats reconnected") }),
	)...)
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("create jetstream context: %w", err)
	}

	prices := pricing.Default()
	open := opts.OpenClickHouse
	if open == nil {
		open = chschema.Open
	}
	var conn driver.Conn
	err = retry(ctx, log, "prepare clickhouse", func(ctx context.Context) error {
		o := chschema.Options{
			Addr: cfg.ClickHouse.Addr, Database: cfg.ClickHouse.Database,
			User: cfg.ClickHouse.User, Password: cfg.ClickHouse.Password, Cluster: cfg.ClickHouse.Cluster,
		}
		applyOpts := chschema.ApplyOptions{Cluster: cfg.ClickHouse.Cluster, Logger: log}
		if cfg.ClickHouse.Cluster != "" {
			// Every node of the cluster, one connection each.
			if err := chschema.ApplyAll(ctx, o, applyOpts); err != nil {
				return err
			}
		}
		c, err := open(ctx, o)
		if err != nil {
			return err
		}
		if cfg.ClickHouse.Cluster == "" {
			err = chschema.Apply(ctx, c, cfg.ClickHouse.Database, applyOpts)
		}
		if err == nil {
			// The price table as data, for finance's SQL (docs/clickhouse.md).
			err = chschema.SyncPrices(ctx, c, cfg.ClickHouse.Database, cfg.ClickHouse.Cluster, prices, time.Now())
		}
		if err != nil {
			_ = c.Close() // the setup error is the one to report
			return err
		}
		conn = c
		return nil
	})
	if err != nil {
		return startupErr(ctx, err)
	}
	defer func() { _ = conn.Close() }() // shutting down: nothing left to do on error

	var cons jetstream.Consumer
	err = retry(ctx, log, "prepare jetstream", func(ctx context.Context) error {
		if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: cfg.NATS.StreamReplicas}); err != nil {
			return err
		}
		c, err := js.CreateOrUpdateConsumer(ctx, usage.StreamName, ConsumerConfig(cfg))
		if err != nil {
			return fmt.Errorf("ensure consumer %s: %w", cfg.NATS.Consumer, err)
		}
		cons = c
		return nil
	})
	if err != nil {
		return startupErr(ctx, err)
	}
	if err := registerLag(meter, cons); err != nil {
		return err
	}

	writer := chsink.NewWriter(conn, cfg.ClickHouse.Database, cfg.ClickHouse.Cluster != "", time.Now)
	sk, err := sink.New(cons, js, writer, prices, log, meter, sink.Config{
		BatchSize:    cfg.Batch.Size,
		MaxWait:      cfg.Batch.MaxAge,
		AckWait:      cfg.NATS.AckWait,
		DrainTimeout: cfg.Batch.DrainTimeout,
		Tracer:       tel.Tracer,
		Propagator:   tel.Propagator,
	})
	if err != nil {
		return err
	}
	var rollups sync.WaitGroup
	if cfg.Rollup.Interval > 0 && cfg.ClickHouse.Cluster != "" {
		// A replica fetches the parts of usage_events and of its counter table
		// independently, so a rollup reading a lagging replica could see a
		// counter ahead of its rows and record a wrong clean bucket, for good.
		// On a cluster every bucket stays dirty and is read from usage_events
		// FINAL instead: exact, at the cost of reading raw rows
		// (docs/clickhouse.md, "Cluster form").
		log.Info("clickhouse cluster: rollups off, readers aggregate usage_events FINAL", "cluster", cfg.ClickHouse.Cluster)
	} else if cfg.Rollup.Interval > 0 {
		db := cfg.ClickHouse.Database
		loop, err := rollup.New(func(ctx context.Context, o ledger.RollupOptions) (ledger.RollupStats, error) {
			return ledger.Rollup(ctx, conn, db, o)
		}, rollup.Config{
			Interval: cfg.Rollup.Interval, Settle: cfg.Rollup.Settle, Cluster: cfg.ClickHouse.Cluster,
		}, log, meter, time.Now)
		if err != nil {
			return err
		}
		rctx, stopRollups := context.WithCancel(ctx)
		defer func() { stopRollups(); rollups.Wait() }()
		rollups.Go(func() { loop.Run(rctx) })
	}

	h.ready(nc, writer)
	log.Info("meter ready", "consumer", cfg.NATS.Consumer, "batch_size", cfg.Batch.Size, "batch_max_age", cfg.Batch.MaxAge,
		"rollup_interval", cfg.Rollup.Interval)
	sk.Run(ctx)
	// Acks and naks are fire-and-forget publishes: send them before closing.
	if err := nc.FlushTimeout(2 * time.Second); err != nil {
		log.Warn("flush nats at shutdown: unacked messages will be redelivered", "err", err)
	}
	log.Info("meter stopped")
	return nil
}

// hostname names this replica in telemetry (service.instance.id).
func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}

// registerLag exposes the consumer's backlog, read from JetStream at each
// scrape (one request, bounded to a second).
func registerLag(meter metric.Meter, cons jetstream.Consumer) error {
	pending, err1 := meter.Int64ObservableGauge("meter.consumer.pending",
		metric.WithDescription("Usage events in the stream not yet delivered to any meter."))
	ackPending, err2 := meter.Int64ObservableGauge("meter.consumer.ack_pending",
		metric.WithDescription("Usage events delivered to a meter and not yet acked."))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("create lag metrics: %w", err)
	}
	_, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err := cons.Info(ctx)
		if err != nil {
			return nil // no sample rather than a failed scrape
		}
		o.ObserveInt64(pending, int64(info.NumPending))
		o.ObserveInt64(ackPending, int64(info.NumAckPending))
		return nil
	}, pending, ackPending)
	if err != nil {
		return fmt.Errorf("register lag metrics: %w", err)
	}
	return nil
}

// retry calls fn until it succeeds or ctx is done, backing off from 100 ms
// to 5 s: a dependency that is still starting is not a reason to exit.
func retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		log.Warn(what, "attempt", attempt, "retry_in", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, errors.Join(ctx.Err(), err))
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// startupErr turns a startup aborted by shutdown into a clean exit.
func startupErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil //nolint:nilerr // stopped while starting: a clean stop, not a failure
	}
	return err
}
