// Package cli is the operators' command line of the admin binary: key
// management and the finance report through the admin HTTP API (ADMIN_URL,
// ADMIN_TOKEN), and rebuild-redis, which restores the key records in Redis
// from the audit log in ClickHouse directly. Output is a human table, or
// the API's JSON with --json (CSV with usage --csv).
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/qyai/qyai/admin/internal/config"
)

// Usage is the help text of the admin binary.
const Usage = `usage:
  admin [serve] [--validate]          run the admin server (configuration from the environment)
  admin keys create --name NAME --tier basic|pro|enterprise [--rpm N] [--monthly-limit N] [--models a,b]
  admin keys list
  admin keys get ID
  admin keys update ID [--name NAME] [--tier TIER] [--rpm N] [--monthly-limit N] [--models a,b]
  admin keys disable ID | enable ID
  admin keys rotate ID
  admin keys revoke ID
  admin keys rebuild-redis             restore key records in Redis from the audit log (ClickHouse)
  admin migrate                       apply the ClickHouse migrations and exit (CLICKHOUSE_*)
  admin usage [--key ID] [--from YYYY-MM-DD] [--to YYYY-MM-DD] [--group-by day|model|key] [--csv]

Every command but serve takes --json for machine-readable output. Commands talk to
the admin API at ADMIN_URL (default http://127.0.0.1:8081) with ADMIN_TOKEN;
rebuild-redis uses REDIS_ADDR and CLICKHOUSE_* instead, migrate CLICKHOUSE_* only.
`

// ErrUsage means the command line was wrong; the usage was printed.
var ErrUsage = errors.New("invalid command line")

// Run runs one command; args start with the command ("keys", "usage").
func Run(ctx context.Context, args []string, cfg config.Client, stdout, stderr io.Writer) error {
	r := &runner{cfg: cfg, out: stdout, errw: stderr, http: &http.Client{Timeout: 60 * time.Second}, now: time.Now}
	err := r.run(ctx, args)
	// Messages to stderr: a failed write there has nowhere to be reported.
	switch {
	case errors.Is(err, ErrUsage):
		_, _ = fmt.Fprintf(stderr, "admin: %v\n%s", err, Usage)
	case errors.Is(err, flag.ErrHelp):
		_, _ = fmt.Fprint(stderr, Usage)
		return nil
	case err != nil:
		_, _ = fmt.Fprintf(stderr, "admin: %v\n", err)
	}
	return err
}

type runner struct {
	cfg  config.Client
	out  io.Writer
	errw io.Writer
	http *http.Client
	now  func() time.Time
}

func (r *runner) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", ErrUsage)
	}
	switch args[0] {
	case "usage":
		return r.usage(ctx, args[1:])
	case "migrate":
		return r.migrate(ctx, args[1:])
	case "keys":
		if len(args) < 2 {
			return fmt.Errorf("%w: keys needs a subcommand", ErrUsage)
		}
		rest := args[2:]
		switch args[1] {
		case "create":
			return r.create(ctx, rest)
		case "list":
			return r.list(ctx, rest)
		case "get":
			return r.simple(ctx, "keys get", rest, http.MethodGet, "")
		case "update":
			return r.update(ctx, rest)
		case "disable":
			return r.simple(ctx, "keys disable", rest, http.MethodPost, "/disable")
		case "enable":
			return r.simple(ctx, "keys enable", rest, http.MethodPost, "/enable")
		case "rotate":
			return r.simple(ctx, "keys rotate", rest, http.MethodPost, "/rotate")
		case "revoke":
			return r.revoke(ctx, rest)
		case "rebuild-redis":
			return r.rebuildRedis(ctx, rest)
		}
	}
	return fmt.Errorf("%w: unknown command %q", ErrUsage, strings.Join(args[:min(2, len(args))], " "))
}

// flags is a flag set with --json; parse accepts flags before, between
// and after positional arguments.
type flags struct {
	*flag.FlagSet
	json *bool
}

func newFlags(name string, stderr io.Writer) flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return flags{FlagSet: fs, json: fs.Bool("json", false, "print the API's JSON")}
}

func (f flags) parse(args []string, positional int) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrUsage, err)
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != positional {
		return nil, fmt.Errorf("%w: %s takes %d argument(s), got %d", ErrUsage, f.Name(), positional, len(pos))
	}
	return pos, nil
}

// set reports whether the named flag was given.
func (f flags) set(name string) bool {
	found := false
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			found = true
		}
	})
	return found
}

// apiError is the OpenAI-shaped error body of the admin API.
type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
	} `json:"error"`
}

// call sends one admin API request and returns the body of a 2xx answer.
func (r *runner) call(ctx context.Context, method, path string, body any, accept string) ([]byte, error) {
	if r.cfg.Token == "" {
		return nil, errors.New("ADMIN_TOKEN is not set")
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.cfg.URL+path, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("call admin API: %w", err)
	}
	defer func() { _ = resp.Body.Close() }() // read-only: closing it loses nothing
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read admin API answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			msg := fmt.Sprintf("admin API: %d %s: %s", resp.StatusCode, e.Error.Type, e.Error.Message)
			if e.Error.Param != nil && *e.Error.Param != "" {
				msg += " (param " + *e.Error.Param + ")"
			}
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("admin API: %s", resp.Status)
	}
	return b, nil
}

func keyPath(id string) string { return "/admin/v1/keys/" + url.PathEscape(id) }

// printJSON writes an API answer as it came, one line.
func (r *runner) printJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return fmt.Errorf("admin API answered invalid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := r.out.Write(buf.Bytes())
	return err
}
