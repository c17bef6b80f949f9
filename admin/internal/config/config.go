// Package config loads the admin service's configuration from the
// environment. It is the only place that reads environment variables.
package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// DefaultKeyPepper is used when KEY_PEPPER is unset, for local runs only. It
// must equal the gateway's default, or keys created here would not verify there.
const DefaultKeyPepper = "qyai-dev-pepper-change-me"

// Config is everything admin needs to start.
type Config struct {
	Addr string // ADMIN_ADDR
	// AdminToken guards /admin/v1. Never logged.
	AdminToken string // ADMIN_TOKEN, or the contents of ADMIN_TOKEN_FILE
	// KeyPepper is the HMAC secret shared with the gateway. Never logged.
	KeyPepper string // KEY_PEPPER

	Redis      Redis
	ClickHouse ClickHouse

	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT
	LogLevel        string        // LOG_LEVEL: debug, info, warn, error
}

// Redis is where key records live.
type Redis struct {
	// Addrs is REDIS_ADDR split on commas; more than one address means a
	// Redis Cluster.
	Addrs []string // REDIS_ADDR
	// Timeout bounds every single Redis call.
	Timeout time.Duration // REDIS_TIMEOUT
}

// ClickHouse is where usage rows live.
type ClickHouse struct {
	Addr     string // CLICKHOUSE_ADDR (native protocol, host:port)
	Database string // CLICKHOUSE_DATABASE
	User     string // CLICKHOUSE_USER
	Password string // CLICKHOUSE_PASSWORD; never logged
	// Cluster selects the cluster form of the schema (ON CLUSTER, Replicated
	// engines, a Distributed table); empty for one server.
	Cluster string // CLICKHOUSE_CLUSTER
	// QueryTimeout bounds every billing query.
	QueryTimeout time.Duration // CLICKHOUSE_QUERY_TIMEOUT
}

// UsesDefaultPepper reports whether KEY_PEPPER was left unset.
func (c Config) UsesDefaultPepper() bool { return c.KeyPepper == DefaultKeyPepper }

// Load reads the configuration through getenv (os.Getenv in production) and
// reads ADMIN_TOKEN_FILE when it is set. It returns every problem at once.
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	c := Config{
		Addr:       p.str("ADMIN_ADDR", "127.0.0.1:8081"),
		AdminToken: p.secret("ADMIN_TOKEN"),
		KeyPepper:  p.str("KEY_PEPPER", DefaultKeyPepper),
		Redis: Redis{
			Addrs:   splitList(p.str("REDIS_ADDR", "127.0.0.1:6379")),
			Timeout: p.dur("REDIS_TIMEOUT", 50*time.Millisecond),
		},
		ClickHouse: ClickHouse{
			Addr:         p.str("CLICKHOUSE_ADDR", "127.0.0.1:9000"),
			Database:     p.str("CLICKHOUSE_DATABASE", "qyai"),
			User:         p.str("CLICKHOUSE_USER", "default"),
			Password:     getenv("CLICKHOUSE_PASSWORD"),
			Cluster:      p.str("CLICKHOUSE_CLUSTER", ""),
			QueryTimeout: p.dur("CLICKHOUSE_QUERY_TIMEOUT", 10*time.Second),
		},
		ShutdownTimeout: p.dur("SHUTDOWN_TIMEOUT", 10*time.Second),
		LogLevel:        strings.ToLower(p.str("LOG_LEVEL", "info")),
	}
	return c, errors.Join(p.err, c.Validate())
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports every problem at once, each prefixed by its section.
func (c Config) Validate() error {
	var errs []error
	add := func(section, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", section, fmt.Sprintf(format, a...)))
	}
	if c.Addr == "" {
		add("server", "ADMIN_ADDR is empty")
	}
	if c.AdminToken == "" {
		add("server", "ADMIN_TOKEN (or ADMIN_TOKEN_FILE) is required")
	} else if strings.ContainsAny(c.AdminToken, " \t\r\n") {
		add("server", "ADMIN_TOKEN contains whitespace")
	}
	if c.ShutdownTimeout <= 0 {
		add("server", "SHUTDOWN_TIMEOUT must be positive")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("server", "LOG_LEVEL %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.KeyPepper == "" {
		add("keys", "KEY_PEPPER is empty")
	}
	if len(c.Redis.Addrs) == 0 {
		add("redis", "REDIS_ADDR is empty")
	}
	if c.Redis.Timeout <= 0 {
		add("redis", "REDIS_TIMEOUT must be positive")
	}
	if c.ClickHouse.Addr == "" {
		add("clickhouse", "CLICKHOUSE_ADDR is empty")
	}
	if !identifier.MatchString(c.ClickHouse.Database) {
		add("clickhouse", "CLICKHOUSE_DATABASE %q is not a plain identifier", c.ClickHouse.Database)
	}
	if c.ClickHouse.Cluster != "" && !identifier.MatchString(c.ClickHouse.Cluster) {
		add("clickhouse", "CLICKHOUSE_CLUSTER %q is not a plain identifier", c.ClickHouse.Cluster)
	}
	if c.ClickHouse.QueryTimeout <= 0 {
		add("clickhouse", "CLICKHOUSE_QUERY_TIMEOUT must be positive")
	}
	return errors.Join(errs...)
}

type parser struct {
	getenv func(string) string
	err    error
}

func (p *parser) fail(format string, a ...any) {
	p.err = errors.Join(p.err, fmt.Errorf(format, a...))
}

func (p *parser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

// secret reads NAME, or the file named by NAME_FILE (trailing newline
// trimmed), the usual way to pass secrets from Kubernetes or Docker.
func (p *parser) secret(name string) string {
	v, file := p.getenv(name), p.getenv(name+"_FILE")
	switch {
	case v != "" && file != "":
		p.fail("server: set %s or %s_FILE, not both", name, name)
		return ""
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			p.fail("server: read %s_FILE: %w", name, err)
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	return v
}

func (p *parser) dur(name string, def time.Duration) time.Duration {
	v := p.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail("%s: %q is not a duration (e.g. 50ms, 2s)", name, v)
		return def
	}
	return d
}

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
