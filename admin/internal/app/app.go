// Package app wires the admin service together and runs it until its
// context ends, then shuts down gracefully; or, given a subcommand, runs the
// operators' CLI (package cli).
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
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/adminauth"
	"github.com/qyai/qyai/admin/internal/audit"
	auditch "github.com/qyai/qyai/admin/internal/audit/clickhouse"
	auditredis "github.com/qyai/qyai/admin/internal/audit/redis"
	"github.com/qyai/qyai/admin/internal/billing"
	chstore "github.com/qyai/qyai/admin/internal/billing/clickhouse"
	billingredis "github.com/qyai/qyai/admin/internal/billing/redis"
	"github.com/qyai/qyai/admin/internal/cli"
	"github.com/qyai/qyai/admin/internal/config"
	"github.com/qyai/qyai/admin/internal/httpapi"
	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/logging"
	"github.com/qyai/qyai/pkg/redisretry"
	"github.com/qyai/qyai/pkg/telemetry"
	"github.com/qyai/qyai/pkg/tier"
)

// Run is the admin binary. Without a subcommand (or with "serve") it loads
// the configuration from the environment and serves until ctx is done; with
// --validate it only checks the configuration. "keys ..." and "usage ..."
// run the CLI (see cli.Usage). It writes the error it returns to stderr
// once, as one line "admin: ..." (logging.Report; the CLI writes its own,
// with its usage): main only exits.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := start(ctx, args, stdout, stderr)
	logging.Report(stderr, "admin", err)
	return err
}

func start(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "serve":
			return serve(ctx, args[1:], stderr)
		case "help":
			_, _ = fmt.Fprint(stdout, cli.Usage)
			return nil
		}
		cfg, err := config.LoadClient(os.Getenv)
		if err != nil {
			return fmt.Errorf("invalid configuration: %w", err)
		}
		return logging.Reported(cli.Run(ctx, args, cfg, stdout, stderr))
	}
	return serve(ctx, args, stderr)
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		_, _ = fmt.Fprint(stderr, cli.Usage)
		fs.PrintDefaults()
	}
	validate := fs.Bool("validate", false, "check the configuration and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return logging.Reported(err) // the flag set printed it, with the usage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	if *validate {
		_, _ = fmt.Fprintln(stderr, "admin: configuration is valid")
		return nil
	}
	level, _ := logging.ParseLevel(cfg.LogLevel) // validated by config
	return Serve(ctx, cfg, logging.New(stderr, "admin", level), nil)
}

// Serve runs admin with cfg until ctx is done. When ready is not nil, it
// receives the listening address once the server accepts connections (tests
// listen on port 0).
func Serve(ctx context.Context, cfg config.Config, log *slog.Logger, ready chan<- net.Addr) error {
	if cfg.UsesDefaultPepper() {
		log.Warn("KEY_PEPPER is not set: QYAI_DEV is on, using the public development pepper; set KEY_PEPPER (same value as the gateway) in production")
	}
	tiers, err := tier.Load(cfg.TiersFile)
	if err != nil {
		return err
	}
	// gin keeps its mode in a package variable (atomic): release mode only
	// silences its debug route dump on stdout.
	gin.SetMode(gin.ReleaseMode)

	rdb := goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs:                 cfg.Redis.Addrs,
		DialTimeout:           max(cfg.Redis.Timeout, time.Second),
		ReadTimeout:           cfg.Redis.Timeout,
		WriteTimeout:          cfg.Redis.Timeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DisableIdentity:       true,
	})
	defer func() { _ = rdb.Close() }() // shutting down: nothing left to do on error
	// A Redis still loading its data after a restart, or blocked in a script,
	// refuses commands for a moment: retry them within each call's bound. On a
	// cluster (several REDIS_ADDR), also retry a failover's errors, refreshing
	// the slot map (see redisretry.ClusterHook).
	redisretry.AddTo(rdb)

	ch := chstore.NewConnector(chschema.Options{
		Addr:     cfg.ClickHouse.Addr,
		Database: cfg.ClickHouse.Database,
		User:     cfg.ClickHouse.User,
		Password: cfg.ClickHouse.Password,
		Cluster:  cfg.ClickHouse.Cluster,
	}, chschema.ApplyOptions{Cluster: cfg.ClickHouse.Cluster, Logger: log}, log)
	defer func() { _ = ch.Close() }() // shutting down: nothing left to do on error

	now := time.Now
	keyStore := redisstore.New(rdb, cfg.Redis.Timeout)
	db, qt := cfg.ClickHouse.Database, cfg.ClickHouse.QueryTimeout
	usage := chstore.NewStore(ch, db, qt)
	tokens := make([]adminauth.Token, 0, len(cfg.AdminTokens))
	for _, t := range cfg.AdminTokens {
		tokens = append(tokens, adminauth.Token{Name: t.Name, Secret: t.Token})
	}
	prov, err := telemetry.New(ctx, telemetry.Config{
		Service: "qyai-admin", Instance: cfg.Addr, TracesEndpoint: cfg.OTLPTraces, MetricsEndpoint: cfg.OTLPMetrics,
	}, "github.com/qyai/qyai/admin")
	if err != nil {
		return fmt.Errorf("set up telemetry: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := prov.Shutdown(sctx); err != nil {
			log.Warn("shut down telemetry", "err", err)
		}
	}()
	tel, err := httpapi.NewTelemetry(prov.Tracer, prov.Propagator, prov.Meter)
	if err != nil {
		return fmt.Errorf("create request metrics: %w", err)
	}
	handler := httpapi.New(httpapi.Deps{
		Telemetry:       tel,
		Metrics:         prov.Metrics,
		Keys:            keys.NewService(keyStore, []byte(cfg.KeyPepper), tiers, now),
		Billing:         billing.NewService(usage, keyStore, now),
		AdminTokens:     tokens,
		AuthFailures:    adminauth.NewLimiter(cfg.AuthMaxFailures, cfg.AuthFailureWindow, now),
		TrustedProxies:  cfg.TrustedProxies,
		BillingLimit:    billingLimit(rdb, cfg),
		RegenerateLimit: billingredis.NewLimiter(rdb, billingredis.Regenerate, cfg.RegenerateRPM, cfg.Redis.Timeout, time.Now),
		Ready: []httpapi.Check{
			{Name: "redis", Timeout: cfg.Redis.Timeout, Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
			{Name: "clickhouse", Timeout: time.Second, Ping: ch.Ping},
		},
		Log: log,
		Now: now,
	})

	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      cfg.ClickHouse.QueryTimeout + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	// The schema goroutine retries until ClickHouse answers; admin serves
	// keys meanwhile and billing answers 503.
	bgCtx, stopBg := context.WithCancel(ctx)
	defer stopBg()
	schemaDone := make(chan struct{})
	go func() {
		defer close(schemaDone)
		if err := ch.Run(bgCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("clickhouse schema not applied", "err", err)
		}
	}()
	// The audit flusher moves entries from the Redis stream to ClickHouse;
	// it waits quietly while ClickHouse is not ready, and tries once more
	// at shutdown. Its Redis calls are not on a request path: a longer
	// timeout suits reading a backlog.
	flusher := &audit.Flusher{
		Buffer:   auditredis.New(rdb, max(cfg.Redis.Timeout, 2*time.Second)),
		Sink:     auditch.New(ch, db, cfg.ClickHouse.Cluster != "", qt),
		Log:      log,
		Interval: cfg.AuditFlushInterval,
		Batch:    500,
	}
	// Not bgCtx: the flusher outlives ctx until the server has drained.
	flushCtx, stopFlush := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFlush()
	flushDone := make(chan struct{})
	go func() {
		defer close(flushDone)
		flusher.Run(flushCtx, 5*time.Second)
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("admin listening", "addr", ln.Addr().String(), "redis", cfg.Redis.Addrs,
		"clickhouse", cfg.ClickHouse.Addr, "database", cfg.ClickHouse.Database)
	if ready != nil {
		ready <- ln.Addr()
	}

	select {
	case err := <-serveErr:
		stopBg()
		stopFlush()
		<-schemaDone
		<-flushDone
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}
	log.Info("admin shutting down", "timeout", cfg.ShutdownTimeout)
	stopBg()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	// The flusher's last round runs after the server stopped taking
	// changes, so that it sees them all.
	stopFlush()
	<-schemaDone
	<-flushDone
	if err != nil {
		return fmt.Errorf("shut down http server: %w", err)
	}
	log.Info("admin stopped")
	return nil
}

// billingLimit is the billing endpoints' per-key limit, nil when
// BILLING_RPM is 0. A nil *Limiter must not become a non-nil interface.
func billingLimit(rdb goredis.UniversalClient, cfg config.Config) httpapi.BillingLimiter {
	if cfg.BillingRPM == 0 {
		return nil
	}
	return billingredis.NewLimiter(rdb, billingredis.Billing, cfg.BillingRPM, cfg.Redis.Timeout, time.Now)
}
