// Package app wires the gateway together and runs it until its context
// ends, then drains: readiness turns false, in-flight requests (streams
// included) finish or, past SHUTDOWN_TIMEOUT, are cancelled and awaited,
// and only then is the usage publisher stopped, so that every request's
// event is published or spooled.
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
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/auth"
	authredis "github.com/qyai/qyai/gateway/internal/auth/redis"
	"github.com/qyai/qyai/gateway/internal/catalog"
	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/gateway/internal/httpapi"
	"github.com/qyai/qyai/gateway/internal/proxy"
	"github.com/qyai/qyai/gateway/internal/publish"
	"github.com/qyai/qyai/gateway/internal/publish/spool"
	"github.com/qyai/qyai/gateway/internal/quota"
	quotaredis "github.com/qyai/qyai/gateway/internal/quota/redis"
	"github.com/qyai/qyai/gateway/internal/telemetry"
	"github.com/qyai/qyai/pkg/envconfig"
	"github.com/qyai/qyai/pkg/logging"
	"github.com/qyai/qyai/pkg/redisretry"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// Run starts the gateway and blocks until ctx ends and it has drained. It
// writes the error it returns to stderr once, as one line "gateway: ..."
// (logging.Report): main only exits.
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	err := start(ctx, args, stderr)
	logging.Report(stderr, "gateway", err)
	return err
}

func start(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	validate := fs.Bool("validate", false, "check the configuration and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return logging.Reported(err) // the flag set printed it, with the usage
	}
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	if *validate {
		_, _ = fmt.Fprintln(stderr, "gateway: configuration is valid")
		return nil
	}
	level, _ := logging.ParseLevel(cfg.LogLevel) // validated by config
	log := logging.New(stderr, "gateway", level)
	if cfg.KeyPepper == config.DefaultKeyPepper {
		log.Warn("KEY_PEPPER is not set: QYAI_DEV is on, using the public development pepper; set KEY_PEPPER (same value as admin) in production")
	}
	return run(ctx, cfg, log)
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	cat, err := catalog.NewHolder(cfg.ModelsFile)
	if err != nil {
		return err
	}
	adminURL, _ := url.Parse(cfg.AdminURL) // validated by config

	rdb := newRedis(cfg)
	defer func() { _ = rdb.Close() }() // shutting down: nothing left to do on error

	natsOpts, err := cfg.NATSAuth.Options(log)
	if err != nil {
		return fmt.Errorf("nats options: %w", err)
	}
	nc, err := nats.Connect(cfg.NATSURL, append(natsOpts,
		nats.Name("qyai-gateway "+cfg.Instance),
		nats.RetryOnFailedConnect(true), // start even when NATS is down; events wait
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "err", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats reconnected") }),
	)...)
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	verifier := auth.NewVerifier(authredis.NewStore(rdb, cfg.RedisTimeout), cfg.KeyPepper, cfg.KeyCacheTTL, time.Now,
		auth.WithStaleMaxAge(cfg.KeyStaleMaxAge))
	pub, err := publish.New(js, publish.Options{
		QueueSize: cfg.PublishQueue,
		MaxBatch:  cfg.PublishBatch,
		Spool:     spool.Options{Dir: cfg.SpoolDir, MaxBytes: cfg.SpoolMaxBytes},
		Log:       log,
	})
	if err != nil {
		return fmt.Errorf("usage publisher: %w", err)
	}
	// The publisher starts now, so that a spool left by an earlier run is
	// replayed at once; it stops after the HTTP server (see the drain).
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	drainCtx, stopDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDrain()
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); pub.Run(pubCtx, drainCtx) }()
	// abandonPub stops the publisher at once: what is queued goes to the spool.
	abandonPub := func() { stopPub(); stopDrain(); <-pubDone }
	tel, err := telemetry.New(ctx, telemetry.Config{Service: "qyai-gateway", Instance: cfg.Instance, OTLPTraces: cfg.OTLPTraces, OTLPMetrics: cfg.OTLPMetrics})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	if err := registerPublisherMetrics(tel.Meter, pub); err != nil {
		return err
	}
	ready := &atomic.Bool{}

	ph := &proxy.Handler{
		Catalog: cat,
		Upstream: proxy.NewUpstream(proxy.UpstreamConfig{
			Members:          members(cfg.Upstream.Members),
			ConnectTimeout:   cfg.Upstream.ConnectTimeout,
			FirstByteTimeout: cfg.Upstream.FirstByteTimeout,
			IdleTimeout:      cfg.Upstream.IdleTimeout,
			MaxConns:         cfg.Upstream.MaxConns,
			Retries:          cfg.Upstream.Retries,
			EjectAfter:       cfg.Upstream.EjectAfter,
			Cooldown:         cfg.Upstream.Cooldown,
			Affinity:         cfg.Upstream.Affinity,
		}),
		Pub:      pub,
		Metrics:  tel,
		Log:      log,
		Instance: cfg.Instance,
		MaxBody:  cfg.MaxBodyBytes,
		// WriteTimeout bounds each write to a client; the server has no
		// WriteTimeout of its own, which would bound a whole stream.
		WriteTimeout: cfg.ClientWriteTimeout,
		Now:          time.Now,
	}
	limiter := quota.NewLimiter(quotaredis.NewStore(rdb, cfg.RedisTimeout), cfg.LimitReplicas, time.Now)
	if err := registerFallbackMetrics(tel.Meter, limiter); err != nil {
		abandonPub()
		return err
	}
	handler := httpapi.New(httpapi.Deps{
		Catalog: cat, Verifier: verifier, Proxy: ph,
		AuthFailures: auth.NewFailLimiter(cfg.AuthFailLimit, cfg.AuthFailWindow, auth.DefaultMaxAddrs, time.Now),
		Limiter:      limiter, AdminURL: adminURL, Log: log,
		Ready: ready, Telemetry: tel, Now: time.Now,
		BodyReadTimeout: cfg.BodyReadTimeout, WriteTimeout: cfg.ClientWriteTimeout,
	})

	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		abandonPub()
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	mln, err := new(net.ListenConfig).Listen(ctx, "tcp", cfg.MetricsAddr)
	if err != nil {
		_ = ln.Close()
		abandonPub()
		return fmt.Errorf("listen on GATEWAY_METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}
	// Every request's context derives from reqCtx: cancelling it ends the
	// requests still running past the drain deadline (their handlers then
	// publish the usage they saw, flagged as such, and return).
	reqCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	var running inflight
	// No ReadTimeout or WriteTimeout: they would bound a whole request,
	// streams included. The handler sets per-request deadlines instead
	// (BODY_READ_TIMEOUT for the body, CLIENT_WRITE_TIMEOUT for each write).
	srv := &http.Server{
		Handler: running.wrap(handler), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		BaseContext: func(net.Listener) context.Context { return reqCtx },
	}
	// The internal listener stays up while draining, so that the drain can
	// be watched; it closes last.
	msrv := &http.Server{Handler: httpapi.Operational(tel.Metrics, ready), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := msrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "addr", cfg.MetricsAddr, "err", err)
		}
	}()
	defer func() { _ = msrv.Close() }()

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var wg sync.WaitGroup
	goWG := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	goWG(func() { ensureStream(bg, js, cfg.StreamReplicas, log) })
	goWG(func() { authredis.Listen(bg, rdb, verifier, log) })
	goWG(func() { reloadCatalog(bg, cat, log) })

	if cfg.PprofAddr != "" {
		startPprof(bg, cfg.PprofAddr, log)
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	ready.Store(true)
	log.Info("gateway listening", "addr", ln.Addr().String(), "metrics_addr", mln.Addr().String(), "upstreams", len(cfg.Upstream.Members),
		"instance", cfg.Instance, "nats_auth", cfg.NATSAuth.Method())

	select {
	case <-ctx.Done():
	case err := <-srvErr:
		abandonPub()
		return fmt.Errorf("serve: %w", err)
	}

	// Drain: stop taking traffic, let in-flight requests finish, then
	// publish the events they produced; what NATS cannot take before the
	// deadline goes to the spool for the next start. The publisher stops
	// only once every handler has returned (stopHTTP), since a handler
	// publishes its request's event as it returns.
	ready.Store(false)
	log.Info("draining", "timeout", cfg.DrainTimeout)
	deadline := time.Now().Add(cfg.DrainTimeout)
	stopHTTP(ctx, srv, &running, cancelRequests, deadline, handlerGrace, log)
	stopPub()
	time.AfterFunc(time.Until(deadline)+time.Second, stopDrain)
	<-pubDone
	st := pub.Stats()
	log.Info("gateway stopped", "events_published", st.Published, "events_dropped", st.Dropped,
		"events_spooled", st.Spooled, "spool_events", st.SpoolEvents, "spool_dir", pub.SpoolDir())
	stopBG()
	wg.Wait()
	_ = nc.Drain()
	if err := <-srvErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// handlerGrace bounds the wait for handlers after their requests were
// cancelled at the drain deadline. A cancelled handler returns as soon as
// its upstream call notices (at once: the call shares the request's
// context); the bound only keeps a stuck one from holding the exit.
const handlerGrace = 5 * time.Second

// stopHTTP shuts srv down and returns once every handler running has
// returned. Shutdown gives up at deadline with handlers still running (a
// long stream) and Close does not wait for them: those requests are
// cancelled (cancelRequests ends the context they derive from) and awaited
// for at most grace more. ctx only carries values.
func stopHTTP(ctx context.Context, srv *http.Server, running *inflight, cancelRequests func(), deadline time.Time, grace time.Duration, log *slog.Logger) {
	sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("in-flight requests did not finish before the drain deadline; cancelling them", "err", err)
		cancelRequests()
		_ = srv.Close()
	}
	gctx, cancelGrace := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancelGrace()
	if n := running.wait(gctx); n > 0 {
		log.Error("handlers still running after they were cancelled; their usage events may be lost", "handlers", n, "grace", grace)
	}
}

func members(ms []config.Member) []proxy.Member {
	out := make([]proxy.Member, len(ms))
	for i, m := range ms {
		out[i] = proxy.Member{BaseURL: m.BaseURL, APIKey: m.APIKey, Weight: m.Weight}
	}
	return out
}

// ensureStream creates the usage stream, retrying until NATS answers.
func ensureStream(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) {
	backoff := 100 * time.Millisecond
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := usagejs.EnsureStream(c, js, usagejs.StreamConfig{Replicas: replicas})
		cancel()
		if err == nil {
			return
		}
		log.Warn("usage stream not ready; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// reloadCatalog reloads the model catalog on SIGHUP, and when its file
// changes (checked every two seconds).
func reloadCatalog(ctx context.Context, cat *catalog.Holder, log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if !cat.Changed() {
				continue
			}
		case <-ch:
		}
		if err := cat.Reload(); err != nil {
			log.Error("model catalog reload failed; keeping the current one", "err", err)
		} else {
			log.Info("model catalog reloaded", "models", len(cat.Get().Models()))
		}
	}
}

// startPprof serves the runtime profiles on their own listener, never on
// the public one.
func startPprof(ctx context.Context, addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof listener failed", "addr", addr, "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	log.Info("pprof listening", "addr", addr)
}

// newRedis returns the gateway's Redis client: a plain client for one address in
// REDIS_ADDR, a Redis Cluster client for several (comma-separated seeds).
//
// On one Redis, a server still loading its data after a restart, or blocked in
// a script, refuses commands (LOADING, BUSY): redisretry.Hook retries them
// within each call's bound (REDIS_TIMEOUT), after which the callers degrade as
// for an outage. On a cluster, redisretry.ClusterHook also retries the errors of
// a failover (CLUSTERDOWN, TRYAGAIN, a dead master's refused or reset
// connections) within the same bound, refreshing the slot map between tries, so
// that admissions resume once the replica is promoted (~2-4 s with
// cluster-node-timeout 2000); until then the callers degrade.
func newRedis(cfg config.Config) goredis.UniversalClient {
	addrs := envconfig.Split(cfg.RedisAddr)
	if len(addrs) <= 1 {
		rdb := goredis.NewClient(&goredis.Options{
			Addr:         cfg.RedisAddr,
			DialTimeout:  250 * time.Millisecond,
			ReadTimeout:  cfg.RedisTimeout,
			WriteTimeout: cfg.RedisTimeout,
			PoolSize:     256, // bursts wait for a connection inside REDIS_TIMEOUT

			MaxRetries: -1, // a retry would double the latency budget; callers degrade instead
		})
		redisretry.AddTo(rdb)
		return rdb
	}
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs:        addrs,
		DialTimeout:  250 * time.Millisecond,
		ReadTimeout:  cfg.RedisTimeout,
		WriteTimeout: cfg.RedisTimeout,
		PoolSize:     256, // per node
		MaxRetries:   -1,  // per node; ClusterHook retries across the failover instead
		MaxRedirects: 3,   // MOVED/ASK while slots move
	})
	redisretry.AddTo(rdb)
	return rdb
}
