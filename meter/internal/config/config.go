// Package config reads the meter's configuration from the environment
// (docs/contracts-internal.md) and validates it. It is the only place of the
// meter that reads the environment.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/envconfig"
	"github.com/qyai/qyai/pkg/logging"
	"github.com/qyai/qyai/pkg/natsconn"
	"github.com/qyai/qyai/pkg/telemetry"
)

// Config is everything the meter needs to run.
type Config struct {
	// Addr is where /healthz, /readyz and /metrics listen (METER_ADDR).
	Addr     string
	LogLevel slog.Level
	// OTLPTraces and OTLPMetrics, when set, are the OTLP/HTTP URLs traces
	// and metrics are exported to (pkg/telemetry.Endpoints: the standard
	// OTEL_EXPORTER_OTLP_* variables).
	OTLPTraces, OTLPMetrics string

	NATS       NATS
	ClickHouse ClickHouse
	Batch      Batch
	Rollup     Rollup
}

// NATS says where usage events come from.
type NATS struct {
	// URL is one NATS server URL or a comma-separated list of the servers
	// of one cluster (nats://n1:4222,nats://n2:4222,...): the client
	// connects to one and fails over to the others.
	URL string // NATS_URL
	// Auth is how the meter authenticates to NATS and secures the
	// connection: NATS_USER, NATS_PASSWORD (or _FILE), NATS_TOKEN (or
	// _FILE), NATS_NKEY_FILE, NATS_CREDS_FILE, NATS_TLS_*.
	Auth natsconn.Config
	// Consumer is the durable pull consumer every meter replica shares
	// (METER_CONSUMER).
	Consumer string
	// StreamReplicas is the replica count of the USAGE streams
	// (STREAM_REPLICAS): 1 on one server, 3 in a JetStream cluster.
	StreamReplicas int
	// AckWait is how long JetStream waits for an ack before redelivering
	// (METER_ACK_WAIT). The meter extends it while it retries an insert.
	AckWait time.Duration
}

// ClickHouse says where usage rows go.
type ClickHouse struct {
	Addr     string // CLICKHOUSE_ADDR, native protocol
	Database string // CLICKHOUSE_DATABASE
	User     string // CLICKHOUSE_USER
	Password string // CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE
	// Cluster selects the cluster form of the schema (CLICKHOUSE_CLUSTER);
	// empty on a single server.
	Cluster string
}

// Batch tunes batching.
type Batch struct {
	// Size is the most events per ClickHouse insert (METER_BATCH_SIZE).
	Size int
	// MaxAge is the longest an event waits for its batch to fill
	// (METER_BATCH_MAX_AGE).
	MaxAge time.Duration
	// DrainTimeout bounds how long shutdown keeps retrying the insert of
	// the batch in hand before giving it back to JetStream
	// (METER_DRAIN_TIMEOUT).
	DrainTimeout time.Duration
}

// Rollup tunes the hourly usage aggregates the meter keeps up to date
// (ledger.Rollup; docs/clickhouse.md).
type Rollup struct {
	// Interval is the time between two rollups (METER_ROLLUP_INTERVAL).
	// Zero disables them in this replica; readers stay exact either way,
	// they just read more of usage_events.
	Interval time.Duration
	// Settle is how long after its end an hour is first rolled up
	// (METER_ROLLUP_SETTLE): events of an hour still arrive while its
	// longest requests finish. A later arrival is rolled up again.
	Settle time.Duration
}

// Default returns the configuration used when no variable is set.
func Default() Config {
	return Config{
		Addr:     "127.0.0.1:8082",
		LogLevel: slog.LevelInfo,
		NATS: NATS{
			URL:            "nats://127.0.0.1:4222",
			Consumer:       "meter",
			StreamReplicas: 1,
			AckWait:        30 * time.Second,
		},
		ClickHouse: ClickHouse{
			Addr:     "127.0.0.1:9000",
			Database: "qyai",
			User:     "default",
		},
		Batch: Batch{
			Size: 5000,
			// Each insert costs ClickHouse a part in usage_events and one
			// in usage_inserts, and their merges: at 500 ms it was the
			// largest CPU burst of the stack, and the p99 tail of requests
			// on a shared machine followed it (README, Performance).
			MaxAge:       2 * time.Second,
			DrainTimeout: 10 * time.Second,
		},
		Rollup: Rollup{
			Interval: time.Minute,
			Settle:   5 * time.Minute,
		},
	}
}

// Load returns Default overridden by every variable getenv (os.Getenv in
// production) knows, read with envconfig: values are trimmed, an empty
// variable is an unset one, and the secrets CLICKHOUSE_PASSWORD, NATS_PASSWORD
// and NATS_TOKEN may instead be read from the files their _FILE variables name. It reports every unparsable value
// at once; call Validate for the rest.
func Load(getenv func(string) string) (Config, error) {
	c := Default()
	r := envconfig.New(envconfig.Getenv(getenv))
	c.Addr = r.String("METER_ADDR", c.Addr)
	c.OTLPTraces, c.OTLPMetrics = telemetry.Endpoints(getenv)
	if v := r.String("LOG_LEVEL", ""); v != "" {
		if l, err := logging.ParseLevel(v); err != nil {
			r.Errorf("LOG_LEVEL: %w", err)
		} else {
			c.LogLevel = l
		}
	}
	c.NATS.URL = r.String("NATS_URL", c.NATS.URL)
	c.NATS.Auth = natsconn.Read(r)
	c.NATS.Consumer = r.String("METER_CONSUMER", c.NATS.Consumer)
	c.NATS.StreamReplicas = r.Int("STREAM_REPLICAS", c.NATS.StreamReplicas)
	c.NATS.AckWait = r.Duration("METER_ACK_WAIT", c.NATS.AckWait)
	c.ClickHouse.Addr = r.String("CLICKHOUSE_ADDR", c.ClickHouse.Addr)
	c.ClickHouse.Database = r.String("CLICKHOUSE_DATABASE", c.ClickHouse.Database)
	c.ClickHouse.User = r.String("CLICKHOUSE_USER", c.ClickHouse.User)
	// An empty password is the default; an unset and an empty variable agree.
	c.ClickHouse.Password = r.Secret("CLICKHOUSE_PASSWORD", c.ClickHouse.Password)
	c.ClickHouse.Cluster = r.String("CLICKHOUSE_CLUSTER", c.ClickHouse.Cluster)
	c.Batch.Size = r.Int("METER_BATCH_SIZE", c.Batch.Size)
	c.Batch.MaxAge = r.Duration("METER_BATCH_MAX_AGE", c.Batch.MaxAge)
	c.Batch.DrainTimeout = r.Duration("METER_DRAIN_TIMEOUT", c.Batch.DrainTimeout)
	c.Rollup.Interval = r.Duration("METER_ROLLUP_INTERVAL", c.Rollup.Interval)
	c.Rollup.Settle = r.Duration("METER_ROLLUP_SETTLE", c.Rollup.Settle)
	return c, r.Err()
}

// Limits of the values Validate accepts.
const (
	MaxBatchSize = 100_000
	MinBatchAge  = time.Millisecond
	MaxBatchAge  = 30 * time.Second

	MinRollupInterval = 100 * time.Millisecond
	MaxRollupInterval = time.Hour
	MaxRollupSettle   = 24 * time.Hour
)

// Validate reports every problem of c, each prefixed by its section.
func (c Config) Validate() error {
	var errs []error
	add := func(section, format string, args ...any) {
		errs = append(errs, fmt.Errorf(section+": "+format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		add("meter", "METER_ADDR %q: want host:port", c.Addr)
	}

	if err := natsconn.ValidateURLs(c.NATS.URL); err != nil {
		errs = append(errs, fmt.Errorf("nats: %w", err))
	}
	if err := c.NATS.Auth.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("nats: %w", err))
	}
	if !validName(c.NATS.Consumer) {
		add("nats", "METER_CONSUMER %q: want letters, digits, - or _", c.NATS.Consumer)
	}
	if c.NATS.StreamReplicas < 1 || c.NATS.StreamReplicas > 5 {
		add("nats", "STREAM_REPLICAS %d: want 1..5 (3 in a cluster)", c.NATS.StreamReplicas)
	}
	if c.NATS.AckWait < time.Second {
		add("nats", "METER_ACK_WAIT %s: want at least 1s", c.NATS.AckWait)
	} else if c.NATS.AckWait < 2*c.Batch.MaxAge {
		add("nats", "METER_ACK_WAIT %s: want at least twice METER_BATCH_MAX_AGE (%s)", c.NATS.AckWait, c.Batch.MaxAge)
	}

	if err := chschema.CheckAddrs(c.ClickHouse.Addr); err != nil {
		add("clickhouse", "CLICKHOUSE_ADDR %q: %v", c.ClickHouse.Addr, err)
	}
	if !validIdent(c.ClickHouse.Database) {
		add("clickhouse", "CLICKHOUSE_DATABASE %q: want letters, digits or _", c.ClickHouse.Database)
	}
	if c.ClickHouse.User == "" {
		add("clickhouse", "CLICKHOUSE_USER is empty")
	}
	if c.ClickHouse.Cluster != "" && !validIdent(c.ClickHouse.Cluster) {
		add("clickhouse", "CLICKHOUSE_CLUSTER %q: want letters, digits or _", c.ClickHouse.Cluster)
	}

	if c.Batch.Size < 1 || c.Batch.Size > MaxBatchSize {
		add("batch", "METER_BATCH_SIZE %d: want 1..%d", c.Batch.Size, MaxBatchSize)
	}
	if c.Batch.MaxAge < MinBatchAge || c.Batch.MaxAge > MaxBatchAge {
		add("batch", "METER_BATCH_MAX_AGE %s: want %s..%s", c.Batch.MaxAge, MinBatchAge, MaxBatchAge)
	}
	if c.Batch.DrainTimeout < 0 {
		add("batch", "METER_DRAIN_TIMEOUT %s is negative", c.Batch.DrainTimeout)
	}

	if c.Rollup.Interval != 0 && (c.Rollup.Interval < MinRollupInterval || c.Rollup.Interval > MaxRollupInterval) {
		add("rollup", "METER_ROLLUP_INTERVAL %s: want 0 (off) or %s..%s", c.Rollup.Interval, MinRollupInterval, MaxRollupInterval)
	}
	if c.Rollup.Settle < 0 || c.Rollup.Settle > MaxRollupSettle {
		add("rollup", "METER_ROLLUP_SETTLE %s: want 0..%s", c.Rollup.Settle, MaxRollupSettle)
	}
	return errors.Join(errs...)
}

// validIdent matches ClickHouse identifiers the schema accepts unquoted.
func validIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// validName matches JetStream consumer names.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case r == '_', r == '-', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		default:
			return false
		}
	}
	return true
}
