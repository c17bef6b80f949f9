package app

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem; errors the flag set
// or the CLI printed already are not repeated; main only exits.
func TestRunReportsErrorsOnce(t *testing.T) {
	const everyProblem = `admin: invalid configuration: set KEY_PEPPER or KEY_PEPPER_FILE, not both; ` +
		`REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
		`server: an admin token is required: set ADMIN_TOKEN, ADMIN_TOKENS or ADMIN_TOKEN_FILE; ` +
		`server: LOG_LEVEL "loud" is not one of debug, info, warn, error` + "\n"
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
				"REDIS_TIMEOUT": "soon", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			wantErr:  true,
			wantLine: everyProblem,
		},
		{
			name: "the same through serve",
			args: []string{"serve", "--validate"},
			env: map[string]string{
				"REDIS_TIMEOUT": "soon", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			wantErr:  true,
			wantLine: everyProblem,
		},
		{name: "CLI configuration", args: []string{"keys", "list"}, env: map[string]string{"REDIS_TIMEOUT": "soon", "ADMIN_URL": "nope"},
			wantErr: true, wantLine: `admin: invalid configuration: REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`cli: ADMIN_URL "nope" is not an http(s) URL` + "\n"},
		{name: "valid", args: []string{"--validate"}, env: map[string]string{"ADMIN_TOKEN": "tok\n", "QYAI_DEV": "1"},
			wantIn: []string{"admin: configuration is valid\n"}},
		{name: "unexpected argument", args: []string{"serve", "extra"}, env: map[string]string{"ADMIN_TOKEN": "tok"},
			wantErr: true, wantLine: "admin: unexpected argument \"extra\"\n"},
		{name: "unknown flag printed once, by the flag set", args: []string{"--nope"}, wantErr: true,
			wantIn: []string{"flag provided but not defined: -nope", "check the configuration and exit"}, notIn: []string{"admin: flag"}},
		{name: "CLI error printed once, by the CLI", args: []string{"keys", "rotate"}, env: map[string]string{"ADMIN_TOKEN": "tok"},
			wantErr: true, wantIn: []string{"takes 1 argument"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"REDIS_TIMEOUT", "LOG_LEVEL", "KEY_PEPPER", "KEY_PEPPER_FILE", "QYAI_DEV", "ADMIN_TOKEN", "ADMIN_TOKENS", "ADMIN_TOKEN_FILE", "ADMIN_URL"} {
				t.Setenv(k, tt.env[k])
			}
			var stderr bytes.Buffer
			err := Run(t.Context(), tt.args, io.Discard, &stderr)
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
