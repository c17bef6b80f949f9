// Package logging is how every QYAI service writes to stderr: structured
// JSON records from the logger New returns, at the level LOG_LEVEL names
// (ParseLevel), and, when the service cannot start or stops on an error,
// one plain line saying why (Report).
package logging

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Levels lists the values ParseLevel accepts, as the README documents them.
const Levels = "debug, info, warn, error"

// ParseLevel returns the level s names: debug, info, warn or error, in any
// case and with surrounding whitespace ignored. An empty s is info, the
// default of LOG_LEVEL.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return slog.LevelInfo, fmt.Errorf("%q is not one of %s", s, Levels)
}

// New returns the logger of a service: JSON records on w from level up,
// each with the attribute service=service so that the records of several
// services can share a collector.
func New(w io.Writer, service string, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("service", service)
}

// Reported marks err as already written to stderr (a flag set prints its
// own errors; the admin CLI prints its errors with its usage), so that
// Report does not write it a second time. It returns nil for a nil err.
func Reported(err error) error {
	if err == nil {
		return nil
	}
	return reported{err}
}

type reported struct{ error }

func (r reported) Unwrap() error { return r.error }

// Report writes err to w as the one line "<service>: <error>", unless err is
// nil or was marked with Reported. The problems of a joined error
// (errors.Join puts one per line) are separated by "; ", so that the line
// lists every problem and a log collector keeps it as one record. Each
// service's app.Run reports the error it returns; main only exits.
func Report(w io.Writer, service string, err error) {
	var r reported
	if err == nil || errors.As(err, &r) {
		return
	}
	// The process is about to exit with this error: nowhere is left to report a failed write.
	_, _ = fmt.Fprintf(w, "%s: %s\n", service, strings.ReplaceAll(err.Error(), "\n", "; "))
}
