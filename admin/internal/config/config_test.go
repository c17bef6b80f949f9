package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// env looks variables up in m; QYAI_DEV is on unless m sets it, so that
// cases without KEY_PEPPER load (TestPepper covers the pepper itself).
func env(m map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := m[k]; ok || k != "QYAI_DEV" {
			return v
		}
		return "1"
	}
}

func TestPepper(t *testing.T) {
	if _, err := Load(env(map[string]string{"ADMIN_TOKEN": "s3cret-admin-token", "QYAI_DEV": ""})); err == nil ||
		!strings.Contains(err.Error(), "KEY_PEPPER is required") {
		t.Errorf("no KEY_PEPPER outside dev mode: %v, want KEY_PEPPER is required", err)
	}
	c, err := Load(env(map[string]string{"ADMIN_TOKEN": "s3cret-admin-token", "QYAI_DEV": "", "KEY_PEPPER": " prod-pepper\n"}))
	if err != nil || c.KeyPepper != "prod-pepper" || c.UsesDefaultPepper() {
		t.Errorf("KEY_PEPPER set: pepper %q, %v", c.KeyPepper, err)
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(map[string]string{"ADMIN_TOKEN": "s3cret-admin-token"}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.AuthMaxFailures != 10 || c.AuthFailureWindow != time.Minute || len(c.TrustedProxies) != 0 || c.AuditFlushInterval != time.Second {
		t.Errorf("auth and audit defaults: %+v", c)
	}
	if c.BillingRPM != 60 || c.RegenerateRPM != 3 {
		t.Errorf("BILLING_RPM default %d, want 60; REGENERATE_RPM default %d, want 3", c.BillingRPM, c.RegenerateRPM)
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
	namedFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(namedFile, []byte("# operators\nalice:alice-token\n\n  bob@example.com:bob-token  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pepperFile := filepath.Join(dir, "pepper")
	if err := os.WriteFile(pepperFile, []byte("file-pepper\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badLineFile := filepath.Join(dir, "bad-line")
	if err := os.WriteFile(badLineFile, []byte("\n\n# ops\nalice:\n"), 0o600); err != nil {
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
			wantErr: []string{"an admin token is required: set ADMIN_TOKEN, ADMIN_TOKENS or ADMIN_TOKEN_FILE"},
		},
		{
			name: "plain token is named admin",
			env:  map[string]string{"ADMIN_TOKEN": "plain-token"},
			check: func(t *testing.T, c Config) {
				if len(c.AdminTokens) != 1 || c.AdminTokens[0] != (AdminToken{Name: "admin", Token: "plain-token"}) {
					t.Errorf("AdminTokens = %+v", c.AdminTokens)
				}
			},
		},
		{
			name: "token from file, newline trimmed",
			env:  map[string]string{"ADMIN_TOKEN_FILE": tokenFile},
			check: func(t *testing.T, c Config) {
				if len(c.AdminTokens) != 1 || c.AdminTokens[0] != (AdminToken{Name: "admin", Token: "from-file-token"}) {
					t.Errorf("AdminTokens = %+v", c.AdminTokens)
				}
			},
		},
		{
			name: "named tokens from a file and from ADMIN_TOKENS",
			env:  map[string]string{"ADMIN_TOKEN_FILE": namedFile, "ADMIN_TOKENS": "ci:ci-token-1, ops:tok:with:colons"},
			check: func(t *testing.T, c Config) {
				want := []AdminToken{{"alice", "alice-token"}, {"bob@example.com", "bob-token"}, {"ci", "ci-token-1"}, {"ops", "tok:with:colons"}}
				if len(c.AdminTokens) != len(want) {
					t.Fatalf("AdminTokens = %+v", c.AdminTokens)
				}
				for i := range want {
					if c.AdminTokens[i] != want[i] {
						t.Errorf("token %d = %+v, want %+v", i, c.AdminTokens[i], want[i])
					}
				}
			},
		},
		{
			name: "token problems name the token, never the secret",
			env:  map[string]string{"ADMIN_TOKENS": "a:same-secret,b:same-secret,a:other,bad name:x,:nameless,noname"},
			wantErr: []string{
				`admin token "b" has the same secret as another token`,
				`admin token name "a" is used twice`,
				`admin token name "bad name" is not`,
				"ADMIN_TOKENS entry 5 is not name:token",
				"ADMIN_TOKENS entry 6 is not name:token",
			},
		},
		{
			name:    "auth limits and proxies",
			env:     map[string]string{"ADMIN_TOKEN": "t", "ADMIN_AUTH_MAX_FAILURES": "0", "ADMIN_AUTH_FAILURE_WINDOW": "0s", "ADMIN_TRUSTED_PROXIES": "10.0.0.0/8, nope", "AUDIT_FLUSH_INTERVAL": "0s"},
			wantErr: []string{"ADMIN_AUTH_MAX_FAILURES must be at least 1", "ADMIN_AUTH_FAILURE_WINDOW must be positive", `"nope" is not an IP address or CIDR`, "AUDIT_FLUSH_INTERVAL must be positive"},
		},
		{
			name:    "billing rpm negative",
			env:     map[string]string{"ADMIN_TOKEN": "t", "BILLING_RPM": "-1"},
			wantErr: []string{"BILLING_RPM must not be negative"},
		},
		{
			name:    "regenerate rpm zero",
			env:     map[string]string{"ADMIN_TOKEN": "t", "REGENERATE_RPM": "0"},
			wantErr: []string{"REGENERATE_RPM must be at least 1"},
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
				"server: an admin token is required",
				`server: LOG_LEVEL "loud"`,
				`clickhouse: CLICKHOUSE_DATABASE "qyai; DROP" is not a plain identifier`,
				`clickhouse: CLICKHOUSE_CLUSTER "a-b"`,
				"clickhouse: CLICKHOUSE_QUERY_TIMEOUT must be positive",
			},
		},
		{
			name: "a mounted secret's trailing newline is trimmed",
			env: map[string]string{
				"ADMIN_TOKEN": "plain-token\n", "KEY_PEPPER_FILE": pepperFile, "CLICKHOUSE_PASSWORD": "pw\n", "ADMIN_ADDR": " 127.0.0.1:9\n",
			},
			check: func(t *testing.T, c Config) {
				if len(c.AdminTokens) != 1 || c.AdminTokens[0].Token != "plain-token" || c.KeyPepper != "file-pepper" ||
					c.ClickHouse.Password != "pw" || c.Addr != "127.0.0.1:9" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name:    "token file lines counted from the top of the file",
			env:     map[string]string{"ADMIN_TOKEN_FILE": badLineFile},
			wantErr: []string{"server: ADMIN_TOKEN_FILE line 4 is not name:token"},
		},
		{
			name:    "pepper set twice",
			env:     map[string]string{"ADMIN_TOKEN": "t", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": pepperFile},
			wantErr: []string{"set KEY_PEPPER or KEY_PEPPER_FILE, not both"},
		},
		{
			name:    "whitespace in token",
			env:     map[string]string{"ADMIN_TOKEN": "two words"},
			wantErr: []string{`admin token "admin" contains whitespace`},
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

func TestLoadClient(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	if err := os.WriteFile(file, []byte("alice:alice-token\nbob:bob-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		env       map[string]string
		wantURL   string
		wantToken string
		wantErr   string
	}{
		{name: "defaults", env: map[string]string{}, wantURL: "http://127.0.0.1:8081"},
		{name: "url and token", env: map[string]string{"ADMIN_URL": "https://admin.example.com/", "ADMIN_TOKEN": "tok"}, wantURL: "https://admin.example.com", wantToken: "tok"},
		{name: "first token of a file", env: map[string]string{"ADMIN_TOKEN_FILE": file}, wantURL: "http://127.0.0.1:8081", wantToken: "alice-token"},
		{name: "bad url", env: map[string]string{"ADMIN_URL": "127.0.0.1:8081"}, wantErr: "is not an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadClient(env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadClient error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.URL != tt.wantURL || c.Token != tt.wantToken {
				t.Errorf("LoadClient = %+v, %v", c, err)
			}
		})
	}
}
