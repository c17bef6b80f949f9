package app

import (
	"testing"

	"github.com/qyai/qyai/testkit/runcheck"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem, parsing and
// validation alike; main only exits.
func TestRunReportsErrorsOnce(t *testing.T) {
	cases := []runcheck.Case{
		{
			Name: "every configuration problem on one line",
			Args: []string{"--validate"},
			Env: map[string]string{
				"METER_BATCH_MAX_AGE": "soon", "LOG_LEVEL": "loud", "STREAM_REPLICAS": "0",
				"CLICKHOUSE_PASSWORD": "p", "CLICKHOUSE_PASSWORD_FILE": "/nonexistent",
			},
			WantErr: true,
			WantLine: `meter: invalid configuration: LOG_LEVEL: "loud" is not one of debug, info, warn, error; ` +
				`set CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE, not both; ` +
				`METER_BATCH_MAX_AGE: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`nats: STREAM_REPLICAS 0: want 1..5 (3 in a cluster)` + "\n",
		},
		{Name: "valid", Args: []string{"--validate"}, WantIn: []string{"meter: configuration is valid\n"}},
		{Name: "unknown flag printed once, by the flag set", Args: []string{"--nope"}, WantErr: true,
			WantIn: []string{"flag provided but not defined: -nope", "-validate"}, NotIn: []string{"meter: flag"}},
		{Name: "help is no error", Args: []string{"-h"}, WantIn: []string{"-validate"}},
	}
	runcheck.Test(t, []string{"METER_BATCH_MAX_AGE", "LOG_LEVEL", "STREAM_REPLICAS", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_PASSWORD_FILE"}, cases, Run)
}
