package logging_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/qyai/qyai/pkg/logging"
)

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    slog.Level
		wantErr bool
	}{
		{in: "", want: slog.LevelInfo},
		{in: "debug", want: slog.LevelDebug},
		{in: "INFO", want: slog.LevelInfo},
		{in: " Warn\n", want: slog.LevelWarn},
		{in: "error", want: slog.LevelError},
		{in: "loud", want: slog.LevelInfo, wantErr: true},
		{in: "warning", want: slog.LevelInfo, wantErr: true},
		{in: "debug-4", want: slog.LevelInfo, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := logging.ParseLevel(tt.in)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("ParseLevel(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
			if err != nil && err.Error() != fmt.Sprintf("%q is not one of debug, info, warn, error", tt.in) {
				t.Errorf("error %q", err)
			}
		})
	}
}

func TestNew(t *testing.T) {
	var buf bytes.Buffer
	log := logging.New(&buf, "meter", slog.LevelWarn)
	log.Info("dropped")
	log.Warn("kept", "n", 1)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one record (info is below warn), got %q", buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("record is not JSON: %v: %q", err, lines[0])
	}
	if rec["service"] != "meter" || rec["msg"] != "kept" || rec["level"] != "WARN" || rec["n"] != 1.0 {
		t.Errorf("record = %v", rec)
	}
}

func TestReport(t *testing.T) {
	joined := fmt.Errorf("invalid configuration: %w", errors.Join(
		errors.New(`REDIS_TIMEOUT: "soon" is not a duration`), errors.New("keys: KEY_PEPPER is empty")))
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "nil", err: nil, want: ""},
		{name: "one error", err: errors.New("listen on :80: permission denied"), want: "gateway: listen on :80: permission denied\n"},
		{name: "joined errors on one line", err: joined,
			want: "gateway: invalid configuration: REDIS_TIMEOUT: \"soon\" is not a duration; keys: KEY_PEPPER is empty\n"},
		{name: "reported already", err: logging.Reported(errors.New("flag provided but not defined: -x")), want: ""},
		{name: "reported, wrapped", err: fmt.Errorf("cli: %w", logging.Reported(errors.New("x"))), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			logging.Report(&buf, "gateway", tt.err)
			if buf.String() != tt.want {
				t.Errorf("Report wrote %q, want %q", buf.String(), tt.want)
			}
		})
	}
}

func TestReported(t *testing.T) {
	if logging.Reported(nil) != nil {
		t.Error("Reported(nil) is not nil")
	}
	err := logging.Reported(flag.ErrHelp)
	if !errors.Is(err, flag.ErrHelp) || err.Error() != flag.ErrHelp.Error() {
		t.Errorf("Reported hides the error: %v", err)
	}
}
