// Package config loads the gateway's configuration from the environment.
// It is the only place that reads environment variables.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/envconfig"
	"github.com/qyai/qyai/pkg/logging"
	"github.com/qyai/qyai/pkg/natsconn"
	"github.com/qyai/qyai/pkg/telemetry"
	"github.com/qyai/qyai/pkg/usage"
)

// Config is everything the gateway needs to start.
type Config struct {
	Addr string // GATEWAY_ADDR: the public listener
	// MetricsAddr is the internal listener of /metrics (and /healthz,
	// /readyz): never the public one, so that an ingress in front of Addr
	// does not expose it. Loopback by default; in a cluster set e.g.
	// 0.0.0.0:9464 (the OpenTelemetry Prometheus exporter's port) and
	// keep it off the public Service.
	MetricsAddr string // GATEWAY_METRICS_ADDR
	Instance    string // GATEWAY_INSTANCE: name in usage events and traces
	RedisAddr   string // REDIS_ADDR
	// RedisTimeout bounds every Redis call on the request path.
	RedisTimeout time.Duration // REDIS_TIMEOUT
	// NATSURL is one NATS server URL or a comma-separated list of the
	// servers of one cluster (nats://n1:4222,nats://n2:4222,...): the
	// client connects to one and fails over to the others.
	NATSURL string // NATS_URL
	// NATSAuth is how the gateway authenticates to NATS and secures the
	// connection: NATS_USER, NATS_PASSWORD (or _FILE), NATS_TOKEN (or
	// _FILE), NATS_NKEY_FILE, NATS_CREDS_FILE, NATS_TLS_*.
	NATSAuth  natsconn.Config
	AdminURL  string // ADMIN_URL: where /v1/dashboard/billing/usage is answered
	KeyPepper string // KEY_PEPPER or KEY_PEPPER_FILE: HMAC secret shared with admin
	// KeyCacheTTL is how long a verified key is trusted without asking Redis.
	KeyCacheTTL time.Duration // KEY_CACHE_TTL
	// KeyStaleMaxAge caps stale-if-error: while Redis is unreachable a
	// cached key is used only if it was verified at most this long ago.
	KeyStaleMaxAge time.Duration // KEY_STALE_MAX_AGE
	// AuthFailLimit failed key verifications per AuthFailWindow from one
	// client address (TCP peer; IPv6 per /64) make the gateway refuse its
	// keys that are not cached with 429 instead of asking Redis; 0 disables.
	AuthFailLimit  int           // AUTH_FAIL_LIMIT
	AuthFailWindow time.Duration // AUTH_FAIL_WINDOW
	// LimitReplicas is how many gateways share each key's limits; while
	// Redis is unreachable each replica allows 1/LimitReplicas of them.
	LimitReplicas int // LIMIT_FALLBACK_REPLICAS

	Upstream Upstream

	ModelsFile   string // MODELS_FILE: model catalog YAML; empty = built-in
	MaxBodyBytes int64  // MAX_BODY_BYTES
	// BodyReadTimeout bounds the time a request's body may take to arrive,
	// from the end of its headers; past it the client gets 408 and the
	// connection is closed.
	BodyReadTimeout time.Duration // BODY_READ_TIMEOUT
	// ClientWriteTimeout bounds each write to the client (one stream event,
	// one piece of an answer): a client that stops reading is cut off once
	// a write cannot complete within it.
	ClientWriteTimeout time.Duration // CLIENT_WRITE_TIMEOUT
	// PublishQueue is the size of the in-memory usage event queue.
	PublishQueue int // USAGE_QUEUE_SIZE
	// PublishBatch is the most usage events in one JetStream message
	// (1..usage.MaxBatch). 1 sends every event on its own, as gateways
	// before batching did: for an upgrade while meters that predate
	// batching still run.
	PublishBatch int // USAGE_BATCH_MAX
	// SpoolDir is where usage events wait on disk while NATS cannot take
	// them; one directory per gateway instance, owned by the gateway's
	// user and not writable by others (see DefaultSpoolDir).
	SpoolDir string // SPOOL_DIR
	// SpoolMaxBytes bounds the spool; beyond it events are dropped (and
	// counted).
	SpoolMaxBytes int64 // SPOOL_MAX_BYTES
	// StreamReplicas is the replica count of the USAGE streams: 1 on one
	// server, 3 in a JetStream cluster. An existing stream with another
	// count is updated in place (JetStream moves the copies).
	StreamReplicas int           // STREAM_REPLICAS
	DrainTimeout   time.Duration // SHUTDOWN_TIMEOUT
	LogLevel       string        // LOG_LEVEL: debug, info, warn, error
	// PprofAddr, when set, serves net/http/pprof there (a separate,
	// loopback-only listener for profiling; off by default).
	PprofAddr string // PPROF_ADDR
	// OTLPTraces and OTLPMetrics, when set, are the OTLP/HTTP URLs traces
	// and metrics are exported to: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and
	// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT
	// (e.g. http://otel-collector:4318) with /v1/traces and /v1/metrics.
	OTLPTraces, OTLPMetrics string
}

// Upstream is the model provider: one or more endpoints.
type Upstream struct {
	Members []Member // UPSTREAM_BASE_URL, UPSTREAM_API_KEY (or _FILE), UPSTREAM_WEIGHTS (comma-separated lists)
	// EjectAfter consecutive failures take a member out for Cooldown.
	EjectAfter int           // UPSTREAM_EJECT_AFTER
	Cooldown   time.Duration // UPSTREAM_COOLDOWN
	Retries    int           // UPSTREAM_RETRIES
	// Affinity keeps each conversation on one member (cache-aware
	// routing); false is the operator's escape hatch back to weighted
	// round robin.
	Affinity bool // UPSTREAM_AFFINITY
	// ConnectTimeout bounds dialing; FirstByteTimeout the wait for response
	// headers; IdleTimeout the gap between two stream chunks.
	ConnectTimeout   time.Duration // UPSTREAM_CONNECT_TIMEOUT
	FirstByteTimeout time.Duration // UPSTREAM_FIRST_BYTE_TIMEOUT
	IdleTimeout      time.Duration // UPSTREAM_IDLE_TIMEOUT
	MaxConns         int           // UPSTREAM_MAX_CONNS per host
}

// Member is one upstream endpoint.
type Member struct {
	BaseURL string
	APIKey  string
	Weight  int
}

// DefaultMetricsAddr is GATEWAY_METRICS_ADDR's default: loopback, on the
// OpenTelemetry Prometheus exporter's conventional port (the meter uses
// 8082, admin 8081).
const DefaultMetricsAddr = "127.0.0.1:9464"

// DefaultKeyPepper is the public pepper of a development stack, used only
// when KEY_PEPPER is unset and QYAI_DEV is on (apikey.ReadPepper).
const DefaultKeyPepper = apikey.DevPepper

// Load reads the configuration from getenv (os.Getenv in production) with
// envconfig: values are trimmed, an empty variable is an unset one, and the
// secrets KEY_PEPPER, UPSTREAM_API_KEY, NATS_PASSWORD and NATS_TOKEN may
// instead be read from the files their _FILE variables name. It returns every problem
// at once, parsing and Validate's together.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(envconfig.Getenv(getenv))
	host, _ := os.Hostname()
	c := Config{
		Addr:           r.String("GATEWAY_ADDR", "127.0.0.1:8080"),
		MetricsAddr:    r.String("GATEWAY_METRICS_ADDR", DefaultMetricsAddr),
		RedisAddr:      r.String("REDIS_ADDR", "127.0.0.1:6379"),
		RedisTimeout:   r.Duration("REDIS_TIMEOUT", 50*time.Millisecond),
		NATSURL:        r.String("NATS_URL", "nats://127.0.0.1:4222"),
		NATSAuth:       natsconn.Read(r),
		AdminURL:       r.String("ADMIN_URL", "http://127.0.0.1:8081"),
		KeyPepper:      apikey.ReadPepper(r),
		KeyCacheTTL:    r.Duration("KEY_CACHE_TTL", 30*time.Second),
		KeyStaleMaxAge: r.Duration("KEY_STALE_MAX_AGE", 15*time.Minute),
		AuthFailLimit:  r.Int("AUTH_FAIL_LIMIT", 20),
		AuthFailWindow: r.Duration("AUTH_FAIL_WINDOW", time.Minute),
		LimitReplicas:  r.Int("LIMIT_FALLBACK_REPLICAS", 1),
		Upstream: Upstream{
			Members:          members(r),
			EjectAfter:       r.Int("UPSTREAM_EJECT_AFTER", 3),
			Cooldown:         r.Duration("UPSTREAM_COOLDOWN", 10*time.Second),
			Retries:          r.Int("UPSTREAM_RETRIES", 2),
			Affinity:         r.Bool("UPSTREAM_AFFINITY", true),
			ConnectTimeout:   r.Duration("UPSTREAM_CONNECT_TIMEOUT", 5*time.Second),
			FirstByteTimeout: r.Duration("UPSTREAM_FIRST_BYTE_TIMEOUT", 120*time.Second),
			IdleTimeout:      r.Duration("UPSTREAM_IDLE_TIMEOUT", 60*time.Second),
			MaxConns:         r.Int("UPSTREAM_MAX_CONNS", 2048),
		},
		ModelsFile:         r.String("MODELS_FILE", ""),
		MaxBodyBytes:       int64(r.Int("MAX_BODY_BYTES", 16<<20)),
		BodyReadTimeout:    r.Duration("BODY_READ_TIMEOUT", 30*time.Second),
		ClientWriteTimeout: r.Duration("CLIENT_WRITE_TIMEOUT", 30*time.Second),
		PublishQueue:       r.Int("USAGE_QUEUE_SIZE", 65536),
		PublishBatch:       r.Int("USAGE_BATCH_MAX", usage.MaxBatch),
		SpoolDir:           r.String("SPOOL_DIR", ""),
		SpoolMaxBytes:      int64(r.Int("SPOOL_MAX_BYTES", 1<<30)),
		StreamReplicas:     r.Int("STREAM_REPLICAS", 1),
		DrainTimeout:       r.Duration("SHUTDOWN_TIMEOUT", 25*time.Second),
		LogLevel:           strings.ToLower(r.String("LOG_LEVEL", "info")),
		PprofAddr:          r.String("PPROF_ADDR", ""),
	}
	c.Instance = r.String("GATEWAY_INSTANCE", host+"/"+c.Addr)
	c.OTLPTraces, c.OTLPMetrics = telemetry.Endpoints(getenv)
	if c.SpoolDir == "" {
		c.SpoolDir = DefaultSpoolDir(c.Instance, getenv)
	}
	// A missing pepper was reported by ReadPepper already: validate the
	// rest without saying it twice.
	v := c
	if v.KeyPepper == "" {
		v.KeyPepper = "reported"
	}
	return c, errors.Join(r.Err(), v.Validate())
}

// Validate reports every problem at once, each prefixed by its section.
func (c Config) Validate() error {
	var errs []error
	add := func(section, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", section, fmt.Sprintf(format, a...)))
	}
	if c.Addr == "" {
		add("server", "GATEWAY_ADDR is empty")
	}
	switch c.MetricsAddr {
	case "":
		add("server", "GATEWAY_METRICS_ADDR is empty")
	case c.Addr:
		add("server", "GATEWAY_METRICS_ADDR must differ from GATEWAY_ADDR (metrics stay off the public listener)")
	}
	if c.RedisAddr == "" {
		add("redis", "REDIS_ADDR is empty")
	}
	if c.RedisTimeout <= 0 {
		add("redis", "REDIS_TIMEOUT must be positive")
	}
	if c.LimitReplicas < 1 {
		add("limits", "LIMIT_FALLBACK_REPLICAS must be at least 1")
	}
	if err := natsconn.ValidateURLs(c.NATSURL); err != nil {
		errs = append(errs, fmt.Errorf("nats: %w", err))
	}
	if err := c.NATSAuth.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("nats: %w", err))
	}
	checkURL := func(name, raw string) {
		if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("urls", "%s %q is not an http(s) URL", name, raw)
		}
	}
	checkURL("ADMIN_URL", c.AdminURL)
	if len(c.Upstream.Members) == 0 {
		add("upstream", "UPSTREAM_BASE_URL is empty")
	}
	for _, m := range c.Upstream.Members {
		checkURL("UPSTREAM_BASE_URL", m.BaseURL)
		if m.Weight < 1 {
			add("upstream", "UPSTREAM_WEIGHTS must be positive integers")
		}
	}
	if c.Upstream.EjectAfter < 1 || c.Upstream.Cooldown <= 0 || c.Upstream.Retries < 0 {
		add("upstream", "UPSTREAM_EJECT_AFTER must be >= 1, UPSTREAM_COOLDOWN positive, UPSTREAM_RETRIES >= 0")
	}
	if c.KeyPepper == "" {
		add("keys", "KEY_PEPPER is empty")
	}
	if c.KeyCacheTTL <= 0 {
		add("keys", "KEY_CACHE_TTL must be positive")
	}
	if c.KeyStaleMaxAge <= 0 {
		add("keys", "KEY_STALE_MAX_AGE must be positive")
	}
	if c.AuthFailLimit < 0 {
		add("keys", "AUTH_FAIL_LIMIT must not be negative (0 disables it)")
	}
	if c.AuthFailWindow <= 0 {
		add("keys", "AUTH_FAIL_WINDOW must be positive")
	}
	if c.MaxBodyBytes < 1024 {
		add("server", "MAX_BODY_BYTES must be at least 1024")
	}
	if c.BodyReadTimeout <= 0 || c.ClientWriteTimeout <= 0 {
		add("server", "BODY_READ_TIMEOUT and CLIENT_WRITE_TIMEOUT must be positive")
	}
	if c.PublishBatch < 1 || c.PublishBatch > usage.MaxBatch {
		add("usage", "USAGE_BATCH_MAX %d: want 1..%d", c.PublishBatch, usage.MaxBatch)
	}
	if c.PublishQueue < 1 {
		add("usage", "USAGE_QUEUE_SIZE must be positive")
	}
	if c.SpoolDir == "" {
		add("usage", "SPOOL_DIR is empty, and none of STATE_DIRECTORY, XDG_STATE_HOME, HOME gives a default")
	}
	if c.SpoolMaxBytes < 1<<20 {
		add("usage", "SPOOL_MAX_BYTES must be at least 1048576 (1 MiB)")
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		add("usage", "STREAM_REPLICAS must be 1..5")
	}
	u := c.Upstream
	if u.ConnectTimeout <= 0 || u.FirstByteTimeout <= 0 || u.IdleTimeout <= 0 {
		add("upstream", "timeouts must be positive")
	}
	if u.MaxConns < 1 {
		add("upstream", "UPSTREAM_MAX_CONNS must be positive")
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		add("server", "LOG_LEVEL %v", err)
	}
	return errors.Join(errs...)
}

// DefaultSpoolDir is the spool directory of an instance when SPOOL_DIR is
// unset: <state>/spool/<instance> in a persistent directory of the user
// running the gateway, never in the shared temporary directory (where
// another local user could create it first and forge or delete events).
// <state> is, from the environment getenv reads:
//
//   - $STATE_DIRECTORY, the directory systemd makes for StateDirectory=
//     (the first one when it lists several);
//   - else $XDG_STATE_HOME/qyai;
//   - else $HOME/.local/state/qyai.
//
// Relative values are ignored, as the XDG base directory specification
// asks. In <instance> every character other than letters, digits, '.',
// '_' and '-' is replaced by '_'. DefaultSpoolDir returns "" when none of
// the variables gives an absolute path.
func DefaultSpoolDir(instance string, getenv func(string) string) string {
	state := ""
	switch sd, _, _ := strings.Cut(getenv("STATE_DIRECTORY"), ":"); {
	case filepath.IsAbs(sd):
		state = sd
	case filepath.IsAbs(getenv("XDG_STATE_HOME")):
		state = filepath.Join(getenv("XDG_STATE_HOME"), "qyai")
	case filepath.IsAbs(getenv("HOME")):
		state = filepath.Join(getenv("HOME"), ".local", "state", "qyai")
	default:
		return ""
	}
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, instance)
	if safe == "" || safe == "." || safe == ".." {
		safe = "_" + safe // never the spool directory's parent
	}
	return filepath.Join(state, "spool", safe)
}

// members reads the upstream pool: UPSTREAM_BASE_URL is a comma-separated
// list of base URLs; UPSTREAM_API_KEY (or the file UPSTREAM_API_KEY_FILE
// names) is one key for all, or one per URL, comma-separated;
// UPSTREAM_WEIGHTS is empty (all 1) or one weight per URL.
func members(r *envconfig.Reader) []Member {
	urls := r.List("UPSTREAM_BASE_URL", []string{"https://api.deepseek.com"})
	keys := envconfig.Split(r.Secret("UPSTREAM_API_KEY", ""))
	weights := r.List("UPSTREAM_WEIGHTS", nil)
	if len(keys) > 1 && len(keys) != len(urls) {
		r.Errorf("UPSTREAM_API_KEY: %d keys for %d base URLs (give one, or one per URL)", len(keys), len(urls))
	}
	if len(weights) > 0 && len(weights) != len(urls) {
		r.Errorf("UPSTREAM_WEIGHTS: %d weights for %d base URLs", len(weights), len(urls))
	}
	out := make([]Member, len(urls))
	for i, u := range urls {
		out[i] = Member{BaseURL: strings.TrimRight(u, "/"), Weight: 1}
		switch {
		case len(keys) == 1:
			out[i].APIKey = keys[0]
		case i < len(keys):
			out[i].APIKey = keys[i]
		}
		if i < len(weights) {
			w, err := strconv.Atoi(weights[i])
			if err != nil {
				r.Errorf("UPSTREAM_WEIGHTS: %q is not an integer", weights[i])
			}
			out[i].Weight = w
		}
	}
	return out
}
