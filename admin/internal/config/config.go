// Package config loads the admin service's configuration from the
// environment. It is the only place that reads environment variables.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/envconfig"
	"github.com/qyai/qyai/pkg/telemetry"
)

// DefaultKeyPepper is the public pepper of a development stack, used only
// when KEY_PEPPER is unset and QYAI_DEV is on (apikey.ReadPepper, shared
// with the gateway so that both hash keys alike).
const DefaultKeyPepper = apikey.DevPepper

// DefaultTokenName is the name of a token given without one (ADMIN_TOKEN,
// or a line of ADMIN_TOKEN_FILE without "name:").
const DefaultTokenName = "admin"

// Config is everything admin needs to start.
type Config struct {
	Addr string // ADMIN_ADDR
	// OTLPTraces and OTLPMetrics, when set, are the OTLP/HTTP URLs traces
	// and metrics are exported to (pkg/telemetry.Endpoints: the standard
	// OTEL_EXPORTER_OTLP_* variables). /metrics on ADMIN_ADDR serves the
	// metrics in the Prometheus format either way.
	OTLPTraces, OTLPMetrics string
	// AdminTokens guard /admin/v1; the audit trail records the name of the
	// token used. Secrets are never logged.
	AdminTokens []AdminToken // ADMIN_TOKEN, ADMIN_TOKENS, ADMIN_TOKEN_FILE
	// KeyPepper is the HMAC secret shared with the gateway. Never logged.
	KeyPepper string // KEY_PEPPER or KEY_PEPPER_FILE
	// TiersFile replaces the built-in tier table (pkg/tier/tiers.yaml).
	TiersFile string // TIERS_FILE

	// AuthMaxFailures failed admin authentications from one client address
	// within AuthFailureWindow block it until the oldest is that old.
	AuthMaxFailures   int           // ADMIN_AUTH_MAX_FAILURES
	AuthFailureWindow time.Duration // ADMIN_AUTH_FAILURE_WINDOW
	// TrustedProxies are the addresses (IPs or CIDRs) whose
	// X-Forwarded-For / X-Real-IP name the client; empty: the peer address
	// is the client.
	TrustedProxies []string // ADMIN_TRUSTED_PROXIES

	// BillingRPM is how many public billing requests (each a ClickHouse
	// query) one key may make per minute, across replicas; 0: no limit.
	BillingRPM int // BILLING_RPM
	// RegenerateRPM is how many times one key may regenerate itself
	// (POST /v1/dashboard/key/regenerate) per minute, across replicas;
	// at least 1: there is no switch to turn this limit off.
	RegenerateRPM int // REGENERATE_RPM

	// AuditFlushInterval is how often audit entries move from the Redis
	// buffer to ClickHouse.
	AuditFlushInterval time.Duration // AUDIT_FLUSH_INTERVAL

	Redis      Redis
	ClickHouse ClickHouse

	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT
	LogLevel        string        // LOG_LEVEL: debug, info, warn, error
}

// AdminToken is one admin token with the name the audit trail records.
type AdminToken struct {
	Name  string
	Token string // never logged
}

// Client is what the admin CLI needs: the admin API, and for
// rebuild-redis the stores themselves.
type Client struct {
	URL   string // ADMIN_URL
	Token string // ADMIN_TOKEN, or the first token of ADMIN_TOKEN_FILE

	Redis      Redis
	ClickHouse ClickHouse
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
	Password string // CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE; never logged
	// Cluster selects the cluster form of the schema (ON CLUSTER, Replicated
	// engines, a Distributed table); empty for one server.
	Cluster string // CLICKHOUSE_CLUSTER
	// QueryTimeout bounds every billing query.
	QueryTimeout time.Duration // CLICKHOUSE_QUERY_TIMEOUT
}

// UsesDefaultPepper reports whether KEY_PEPPER was left unset.
func (c Config) UsesDefaultPepper() bool { return c.KeyPepper == DefaultKeyPepper }

// Load reads the configuration through getenv (os.Getenv in production)
// with envconfig: values are trimmed, an empty variable is an unset one, the
// secrets KEY_PEPPER and CLICKHOUSE_PASSWORD may instead be read from the
// files KEY_PEPPER_FILE and CLICKHOUSE_PASSWORD_FILE name, and
// ADMIN_TOKEN_FILE is read when it is set. It returns every problem at once.
func Load(getenv func(string) string) (Config, error) {
	r := envconfig.New(envconfig.Getenv(getenv))
	c := Config{
		Addr:               r.String("ADMIN_ADDR", "127.0.0.1:8081"),
		AdminTokens:        adminTokens(r),
		KeyPepper:          apikey.ReadPepper(r),
		TiersFile:          r.String("TIERS_FILE", ""),
		AuthMaxFailures:    r.Int("ADMIN_AUTH_MAX_FAILURES", 10),
		AuthFailureWindow:  r.Duration("ADMIN_AUTH_FAILURE_WINDOW", time.Minute),
		TrustedProxies:     r.List("ADMIN_TRUSTED_PROXIES", nil),
		BillingRPM:         r.Int("BILLING_RPM", 60),
		RegenerateRPM:      r.Int("REGENERATE_RPM", 3),
		AuditFlushInterval: r.Duration("AUDIT_FLUSH_INTERVAL", time.Second),
		Redis:              redis(r),
		ClickHouse:         clickhouse(r),
		ShutdownTimeout:    r.Duration("SHUTDOWN_TIMEOUT", 10*time.Second),
		LogLevel:           strings.ToLower(r.String("LOG_LEVEL", "info")),
	}
	c.OTLPTraces, c.OTLPMetrics = telemetry.Endpoints(getenv)
	// A missing pepper was reported by ReadPepper already: validate the
	// rest without saying it twice.
	v := c
	if v.KeyPepper == "" {
		v.KeyPepper = "reported"
	}
	return c, errors.Join(r.Err(), v.Validate())
}

// LoadClient reads the CLI's configuration. The token is checked by the
// commands that need it (rebuild-redis does not).
func LoadClient(getenv func(string) string) (Client, error) {
	r := envconfig.New(envconfig.Getenv(getenv))
	c := Client{
		URL:        strings.TrimRight(r.String("ADMIN_URL", "http://127.0.0.1:8081"), "/"),
		Redis:      redis(r),
		ClickHouse: clickhouse(r),
	}
	if ts := adminTokens(r); len(ts) > 0 {
		c.Token = ts[0].Token
	}
	var errs []error
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("cli: ADMIN_URL %q is not an http(s) URL", c.URL))
	}
	errs = append(errs, validateRedis(c.Redis), validateClickHouse(c.ClickHouse))
	return c, errors.Join(r.Err(), errors.Join(errs...))
}

func redis(r *envconfig.Reader) Redis {
	return Redis{
		Addrs:   r.List("REDIS_ADDR", []string{"127.0.0.1:6379"}),
		Timeout: r.Duration("REDIS_TIMEOUT", 50*time.Millisecond),
	}
}

func clickhouse(r *envconfig.Reader) ClickHouse {
	return ClickHouse{
		Addr:         r.String("CLICKHOUSE_ADDR", "127.0.0.1:9000"),
		Database:     r.String("CLICKHOUSE_DATABASE", "qyai"),
		User:         r.String("CLICKHOUSE_USER", "default"),
		Password:     r.Secret("CLICKHOUSE_PASSWORD", ""),
		Cluster:      r.String("CLICKHOUSE_CLUSTER", ""),
		QueryTimeout: r.Duration("CLICKHOUSE_QUERY_TIMEOUT", 10*time.Second),
	}
}

// adminTokens reads the admin tokens:
//
//   - ADMIN_TOKEN: one token, named "admin";
//   - ADMIN_TOKENS: "name:token" pairs separated by commas or newlines;
//   - ADMIN_TOKEN_FILE: a file of lines "name:token" or a bare token (named
//     "admin"); blank lines and lines starting with # are skipped.
//
// ADMIN_TOKEN and ADMIN_TOKEN_FILE exclude each other (they are one secret
// for envconfig, with a file format of its own); ADMIN_TOKENS adds to
// either. Problems name the variable and line, never the secret.
func adminTokens(r *envconfig.Reader) []AdminToken {
	var out []AdminToken
	v, fromFile := r.SecretSource("ADMIN_TOKEN")
	switch {
	case v == "":
	case !fromFile:
		out = append(out, AdminToken{Name: DefaultTokenName, Token: v})
	default:
		for i, line := range strings.Split(v, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, tok, named := strings.Cut(line, ":")
			if !named {
				name, tok = DefaultTokenName, line
			}
			if strings.TrimSpace(name) == "" || tok == "" {
				r.Errorf("server: ADMIN_TOKEN_FILE line %d is not name:token", i+1)
				continue
			}
			out = append(out, AdminToken{Name: strings.TrimSpace(name), Token: strings.TrimSpace(tok)})
		}
	}
	for i, pair := range strings.FieldsFunc(r.String("ADMIN_TOKENS", ""), func(c rune) bool { return c == ',' || c == '\n' }) {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, tok, ok := strings.Cut(pair, ":")
		if !ok || strings.TrimSpace(name) == "" || tok == "" {
			r.Errorf("server: ADMIN_TOKENS entry %d is not name:token", i+1)
			continue
		}
		out = append(out, AdminToken{Name: strings.TrimSpace(name), Token: tok})
	}
	return out
}

var (
	identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	tokenName  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)
)

// Validate reports every problem at once, each prefixed by its section.
func (c Config) Validate() error {
	var errs []error
	add := func(section, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", section, fmt.Sprintf(format, a...)))
	}
	if c.Addr == "" {
		add("server", "ADMIN_ADDR is empty")
	}
	if c.BillingRPM < 0 {
		add("server", "BILLING_RPM must not be negative (0: no limit)")
	}
	if c.RegenerateRPM < 1 {
		add("server", "REGENERATE_RPM must be at least 1")
	}
	if len(c.AdminTokens) == 0 {
		add("server", "an admin token is required: set ADMIN_TOKEN, ADMIN_TOKENS or ADMIN_TOKEN_FILE")
	}
	names, secrets := map[string]bool{}, map[string]bool{}
	for _, t := range c.AdminTokens {
		switch {
		case !tokenName.MatchString(t.Name):
			add("server", "admin token name %q is not 1-64 letters, digits or ._@+- (starting with a letter or digit)", t.Name)
		case names[t.Name]:
			add("server", "admin token name %q is used twice", t.Name)
		case t.Token == "":
			add("server", "admin token %q is empty", t.Name)
		case strings.ContainsAny(t.Token, " \t\r\n"):
			add("server", "admin token %q contains whitespace", t.Name)
		case secrets[t.Token]:
			add("server", "admin token %q has the same secret as another token", t.Name)
		}
		names[t.Name], secrets[t.Token] = true, true
	}
	if c.AuthMaxFailures < 1 {
		add("server", "ADMIN_AUTH_MAX_FAILURES must be at least 1")
	}
	if c.AuthFailureWindow <= 0 {
		add("server", "ADMIN_AUTH_FAILURE_WINDOW must be positive")
	}
	for _, p := range c.TrustedProxies {
		if _, _, err := net.ParseCIDR(p); err != nil && net.ParseIP(p) == nil {
			add("server", "ADMIN_TRUSTED_PROXIES: %q is not an IP address or CIDR", p)
		}
	}
	if c.AuditFlushInterval <= 0 {
		add("audit", "AUDIT_FLUSH_INTERVAL must be positive")
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
	errs = append(errs, validateRedis(c.Redis), validateClickHouse(c.ClickHouse))
	return errors.Join(errs...)
}

func validateRedis(r Redis) error {
	var errs []error
	if len(r.Addrs) == 0 {
		errs = append(errs, errors.New("redis: REDIS_ADDR is empty"))
	}
	if r.Timeout <= 0 {
		errs = append(errs, errors.New("redis: REDIS_TIMEOUT must be positive"))
	}
	return errors.Join(errs...)
}

func validateClickHouse(c ClickHouse) error {
	var errs []error
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("clickhouse: "+format, a...))
	}
	if err := chschema.CheckAddrs(c.Addr); err != nil {
		add("CLICKHOUSE_ADDR %q: %v", c.Addr, err)
	}
	if !identifier.MatchString(c.Database) {
		add("CLICKHOUSE_DATABASE %q is not a plain identifier", c.Database)
	}
	if c.Cluster != "" && !identifier.MatchString(c.Cluster) {
		add("CLICKHOUSE_CLUSTER %q is not a plain identifier", c.Cluster)
	}
	if c.QueryTimeout <= 0 {
		add("CLICKHOUSE_QUERY_TIMEOUT must be positive")
	}
	return errors.Join(errs...)
}
