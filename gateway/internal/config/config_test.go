package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pepperFile := write("pepper", "file-pepper\n")
	keysFile := write("keys", "sk-a,\nsk-b\n")
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.Addr != "127.0.0.1:8080" || c.Upstream.Members[0].BaseURL != "https://api.deepseek.com" || c.RedisTimeout != 50*time.Millisecond {
				t.Errorf("unexpected defaults: %+v", c)
			}
		}},
		{name: "affinity on by default", check: func(t *testing.T, c Config) {
			if !c.Upstream.Affinity {
				t.Error("UPSTREAM_AFFINITY should default to true")
			}
		}},
		{name: "affinity off", env: map[string]string{"UPSTREAM_AFFINITY": "false"}, check: func(t *testing.T, c Config) {
			if c.Upstream.Affinity {
				t.Error("UPSTREAM_AFFINITY=false left affinity on")
			}
		}},
		{name: "affinity not a boolean", env: map[string]string{"UPSTREAM_AFFINITY": "sometimes"}, wantErr: []string{`UPSTREAM_AFFINITY: "sometimes" is not a boolean`}},
		{name: "metrics listener default", check: func(t *testing.T, c Config) {
			if c.MetricsAddr != "127.0.0.1:9464" {
				t.Errorf("metrics addr %q, want 127.0.0.1:9464", c.MetricsAddr)
			}
		}},
		{name: "metrics listener set", env: map[string]string{"GATEWAY_METRICS_ADDR": "0.0.0.0:9565"}, check: func(t *testing.T, c Config) {
			if c.MetricsAddr != "0.0.0.0:9565" {
				t.Errorf("metrics addr %q", c.MetricsAddr)
			}
		}},
		{name: "metrics listener is not the public one", env: map[string]string{"GATEWAY_ADDR": "127.0.0.1:9999", "GATEWAY_METRICS_ADDR": "127.0.0.1:9999"},
			wantErr: []string{"server: GATEWAY_METRICS_ADDR must differ from GATEWAY_ADDR"}},
		{name: "client timeouts", env: map[string]string{"BODY_READ_TIMEOUT": "5s"}, check: func(t *testing.T, c Config) {
			if c.BodyReadTimeout != 5*time.Second || c.ClientWriteTimeout != 30*time.Second {
				t.Errorf("body read %s, client write %s; want 5s, 30s", c.BodyReadTimeout, c.ClientWriteTimeout)
			}
		}},
		{name: "client timeouts must be positive", env: map[string]string{"CLIENT_WRITE_TIMEOUT": "0s"}, wantErr: []string{"server: BODY_READ_TIMEOUT and CLIENT_WRITE_TIMEOUT must be positive"}},
		{name: "spool defaults", env: map[string]string{"GATEWAY_INSTANCE": "gw-1/127.0.0.1:8080"}, check: func(t *testing.T, c Config) {
			want := "/home/gw/.local/state/qyai/spool/gw-1_127.0.0.1_8080"
			if c.SpoolDir != want || c.SpoolMaxBytes != 1<<30 {
				t.Errorf("spool %q %d, want %q %d", c.SpoolDir, c.SpoolMaxBytes, want, 1<<30)
			}
		}},
		{name: "spool set", env: map[string]string{"SPOOL_DIR": "/var/spool/qyai", "SPOOL_MAX_BYTES": "2097152"}, check: func(t *testing.T, c Config) {
			if c.SpoolDir != "/var/spool/qyai" || c.SpoolMaxBytes != 2<<20 {
				t.Errorf("spool %q %d", c.SpoolDir, c.SpoolMaxBytes)
			}
		}},
		{name: "spool default in a state directory", env: map[string]string{"GATEWAY_INSTANCE": "gw-1", "STATE_DIRECTORY": "/var/lib/qyai"}, check: func(t *testing.T, c Config) {
			if c.SpoolDir != "/var/lib/qyai/spool/gw-1" {
				t.Errorf("spool %q", c.SpoolDir)
			}
		}},
		{name: "no spool default", env: map[string]string{"HOME": ""}, wantErr: []string{"usage: SPOOL_DIR is empty, and none of STATE_DIRECTORY, XDG_STATE_HOME, HOME gives a default"}},
		{name: "spool too small", env: map[string]string{"SPOOL_MAX_BYTES": "1000"}, wantErr: []string{"SPOOL_MAX_BYTES"}},
		{name: "spool size not a number", env: map[string]string{"SPOOL_MAX_BYTES": "1GiB"}, wantErr: []string{"SPOOL_MAX_BYTES"}},
		{name: "trailing slash trimmed", env: map[string]string{"UPSTREAM_BASE_URL": "http://127.0.0.1:8090/"}, check: func(t *testing.T, c Config) {
			if c.Upstream.Members[0].BaseURL != "http://127.0.0.1:8090" {
				t.Errorf("base url %q", c.Upstream.Members[0].BaseURL)
			}
		}},
		{name: "pool with one key", env: map[string]string{"UPSTREAM_BASE_URL": "http://a:1, http://b:2", "UPSTREAM_API_KEY": "k", "UPSTREAM_WEIGHTS": "3,1"}, check: func(t *testing.T, c Config) {
			want := []Member{{"http://a:1", "k", 3}, {"http://b:2", "k", 1}}
			if len(c.Upstream.Members) != 2 || c.Upstream.Members[0] != want[0] || c.Upstream.Members[1] != want[1] {
				t.Errorf("members %+v", c.Upstream.Members)
			}
		}},
		{name: "pool with a key per member", env: map[string]string{"UPSTREAM_BASE_URL": "http://a:1,http://b:2", "UPSTREAM_API_KEY": "k1,k2"}, check: func(t *testing.T, c Config) {
			if c.Upstream.Members[0].APIKey != "k1" || c.Upstream.Members[1].APIKey != "k2" {
				t.Errorf("members %+v", c.Upstream.Members)
			}
		}},
		{name: "pool list mismatch", env: map[string]string{"UPSTREAM_BASE_URL": "http://a:1,http://b:2", "UPSTREAM_API_KEY": "k1,k2,k3", "UPSTREAM_WEIGHTS": "1"},
			wantErr: []string{"UPSTREAM_API_KEY", "UPSTREAM_WEIGHTS"}},
		{name: "values and secrets trimmed", env: map[string]string{
			"GATEWAY_ADDR": " 127.0.0.1:9999\n", "KEY_PEPPER": "pepper\n", "UPSTREAM_API_KEY": "sk-up\r\n", "LOG_LEVEL": "DEBUG ",
		}, check: func(t *testing.T, c Config) {
			if c.Addr != "127.0.0.1:9999" || c.KeyPepper != "pepper" || c.Upstream.Members[0].APIKey != "sk-up" || c.LogLevel != "debug" {
				t.Errorf("addr %q pepper %q key %q level %q", c.Addr, c.KeyPepper, c.Upstream.Members[0].APIKey, c.LogLevel)
			}
		}},
		{name: "secrets from files", env: map[string]string{
			"KEY_PEPPER_FILE": pepperFile, "UPSTREAM_API_KEY_FILE": keysFile, "UPSTREAM_BASE_URL": "http://a:1,http://b:2",
		}, check: func(t *testing.T, c Config) {
			if c.KeyPepper != "file-pepper" || c.Upstream.Members[0].APIKey != "sk-a" || c.Upstream.Members[1].APIKey != "sk-b" {
				t.Errorf("pepper %q members %+v", c.KeyPepper, c.Upstream.Members)
			}
		}},
		{name: "nats credentials", env: map[string]string{
			"NATS_USER": "gateway", "NATS_PASSWORD_FILE": pepperFile, "NATS_TLS_CA_FILE": pepperFile,
		}, check: func(t *testing.T, c Config) {
			a := c.NATSAuth
			if a.User != "gateway" || a.Password != "file-pepper" || a.TLS.CAFile != pepperFile || a.Method() != "user" {
				t.Errorf("nats auth %+v", a)
			}
		}},
		{name: "nats cluster", env: map[string]string{"NATS_URL": "nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://127.0.0.1:4224", "STREAM_REPLICAS": "3"}, check: func(t *testing.T, c Config) {
			if c.StreamReplicas != 3 {
				t.Errorf("StreamReplicas = %d, want 3", c.StreamReplicas)
			}
		}},
		{name: "nats url list with a bad entry", env: map[string]string{"NATS_URL": "nats://127.0.0.1:4222,nats://127.0.0.1"}, wantErr: []string{`nats: NATS_URL entry 2 "nats://127.0.0.1": want host:port`}},
		{name: "nats without credentials", check: func(t *testing.T, c Config) {
			if c.NATSAuth.Method() != "none" || c.NATSAuth.TLS.CAFile != "" {
				t.Errorf("nats auth %+v", c.NATSAuth)
			}
		}},
		{name: "nats conflicting credentials", env: map[string]string{
			"NATS_TOKEN": "t", "NATS_CREDS_FILE": pepperFile, "NATS_TLS_CERT_FILE": pepperFile,
		}, wantErr: []string{"nats: set one NATS credential method", "NATS_TLS_KEY_FILE together"}},
		{name: "secret set twice or unreadable", env: map[string]string{
			"KEY_PEPPER": "p", "KEY_PEPPER_FILE": pepperFile, "UPSTREAM_API_KEY_FILE": filepath.Join(dir, "missing"),
		}, wantErr: []string{"set KEY_PEPPER or KEY_PEPPER_FILE, not both", "read UPSTREAM_API_KEY_FILE"}},
		{name: "no pepper outside dev mode", env: map[string]string{"QYAI_DEV": ""}, wantErr: []string{"KEY_PEPPER is required"}},
		{name: "key stale max age default", check: func(t *testing.T, c Config) {
			if c.KeyStaleMaxAge != 15*time.Minute || c.KeyCacheTTL != 30*time.Second {
				t.Errorf("stale max age %v, cache ttl %v", c.KeyStaleMaxAge, c.KeyCacheTTL)
			}
		}},
		{name: "key stale max age set", env: map[string]string{"KEY_STALE_MAX_AGE": "5m"}, check: func(t *testing.T, c Config) {
			if c.KeyStaleMaxAge != 5*time.Minute {
				t.Errorf("stale max age %v", c.KeyStaleMaxAge)
			}
		}},
		{name: "key durations not positive", env: map[string]string{"KEY_STALE_MAX_AGE": "0s", "KEY_CACHE_TTL": "-1s"},
			wantErr: []string{"keys: KEY_STALE_MAX_AGE must be positive", "keys: KEY_CACHE_TTL must be positive"}},
		{name: "auth failure limit default", check: func(t *testing.T, c Config) {
			if c.AuthFailLimit != 20 || c.AuthFailWindow != time.Minute {
				t.Errorf("auth failure limit %d per %v, want 20 per 1m", c.AuthFailLimit, c.AuthFailWindow)
			}
		}},
		{name: "auth failure limit off", env: map[string]string{"AUTH_FAIL_LIMIT": "0", "AUTH_FAIL_WINDOW": "30s"}, check: func(t *testing.T, c Config) {
			if c.AuthFailLimit != 0 || c.AuthFailWindow != 30*time.Second {
				t.Errorf("auth failure limit %d per %v", c.AuthFailLimit, c.AuthFailWindow)
			}
		}},
		{name: "auth failure limit invalid", env: map[string]string{"AUTH_FAIL_LIMIT": "-1", "AUTH_FAIL_WINDOW": "0s"},
			wantErr: []string{"keys: AUTH_FAIL_LIMIT must not be negative", "keys: AUTH_FAIL_WINDOW must be positive"}},
		{name: "usage batches", check: func(t *testing.T, c Config) {
			if c.PublishBatch != 64 {
				t.Errorf("USAGE_BATCH_MAX defaults to %d, want 64", c.PublishBatch)
			}
		}},
		{name: "usage batches off", env: map[string]string{"USAGE_BATCH_MAX": "1"}, check: func(t *testing.T, c Config) {
			if c.PublishBatch != 1 {
				t.Errorf("USAGE_BATCH_MAX=1 gave %d", c.PublishBatch)
			}
		}},
		{name: "usage batches out of range", env: map[string]string{"USAGE_BATCH_MAX": "65"}, wantErr: []string{"usage: USAGE_BATCH_MAX 65: want 1..64"}},
		{name: "usage batches zero", env: map[string]string{"USAGE_BATCH_MAX": "0"}, wantErr: []string{"usage: USAGE_BATCH_MAX 0: want 1..64"}},
		{name: "bad log level", env: map[string]string{"LOG_LEVEL": "loud"}, wantErr: []string{`server: LOG_LEVEL "loud" is not one of debug, info, warn, error`}},
		{name: "every problem reported", env: map[string]string{
			"REDIS_TIMEOUT": "soon", "MAX_BODY_BYTES": "12", "UPSTREAM_BASE_URL": "ftp://x", "STREAM_REPLICAS": "9",
			"UPSTREAM_RETRIES": "two", "LOG_LEVEL": "loud",
		}, wantErr: []string{"REDIS_TIMEOUT", "MAX_BODY_BYTES", "UPSTREAM_BASE_URL", "STREAM_REPLICAS", `UPSTREAM_RETRIES: "two" is not an integer`, "LOG_LEVEL"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(func(k string) string {
				if v, ok := tc.env[k]; ok {
					return v
				}
				switch k {
				case "HOME": // as in a real environment; "HOME": "" unsets it
					return "/home/gw"
				case "QYAI_DEV": // dev mode unless the case sets it
					return "1"
				}
				return ""
			})
			if len(tc.wantErr) == 0 && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			for _, w := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not mention %s", err, w)
				}
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// TestDefaultSpoolDir: the default spool is in a persistent directory of
// the gateway's user, picked from the environment the lookup gives, never
// in the shared temporary directory.
func TestDefaultSpoolDir(t *testing.T) {
	tests := []struct {
		name     string
		instance string
		env      map[string]string
		want     string
	}{
		{"systemd state directory wins", "gw", map[string]string{"STATE_DIRECTORY": "/var/lib/qyai", "XDG_STATE_HOME": "/x", "HOME": "/h"}, "/var/lib/qyai/spool/gw"},
		{"first of several state directories", "gw", map[string]string{"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a/spool/gw"},
		{"XDG state home", "gw", map[string]string{"XDG_STATE_HOME": "/x/state", "HOME": "/h"}, "/x/state/qyai/spool/gw"},
		{"home", "host/127.0.0.1:8080", map[string]string{"HOME": "/home/u"}, "/home/u/.local/state/qyai/spool/host_127.0.0.1_8080"},
		{"relative values ignored", "gw", map[string]string{"STATE_DIRECTORY": "state", "XDG_STATE_HOME": "x", "HOME": "/h"}, "/h/.local/state/qyai/spool/gw"},
		{"nothing to go on", "gw", map[string]string{"HOME": "relative"}, ""},
		{"instance cannot climb out", "..", map[string]string{"HOME": "/h"}, "/h/.local/state/qyai/spool/_.."},
		{"instance cannot descend", "a/../../b", map[string]string{"HOME": "/h"}, "/h/.local/state/qyai/spool/a_.._.._b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := DefaultSpoolDir(tc.instance, func(k string) string { return tc.env[k] }); got != tc.want {
				t.Errorf("DefaultSpoolDir(%q) = %q, want %q", tc.instance, got, tc.want)
			}
		})
	}
}
