// Package config loads the gateway's configuration from the environment.
// It is the only place that reads environment variables.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is everything the gateway needs to start.
type Config struct {
	Addr      string // GATEWAY_ADDR
	Instance  string // GATEWAY_INSTANCE: name in usage events and traces
	RedisAddr string // REDIS_ADDR
	// RedisTimeout bounds every Redis call on the request path.
	RedisTimeout time.Duration // REDIS_TIMEOUT
	NATSURL      string        // NATS_URL
	AdminURL     string        // ADMIN_URL: where /v1/dashboard/billing/usage is answered
	KeyPepper    string        // KEY_PEPPER: HMAC secret shared with admin
	// KeyCacheTTL is how long a verified key is trusted without asking Redis.
	KeyCacheTTL time.Duration // KEY_CACHE_TTL

	Upstream Upstream

	ModelsFile   string // MODELS_FILE: model catalog YAML; empty = built-in
	MaxBodyBytes int64  // MAX_BODY_BYTES
	// PublishQueue is the size of the in-memory usage event queue.
	PublishQueue   int           // USAGE_QUEUE_SIZE
	StreamReplicas int           // STREAM_REPLICAS
	DrainTimeout   time.Duration // SHUTDOWN_TIMEOUT
	LogLevel       string        // LOG_LEVEL
}

// Upstream is the model provider.
type Upstream struct {
	BaseURL string // UPSTREAM_BASE_URL
	APIKey  string // UPSTREAM_API_KEY
	// ConnectTimeout bounds dialing; FirstByteTimeout the wait for response
	// headers; IdleTimeout the gap between two stream chunks.
	ConnectTimeout   time.Duration // UPSTREAM_CONNECT_TIMEOUT
	FirstByteTimeout time.Duration // UPSTREAM_FIRST_BYTE_TIMEOUT
	IdleTimeout      time.Duration // UPSTREAM_IDLE_TIMEOUT
	MaxConns         int           // UPSTREAM_MAX_CONNS per host
}

// DefaultKeyPepper is used when KEY_PEPPER is unset, for local runs only.
const DefaultKeyPepper = "qyai-dev-pepper-change-me"

// Load reads the configuration from getenv (os.Getenv in production).
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	host, _ := os.Hostname()
	c := Config{
		Addr:         p.str("GATEWAY_ADDR", "127.0.0.1:8080"),
		RedisAddr:    p.str("REDIS_ADDR", "127.0.0.1:6379"),
		RedisTimeout: p.dur("REDIS_TIMEOUT", 50*time.Millisecond),
		NATSURL:      p.str("NATS_URL", "nats://127.0.0.1:4222"),
		AdminURL:     p.str("ADMIN_URL", "http://127.0.0.1:8081"),
		KeyPepper:    p.str("KEY_PEPPER", DefaultKeyPepper),
		KeyCacheTTL:  p.dur("KEY_CACHE_TTL", 30*time.Second),
		Upstream: Upstream{
			BaseURL:          strings.TrimRight(p.str("UPSTREAM_BASE_URL", "https://api.deepseek.com"), "/"),
			APIKey:           p.str("UPSTREAM_API_KEY", ""),
			ConnectTimeout:   p.dur("UPSTREAM_CONNECT_TIMEOUT", 5*time.Second),
			FirstByteTimeout: p.dur("UPSTREAM_FIRST_BYTE_TIMEOUT", 120*time.Second),
			IdleTimeout:      p.dur("UPSTREAM_IDLE_TIMEOUT", 60*time.Second),
			MaxConns:         p.int("UPSTREAM_MAX_CONNS", 2048),
		},
		ModelsFile:     p.str("MODELS_FILE", ""),
		MaxBodyBytes:   int64(p.int("MAX_BODY_BYTES", 16<<20)),
		PublishQueue:   p.int("USAGE_QUEUE_SIZE", 65536),
		StreamReplicas: p.int("STREAM_REPLICAS", 1),
		DrainTimeout:   p.dur("SHUTDOWN_TIMEOUT", 25*time.Second),
		LogLevel:       p.str("LOG_LEVEL", "info"),
	}
	c.Instance = p.str("GATEWAY_INSTANCE", host+"/"+c.Addr)
	return c, errors.Join(p.err, c.Validate())
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
	if c.RedisAddr == "" {
		add("redis", "REDIS_ADDR is empty")
	}
	if c.RedisTimeout <= 0 {
		add("redis", "REDIS_TIMEOUT must be positive")
	}
	if c.NATSURL == "" {
		add("nats", "NATS_URL is empty")
	}
	for name, raw := range map[string]string{"UPSTREAM_BASE_URL": c.Upstream.BaseURL, "ADMIN_URL": c.AdminURL} {
		if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("urls", "%s %q is not an http(s) URL", name, raw)
		}
	}
	if c.KeyPepper == "" {
		add("keys", "KEY_PEPPER is empty")
	}
	if c.MaxBodyBytes < 1024 {
		add("server", "MAX_BODY_BYTES must be at least 1024")
	}
	if c.PublishQueue < 1 {
		add("usage", "USAGE_QUEUE_SIZE must be positive")
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
	return errors.Join(errs...)
}

type parser struct {
	getenv func(string) string
	err    error
}

func (p *parser) str(name, def string) string {
	if v := p.getenv(name); v != "" {
		return v
	}
	return def
}

func (p *parser) int(name string, def int) int {
	v := p.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.err = errors.Join(p.err, fmt.Errorf("%s: %q is not an integer", name, v))
		return def
	}
	return n
}

func (p *parser) dur(name string, def time.Duration) time.Duration {
	v := p.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.err = errors.Join(p.err, fmt.Errorf("%s: %q is not a duration (e.g. 50ms, 2s)", name, v))
		return def
	}
	return d
}
