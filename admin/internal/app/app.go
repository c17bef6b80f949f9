// Package app wires the admin service together and runs it until its
// context ends, then shuts down gracefully.
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
	"time"

	"github.com/gin-gonic/gin"
	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/admin/internal/billing"
	chstore "github.com/qyai/qyai/admin/internal/billing/clickhouse"
	"github.com/qyai/qyai/admin/internal/config"
	"github.com/qyai/qyai/admin/internal/httpapi"
	"github.com/qyai/qyai/admin/internal/keys"
	redisstore "github.com/qyai/qyai/admin/internal/keys/redis"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/tier"
)

// Run parses args, loads the configuration from the environment and serves
// until ctx is done. With --validate it only checks the configuration.
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	validate := fs.Bool("validate", false, "check the configuration and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		fmt.Fprintf(stderr, "admin: invalid configuration:\n%v\n", err)
		return err
	}
	if *validate {
		fmt.Fprintln(stderr, "admin: configuration is valid")
		return nil
	}
	log := newLogger(stderr, cfg.LogLevel)
	if err := Serve(ctx, cfg, log, nil); err != nil {
		log.Error("admin stopped", "err", err)
		return err
	}
	return nil
}

// Serve runs admin with cfg until ctx is done. When ready is not nil, it
// receives the listening address once the server accepts connections (tests
// listen on port 0).
func Serve(ctx context.Context, cfg config.Config, log *slog.Logger, ready chan<- net.Addr) error {
	if cfg.UsesDefaultPepper() {
		log.Warn("KEY_PEPPER is not set: using the development default; set it (same value as the gateway) in production")
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
	defer rdb.Close()

	ch := chstore.NewConnector(chschema.Options{
		Addr:     cfg.ClickHouse.Addr,
		Database: cfg.ClickHouse.Database,
		User:     cfg.ClickHouse.User,
		Password: cfg.ClickHouse.Password,
		Cluster:  cfg.ClickHouse.Cluster,
	}, chschema.ApplyOptions{Cluster: cfg.ClickHouse.Cluster, Logger: log}, log)
	defer ch.Close()

	now := time.Now
	keyStore := redisstore.New(rdb, cfg.Redis.Timeout)
	handler := httpapi.New(httpapi.Deps{
		Keys:       keys.NewService(keyStore, []byte(cfg.KeyPepper), tier.Default(), now),
		Billing:    billing.NewService(chstore.NewStore(ch, cfg.ClickHouse.Database, cfg.ClickHouse.QueryTimeout), keyStore, now),
		AdminToken: cfg.AdminToken,
		Ready: []httpapi.Check{
			{Name: "redis", Timeout: cfg.Redis.Timeout, Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
			{Name: "clickhouse", Timeout: time.Second, Ping: ch.Ping},
		},
		Log: log,
		Now: now,
	})

	ln, err := net.Listen("tcp", cfg.Addr)
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
		<-schemaDone
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}
	log.Info("admin shutting down", "timeout", cfg.ShutdownTimeout)
	stopBg()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	<-schemaDone
	if err != nil {
		return fmt.Errorf("shut down http server: %w", err)
	}
	log.Info("admin stopped")
	return nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // config validated it
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
