// Package runcheck tests how a service's Run reports start-up problems:
// the error it returns, and what it wrote to stderr (one line per reported
// error, nothing said twice).
package runcheck

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// Case is one start of the service.
type Case struct {
	Name     string
	Args     []string
	Env      map[string]string // values of the variables Test sets; unset ones are empty
	WantErr  bool
	WantLine string   // the whole of stderr, when set
	WantIn   []string // each in stderr exactly once
	NotIn    []string // none in stderr
}

// Test runs every case as a subtest: it sets each variable of vars from the
// case's Env (t.Setenv, so the cases do not run in parallel), calls run
// with the case's arguments and a stderr buffer, and checks the error and
// stderr.
func Test(t *testing.T, vars []string, cases []Case, run func(ctx context.Context, args []string, stderr io.Writer) error) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			for _, k := range vars {
				t.Setenv(k, tc.Env[k])
			}
			var stderr bytes.Buffer
			err := run(t.Context(), tc.Args, &stderr)
			if (err != nil) != tc.WantErr {
				t.Fatalf("Run %v = %v; stderr %q", tc.Args, err, stderr.String())
			}
			if tc.WantLine != "" && stderr.String() != tc.WantLine {
				t.Errorf("stderr\n%q\nwant\n%q", stderr.String(), tc.WantLine)
			}
			for _, w := range tc.WantIn {
				if strings.Count(stderr.String(), w) != 1 {
					t.Errorf("stderr %q does not hold %q once", stderr.String(), w)
				}
			}
			for _, w := range tc.NotIn {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q holds %q", stderr.String(), w)
				}
			}
		})
	}
}
