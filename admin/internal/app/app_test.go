package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/admin/internal/config"
	"github.com/qyai/qyai/testkit/logbuf"
)

func TestValidateFlag(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr bool
		wantOut string
	}{
		{"valid", map[string]string{"ADMIN_TOKEN": "tok", "KEY_PEPPER": "a-real-pepper"}, false, "configuration is valid"},
		{"valid in dev mode", map[string]string{"ADMIN_TOKEN": "tok", "KEY_PEPPER": "", "QYAI_DEV": "1"}, false, "configuration is valid"},
		{"no pepper", map[string]string{"ADMIN_TOKEN": "tok", "KEY_PEPPER": "", "QYAI_DEV": ""}, true, "KEY_PEPPER is required"},
		{"invalid", map[string]string{"ADMIN_TOKEN": "", "REDIS_TIMEOUT": "0s"}, true, "REDIS_TIMEOUT must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			for _, args := range [][]string{{"--validate"}, {"serve", "--validate"}} {
				var out bytes.Buffer
				err := Run(t.Context(), args, io.Discard, &out)
				if (err != nil) != tt.wantErr || !strings.Contains(out.String(), tt.wantOut) {
					t.Errorf("Run %v = %v, output %q", args, err, out.String())
				}
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	t.Setenv("ADMIN_TOKEN", "tok")
	tests := []struct {
		name       string
		args       []string
		wantErr    bool
		wantOut    string // in stdout
		wantErrOut string // in stderr
	}{
		{name: "help", args: []string{"help"}, wantOut: "admin keys rebuild-redis"},
		{name: "-h", args: []string{"-h"}, wantErrOut: "-validate"},
		{name: "unknown command", args: []string{"frobnicate"}, wantErr: true, wantErrOut: "usage:"},
		{name: "keys without a subcommand", args: []string{"keys"}, wantErr: true, wantErrOut: "usage:"},
		{name: "rotate without an id", args: []string{"keys", "rotate"}, wantErr: true, wantErrOut: "takes 1 argument"},
		{name: "unknown flag", args: []string{"keys", "list", "--nope"}, wantErr: true, wantErrOut: "flag provided but not defined"},
		{name: "serve with an argument", args: []string{"serve", "extra"}, wantErr: true, wantErrOut: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Run(t.Context(), tt.args, &out, &errOut)
			if (err != nil) != tt.wantErr || !strings.Contains(out.String(), tt.wantOut) || !strings.Contains(errOut.String(), tt.wantErrOut) {
				t.Errorf("Run %v = %v\nstdout %q\nstderr %q", tt.args, err, out.String(), errOut.String())
			}
		})
	}
}

// TestServeBeforeClickHouse starts admin while ClickHouse is down: keys work,
// billing answers 503 and readiness says why; once ClickHouse comes up the
// schema is applied in the background and everything is ready. Then a
// cancelled context shuts the server down cleanly.
func TestServeBeforeClickHouse(t *testing.T) {
	rs, cs := scripts.Redis(t), scripts.ClickHouse(t)
	cs.Stop(t)
	const token = "app-test-admin-token"
	cfg, err := config.Load(func(k string) string {
		return map[string]string{
			"ADMIN_ADDR": "127.0.0.1:0", "ADMIN_TOKEN": token, "REDIS_ADDR": rs.Addr, "REDIS_TIMEOUT": "2s", "QYAI_DEV": "1",
			"CLICKHOUSE_ADDR": cs.Addr, "LOG_LEVEL": "debug",
		}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ready)
	}()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr.String()
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}

	call := func(method, path, auth, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	if code, b := call("GET", "/healthz", "", ""); code != http.StatusOK {
		t.Fatalf("healthz: %d %s", code, b)
	}
	code, b := call("GET", "/readyz", "", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(b), `"redis":"ok"`) {
		t.Fatalf("readyz without clickhouse: %d %s", code, b)
	}
	code, b = call("POST", "/admin/v1/keys", "Bearer "+token, `{"name":"early","tier":"basic"}`)
	if code != http.StatusCreated {
		t.Fatalf("create key without clickhouse: %d %s", code, b)
	}
	var created struct{ Key string }
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatal(err)
	}
	if code, b := call("GET", "/v1/dashboard/billing/usage", "Bearer "+created.Key, ""); code != http.StatusServiceUnavailable {
		t.Fatalf("billing without clickhouse: %d %s", code, b)
	}

	cs.Start(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, b = call("GET", "/readyz", "", "")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready 60 s after clickhouse started: %d %s", code, b)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
	code, b = call("GET", "/v1/dashboard/billing/usage", "Bearer "+created.Key, "")
	if code != http.StatusOK || !strings.Contains(string(b), `"monthly_requests":0`) {
		t.Fatalf("billing after clickhouse started: %d %s", code, b)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not stop after its context was cancelled")
	}

	out := logs.String()
	for _, secret := range []string{created.Key, token, cfg.KeyPepper} {
		if strings.Contains(out, secret) {
			t.Errorf("logs contain a secret %q...", secret[:4])
		}
	}
	for _, want := range []string{"KEY_PEPPER is not set", "clickhouse not ready, retrying", "clickhouse schema ready", "admin stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}
