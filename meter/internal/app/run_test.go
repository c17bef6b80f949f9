package app

import (
	"bytes"
	"strings"
	"testing"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem, parsing and
// validation alike; main only exits.
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
				"METER_BATCH_MAX_AGE": "soon", "LOG_LEVEL": "loud", "STREAM_REPLICAS": "0",
				"CLICKHOUSE_PASSWORD": "p", "CLICKHOUSE_PASSWORD_FILE": "/nonexistent",
			},
			wantErr: true,
			wantLine: `meter: invalid configuration: LOG_LEVEL: "loud" is not one of debug, info, warn, error; ` +
				`set CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE, not both; ` +
				`METER_BATCH_MAX_AGE: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`nats: STREAM_REPLICAS 0: want 1..5 (3 in a cluster)` + "\n",
		},
		{name: "valid", args: []string{"--validate"}, wantIn: []string{"meter: configuration is valid\n"}},
		{name: "unknown flag printed once, by the flag set", args: []string{"--nope"}, wantErr: true,
			wantIn: []string{"flag provided but not defined: -nope", "-validate"}, notIn: []string{"meter: flag"}},
		{name: "help is no error", args: []string{"-h"}, wantIn: []string{"-validate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"METER_BATCH_MAX_AGE", "LOG_LEVEL", "STREAM_REPLICAS", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_PASSWORD_FILE"} {
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
