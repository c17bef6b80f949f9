package app

import (
	"context"
	"io"
	"testing"

	"github.com/qyai/qyai/testkit/runcheck"
)

// TestRunReportsErrorsOnce: Run writes the error it returns to stderr once,
// on one line that lists every configuration problem; errors the flag set
// or the CLI printed already are not repeated; main only exits.
func TestRunReportsErrorsOnce(t *testing.T) {
	const everyProblem = `admin: invalid configuration: set KEY_PEPPER or KEY_PEPPER_FILE, not both; ` +
		`REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
		`server: an admin token is required: set ADMIN_TOKEN, ADMIN_TOKENS or ADMIN_TOKEN_FILE; ` +
		`server: LOG_LEVEL "loud" is not one of debug, info, warn, error` + "\n"
	cases := []runcheck.Case{
		{
			Name: "every configuration problem on one line",
			Args: []string{"--validate"},
			Env: map[string]string{
				"REDIS_TIMEOUT": "soon", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			WantErr:  true,
			WantLine: everyProblem,
		},
		{
			Name: "the same through serve",
			Args: []string{"serve", "--validate"},
			Env: map[string]string{
				"REDIS_TIMEOUT": "soon", "LOG_LEVEL": "loud", "KEY_PEPPER": "p", "KEY_PEPPER_FILE": "/nonexistent",
			},
			WantErr:  true,
			WantLine: everyProblem,
		},
		{Name: "CLI configuration", Args: []string{"keys", "list"}, Env: map[string]string{"REDIS_TIMEOUT": "soon", "ADMIN_URL": "nope"},
			WantErr: true, WantLine: `admin: invalid configuration: REDIS_TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s); ` +
				`cli: ADMIN_URL "nope" is not an http(s) URL` + "\n"},
		{Name: "valid", Args: []string{"--validate"}, Env: map[string]string{"ADMIN_TOKEN": "tok\n", "QYAI_DEV": "1"},
			WantIn: []string{"admin: configuration is valid\n"}},
		{Name: "unexpected argument", Args: []string{"serve", "extra"}, Env: map[string]string{"ADMIN_TOKEN": "tok"},
			WantErr: true, WantLine: "admin: unexpected argument \"extra\"\n"},
		{Name: "unknown flag printed once, by the flag set", Args: []string{"--nope"}, WantErr: true,
			WantIn: []string{"flag provided but not defined: -nope", "check the configuration and exit"}, NotIn: []string{"admin: flag"}},
		{Name: "CLI error printed once, by the CLI", Args: []string{"keys", "rotate"}, Env: map[string]string{"ADMIN_TOKEN": "tok"},
			WantErr: true, WantIn: []string{"takes 1 argument"}},
	}
	runcheck.Test(t, []string{"REDIS_TIMEOUT", "LOG_LEVEL", "KEY_PEPPER", "KEY_PEPPER_FILE", "QYAI_DEV", "ADMIN_TOKEN", "ADMIN_TOKENS", "ADMIN_TOKEN_FILE", "ADMIN_URL"}, cases, func(ctx context.Context, args []string, stderr io.Writer) error {
		return Run(ctx, args, io.Discard, stderr)
	})
}
