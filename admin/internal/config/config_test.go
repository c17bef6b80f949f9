package config

import (
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
	c, err := Load(env(map[string]string{"ADMIN_TOKEN": "s3cret-admin-token"}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Addr != "127.0.0.1:8081" || c.Redis.Addrs[0] != "127.0.0.1:6379" || c.Redis.Timeout != 50*time.Millisecond ||
		c.ClickHouse.Addr != "127.0.0.1:9000" || c.ClickHouse.Database != "qyai" || c.ClickHouse.User != "default" ||
		c.LogLevel != "info" || !c.UsesDefaultPepper() {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("from-file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string // substrings; nil means valid
		check   func(t *testing.T, c Config)
	}{
		{
			name:    "token required",
			env:     map[string]string{},
			wantErr: []string{"ADMIN_TOKEN (or ADMIN_TOKEN_FILE) is required"},
		},
		{
			name: "token from file, newline trimmed",
			env:  map[string]string{"ADMIN_TOKEN_FILE": tokenFile},
			check: func(t *testing.T, c Config) {
				if c.AdminToken != "from-file-token" {
					t.Errorf("AdminToken = %q", c.AdminToken)
				}
			},
		},
		{
			name:    "token and token file",
			env:     map[string]string{"ADMIN_TOKEN": "x", "ADMIN_TOKEN_FILE": tokenFile},
			wantErr: []string{"not both"},
		},
		{
			name:    "token file missing",
			env:     map[string]string{"ADMIN_TOKEN_FILE": filepath.Join(dir, "nope")},
			wantErr: []string{"read ADMIN_TOKEN_FILE"},
		},
		{
			name: "cluster of redis addresses, custom values",
			env: map[string]string{
				"ADMIN_TOKEN": "t", "REDIS_ADDR": "a:1, b:2", "REDIS_TIMEOUT": "75ms", "KEY_PEPPER": "pep",
				"CLICKHOUSE_DATABASE": "billing_2", "LOG_LEVEL": "DEBUG",
			},
			check: func(t *testing.T, c Config) {
				if len(c.Redis.Addrs) != 2 || c.Redis.Addrs[1] != "b:2" || c.Redis.Timeout != 75*time.Millisecond ||
					c.KeyPepper != "pep" || c.UsesDefaultPepper() || c.ClickHouse.Database != "billing_2" || c.LogLevel != "debug" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "every problem at once, by section",
			env: map[string]string{
				"REDIS_TIMEOUT": "soon", "CLICKHOUSE_DATABASE": "qyai; DROP", "LOG_LEVEL": "loud",
				"CLICKHOUSE_QUERY_TIMEOUT": "-1s", "CLICKHOUSE_CLUSTER": "a-b",
			},
			wantErr: []string{
				`REDIS_TIMEOUT: "soon" is not a duration`,
				"server: ADMIN_TOKEN (or ADMIN_TOKEN_FILE) is required",
				`server: LOG_LEVEL "loud"`,
				`clickhouse: CLICKHOUSE_DATABASE "qyai; DROP" is not a plain identifier`,
				`clickhouse: CLICKHOUSE_CLUSTER "a-b"`,
				"clickhouse: CLICKHOUSE_QUERY_TIMEOUT must be positive",
			},
		},
		{
			name:    "whitespace in token",
			env:     map[string]string{"ADMIN_TOKEN": "two words"},
			wantErr: []string{"ADMIN_TOKEN contains whitespace"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				tt.check(t, c)
				return
			}
			if err == nil {
				t.Fatal("Load: no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
