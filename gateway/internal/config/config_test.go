package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.Addr != "127.0.0.1:8080" || c.Upstream.BaseURL != "https://api.deepseek.com" || c.RedisTimeout != 50*time.Millisecond {
				t.Errorf("unexpected defaults: %+v", c)
			}
		}},
		{name: "trailing slash trimmed", env: map[string]string{"UPSTREAM_BASE_URL": "http://127.0.0.1:8090/"}, check: func(t *testing.T, c Config) {
			if c.Upstream.BaseURL != "http://127.0.0.1:8090" {
				t.Errorf("base url %q", c.Upstream.BaseURL)
			}
		}},
		{name: "every problem reported", env: map[string]string{
			"REDIS_TIMEOUT": "soon", "MAX_BODY_BYTES": "12", "UPSTREAM_BASE_URL": "ftp://x", "STREAM_REPLICAS": "9",
		}, wantErr: []string{"REDIS_TIMEOUT", "MAX_BODY_BYTES", "UPSTREAM_BASE_URL", "STREAM_REPLICAS"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(func(k string) string { return tc.env[k] })
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
