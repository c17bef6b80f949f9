package app

import (
	"testing"

	"github.com/qyai/qyai/testkit/runcheck"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem; main only exits.
func TestRunReportsErrorsOnce(t *testing.T) {
	cases := []runcheck.Case{
		{
			Name: "every configuration problem on one line",
			Args: []string{"--validate"},
			Env: map[string]string{
				"REDIS_TIMEOUT": "soon", "UPSTREAM_RETRIES": "two", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			WantErr: true,
			WantLine: `gateway: invalid configuration: REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`set KEY_PEPPER or KEY_PEPPER_FILE, not both; UPSTREAM_RETRIES: "two" is not an integer; ` +
				`server: LOG_LEVEL "loud" is not one of debug, info, warn, error` + "\n",
		},
		{Name: "valid", Args: []string{"--validate"}, Env: map[string]string{"QYAI_DEV": "1"}, WantIn: []string{"gateway: configuration is valid\n"}},
		{Name: "unknown flag printed once, by the flag set", Args: []string{"--nope"}, WantErr: true,
			WantIn: []string{"flag provided but not defined: -nope", "-validate"}, NotIn: []string{"gateway: flag"}},
		{Name: "help is no error", Args: []string{"-h"}, WantIn: []string{"-validate"}},
	}
	runcheck.Test(t, []string{"REDIS_TIMEOUT", "UPSTREAM_RETRIES", "LOG_LEVEL", "KEY_PEPPER", "KEY_PEPPER_FILE", "QYAI_DEV"}, cases, Run)
}
