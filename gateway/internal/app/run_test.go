package app

import (
	"bytes"
	"strings"
	"testing"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem; main only exits.
func TestRunReportsErrorsOnce(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantErr  bool
		wantLine string   // the whole of stderr, for a reported error
		wantIn   []string // in stderr otherwise
		notIn    []string
	}{
		{
			name: "every configuration problem on one line",
			args: []string{"--validate"},
			env: map[string]string{
				"REDIS_TIMEOUT": "soon", "UPSTREAM_RETRIES": "two", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			wantErr: true,
			wantLine: `gateway: invalid configuration: REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`set KEY_PEPPER or KEY_PEPPER_FILE, not both; UPSTREAM_RETRIES: "two" is not an integer; ` +
				`server: LOG_LEVEL "loud" is not one of debug, info, warn, error` + "\n",
		},
		{name: "valid", args: []string{"--validate"}, env: map[string]string{"QYAI_DEV": "1"}, wantIn: []string{"gateway: configuration is valid\n"}},
		{name: "unknown flag printed once, by the flag set", args: []string{"--nope"}, wantErr: true,
			wantIn: []string{"flag provided but not defined: -nope", "-validate"}, notIn: []string{"gateway: flag"}},
		{name: "help is no error", args: []string{"-h"}, wantIn: []string{"-validate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"REDIS_TIMEOUT", "UPSTREAM_RETRIES", "LOG_LEVEL", "KEY_PEPPER", "KEY_PEPPER_FILE", "QYAI_DEV"} {
				t.Setenv(k, tt.env[k])
			}
			var stderr bytes.Buffer
			err := Run(t.Context(), tt.args, &stderr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Run %v = %v; stderr %q", tt.args, err, stderr.String())
			}
			if tt.wantLine != "" && stderr.String() != tt.wantLine {
				t.Errorf("stderr\n%q\nwant\n%q", stderr.String(), tt.wantLine)
			}
			for _, w := range tt.wantIn {
				if strings.Count(stderr.String(), w) != 1 {
					t.Errorf("stderr %q does not hold %q once", stderr.String(), w)
				}
			}
			for _, w := range tt.notIn {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q holds %q", stderr.String(), w)
				}
			}
		})
	}
}
