package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if c.Addr != "127.0.0.1:8082" || c.NATS.URL != "nats://127.0.0.1:4222" || c.NATS.Consumer != "meter" ||
		c.NATS.StreamReplicas != 1 || c.ClickHouse.Addr != "127.0.0.1:9000" || c.ClickHouse.Database != "qyai" ||
		c.ClickHouse.User != "default" || c.ClickHouse.Password != "" || c.Batch.Size != 5000 ||
		c.Batch.MaxAge != 2*time.Second || c.LogLevel != slog.LevelInfo {
		t.Errorf("defaults = %+v", c)
	}
}

func TestLoadOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{
		"METER_ADDR": "0.0.0.0:9102", "NATS_URL": "nats://nats:4222", "METER_CONSUMER": "meter-b",
		"STREAM_REPLICAS": "3", "METER_ACK_WAIT": "1m", "CLICKHOUSE_ADDR": "ch:9000",
		"CLICKHOUSE_DATABASE": "billing", "CLICKHOUSE_USER": "meter", "CLICKHOUSE_PASSWORD": "pw",
		"CLICKHOUSE_CLUSTER": "main", "METER_BATCH_SIZE": "20000", "METER_BATCH_MAX_AGE": "1s",
		"METER_DRAIN_TIMEOUT": "30s", "LOG_LEVEL": "debug", "METER_ROLLUP_INTERVAL": "0s", "METER_ROLLUP_SETTLE": "10m",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Addr: "0.0.0.0:9102", LogLevel: slog.LevelDebug,
		NATS:       NATS{URL: "nats://nats:4222", Consumer: "meter-b", StreamReplicas: 3, AckWait: time.Minute},
		ClickHouse: ClickHouse{Addr: "ch:9000", Database: "billing", User: "meter", Password: "pw", Cluster: "main"},
		Batch:      Batch{Size: 20000, MaxAge: time.Second, DrainTimeout: 30 * time.Second},
		Rollup:     Rollup{Interval: 0, Settle: 10 * time.Minute},
	}
	if c != want {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
}

func TestLoadParseErrors(t *testing.T) {
	_, err := Load(env(map[string]string{
		"METER_BATCH_SIZE": "lots", "METER_BATCH_MAX_AGE": "5", "LOG_LEVEL": "loud", "STREAM_REPLICAS": "three",
	}))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, v := range []string{
		`METER_BATCH_SIZE: "lots" is not an integer`, `METER_BATCH_MAX_AGE: "5" is not a duration`,
		`LOG_LEVEL: "loud" is not one of debug, info, warn, error`, `STREAM_REPLICAS: "three" is not an integer`,
	} {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error does not name %s: %v", v, err)
		}
	}
}

func TestLoadTrimsAndReadsSecretFiles(t *testing.T) {
	file := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(file, []byte("pw-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(env(map[string]string{
		"METER_ADDR": " 0.0.0.0:9102\n", "METER_BATCH_SIZE": " 20 ", "METER_ACK_WAIT": "1m\n", "LOG_LEVEL": "WARN\n",
		"CLICKHOUSE_PASSWORD_FILE": file,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "0.0.0.0:9102" || c.Batch.Size != 20 || c.NATS.AckWait != time.Minute || c.LogLevel != slog.LevelWarn ||
		c.ClickHouse.Password != "pw-from-file" {
		t.Errorf("got %+v", c)
	}

	c, err = Load(env(map[string]string{"CLICKHOUSE_PASSWORD": "pw\r\n"}))
	if err != nil || c.ClickHouse.Password != "pw" {
		t.Errorf("password %q, %v", c.ClickHouse.Password, err)
	}

	c, err = Load(env(map[string]string{"NATS_USER": "meter", "NATS_PASSWORD_FILE": file, "NATS_TLS_CA_FILE": file}))
	if err != nil || c.NATS.Auth.User != "meter" || c.NATS.Auth.Password != "pw-from-file" || c.NATS.Auth.TLS.CAFile != file {
		t.Errorf("nats auth %+v, %v", c.NATS.Auth, err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("nats auth: Validate() = %v", err)
	}

	_, err = Load(env(map[string]string{"CLICKHOUSE_PASSWORD": "hunter2-secret", "CLICKHOUSE_PASSWORD_FILE": file}))
	if err == nil || !strings.Contains(err.Error(), "set CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE, not both") ||
		strings.Contains(err.Error(), "hunter2") {
		t.Errorf("both set: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string // substrings of the joined error; none means valid
	}{
		{name: "defaults", change: func(*Config) {}},
		{name: "bad addr", change: func(c *Config) { c.Addr = "8082" }, want: []string{"meter: METER_ADDR"}},
		{name: "bad nats url", change: func(c *Config) { c.NATS.URL = "::" }, want: []string{"nats: NATS_URL"}},
		{name: "nats cluster", change: func(c *Config) {
			c.NATS.URL = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
			c.NATS.StreamReplicas = 3
		}},
		{name: "bad nats url in list", change: func(c *Config) { c.NATS.URL = "nats://127.0.0.1:4222,127.0.0.1:4223" }, want: []string{`nats: NATS_URL entry 2 "127.0.0.1:4223"`}},
		{name: "consumer with dot", change: func(c *Config) { c.NATS.Consumer = "a.b" }, want: []string{"nats: METER_CONSUMER"}},
		{name: "zero replicas", change: func(c *Config) { c.NATS.StreamReplicas = 0 }, want: []string{"nats: STREAM_REPLICAS"}},
		{name: "short ack wait", change: func(c *Config) { c.NATS.AckWait = 100 * time.Millisecond }, want: []string{"nats: METER_ACK_WAIT"}},
		{name: "ack wait below twice batch age", change: func(c *Config) {
			c.NATS.AckWait = 2 * time.Second
			c.Batch.MaxAge = 1500 * time.Millisecond
		}, want: []string{"twice METER_BATCH_MAX_AGE"}},
		{name: "nats user without password", change: func(c *Config) { c.NATS.Auth.User = "meter" }, want: []string{"nats: NATS_USER is set without NATS_PASSWORD"}},
		{name: "nats two credential methods", change: func(c *Config) { c.NATS.Auth.Token, c.NATS.Auth.CredsFile = "t", "/dev/null" }, want: []string{"nats: set one NATS credential method"}},
		{name: "nats cert without key", change: func(c *Config) { c.NATS.Auth.TLS.CertFile = "/dev/null" }, want: []string{"nats: set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together"}},
		{name: "bad clickhouse addr", change: func(c *Config) { c.ClickHouse.Addr = "ch" }, want: []string{"clickhouse: CLICKHOUSE_ADDR"}},
		{name: "database injection", change: func(c *Config) { c.ClickHouse.Database = "q; DROP" }, want: []string{"clickhouse: CLICKHOUSE_DATABASE"}},
		{name: "database starting with digit", change: func(c *Config) { c.ClickHouse.Database = "1q" }, want: []string{"CLICKHOUSE_DATABASE"}},
		{name: "empty user", change: func(c *Config) { c.ClickHouse.User = "" }, want: []string{"clickhouse: CLICKHOUSE_USER"}},
		{name: "bad cluster", change: func(c *Config) { c.ClickHouse.Cluster = "a-b" }, want: []string{"clickhouse: CLICKHOUSE_CLUSTER"}},
		{name: "zero batch", change: func(c *Config) { c.Batch.Size = 0 }, want: []string{"batch: METER_BATCH_SIZE"}},
		{name: "huge batch", change: func(c *Config) { c.Batch.Size = MaxBatchSize + 1 }, want: []string{"batch: METER_BATCH_SIZE"}},
		{name: "zero batch age", change: func(c *Config) { c.Batch.MaxAge = 0 }, want: []string{"batch: METER_BATCH_MAX_AGE"}},
		{name: "negative drain", change: func(c *Config) { c.Batch.DrainTimeout = -time.Second }, want: []string{"batch: METER_DRAIN_TIMEOUT"}},
		{name: "rollup too often", change: func(c *Config) { c.Rollup.Interval = time.Millisecond }, want: []string{"rollup: METER_ROLLUP_INTERVAL"}},
		{name: "rollup too rare", change: func(c *Config) { c.Rollup.Interval = 2 * time.Hour }, want: []string{"rollup: METER_ROLLUP_INTERVAL"}},
		{name: "negative settle", change: func(c *Config) { c.Rollup.Settle = -time.Second }, want: []string{"rollup: METER_ROLLUP_SETTLE"}},
		{name: "every problem at once", change: func(c *Config) {
			c.Addr, c.NATS.StreamReplicas, c.ClickHouse.User, c.Batch.Size = "", 9, "", -1
		}, want: []string{"meter: METER_ADDR", "nats: STREAM_REPLICAS", "clickhouse: CLICKHOUSE_USER", "batch: METER_BATCH_SIZE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.change(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, want it to contain %q", err, w)
				}
			}
		})
	}
}
