// Package envconfig reads configuration from environment variables the one
// way every QYAI service does, so that the services cannot drift apart.
//
// A Reader looks variables up through a function (os.LookupEnv in
// production, a map in tests), trims surrounding whitespace from every value
// (a secret mounted from a file or a Kubernetes Secret often ends in a
// newline), treats an empty value as unset (the default applies), and
// collects every problem instead of stopping at the first: Err joins them
// all, so that an operator fixes a configuration in one round.
//
// Secrets come from the variable itself or from the file its <NAME>_FILE
// variable names, never from both. Problems with a secret name the
// variable and the file, never the secret.
package envconfig

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FileSuffix is appended to a secret's name to form the variable that names
// a file holding the secret: KEY_PEPPER_FILE for KEY_PEPPER.
const FileSuffix = "_FILE"

// Lookup returns the value of an environment variable and whether it is
// set, like os.LookupEnv.
type Lookup func(name string) (string, bool)

// Getenv adapts a function in the style of os.Getenv to a Lookup. Nothing is
// lost: a Reader treats an empty variable as an unset one anyway.
func Getenv(getenv func(string) string) Lookup {
	return func(name string) (string, bool) {
		v := getenv(name)
		return v, v != ""
	}
}

// Map is a Lookup over a fixed set of variables (tests, embedders).
func Map(m map[string]string) Lookup {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// Reader reads variables and collects the problems it finds. Its methods
// return the default (or the zero value) for a variable they cannot use, so
// that a caller can read everything first and look at Err once.
type Reader struct {
	lookup Lookup
	errs   []error
}

// New returns a Reader that looks variables up with lookup.
func New(lookup Lookup) *Reader {
	return &Reader{lookup: lookup}
}

// Err returns every problem found so far, joined with errors.Join (one per
// line), or nil.
func (r *Reader) Err() error {
	return errors.Join(r.errs...)
}

// Problems returns how many problems were found so far.
func (r *Reader) Problems() int { return len(r.errs) }

// Errorf records a problem the caller found itself (a list of the wrong
// length, a value out of range), so that Err reports it with the others.
func (r *Reader) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// value returns the trimmed value of name; "" when unset or blank.
func (r *Reader) value(name string) string {
	v, ok := r.lookup(name)
	if !ok {
		return ""
	}
	return strings.TrimSpace(v)
}

// String returns the trimmed value of name, or def when it is unset or
// blank.
func (r *Reader) String(name, def string) string {
	if v := r.value(name); v != "" {
		return v
	}
	return def
}

// Int returns name as a decimal integer, or def when it is unset. A value
// that is not an integer is a problem (and def is returned).
func (r *Reader) Int(name string, def int) int {
	v := r.value(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.Errorf("%s: %q is not an integer", name, v)
		return def
	}
	return n
}

// Duration returns name as a Go duration ("50ms", "2s", "1m30s"), or def
// when it is unset. A value that is not a duration is a problem (and def is
// returned); a bare number is one too, since its unit would be a guess.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := r.value(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.Errorf("%s: %q is not a duration (e.g. 50ms, 2s)", name, v)
		return def
	}
	return d
}

// Bool returns name as a boolean (true, false, 1, 0, t, f in any case), or
// def when it is unset. Anything else is a problem (and def is returned).
func (r *Reader) Bool(name string, def bool) bool {
	v := r.value(name)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.Errorf("%s: %q is not a boolean (true or false)", name, v)
		return def
	}
	return b
}

// List returns name split by Split, or a copy of def when the variable is
// unset or blank. A value of only commas and spaces is set: it yields an
// empty list, which the caller's validation can reject.
func (r *Reader) List(name string, def []string) []string {
	v := r.value(name)
	if v == "" {
		return slices.Clone(def)
	}
	return Split(v)
}

// Split splits s on commas, trims every item and drops empty ones: "a, b,,"
// is [a b]. It returns nil for a blank s.
func Split(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// Secret returns the secret name: the trimmed value of the variable name,
// or the trimmed contents of the file that name+"_FILE" names, or def when
// neither is set. Setting both, a file that cannot be read and a file that
// holds nothing but whitespace are problems (and def is returned, as for
// any value that cannot be used).
func (r *Reader) Secret(name, def string) string {
	if v, _, st := r.secret(name); st == secretSet {
		return strings.TrimSpace(v)
	}
	return def
}

// RequiredSecret is Secret for a secret without a default: when neither
// name nor name+"_FILE" is set, that is a problem too.
func (r *Reader) RequiredSecret(name string) string {
	v, _, st := r.secret(name)
	if st == secretUnset {
		r.Errorf("%s is required: set %s or %s%s", name, name, name, FileSuffix)
	}
	return strings.TrimSpace(v)
}

// SecretSource is Secret for a secret whose file has a format of its own
// (admin's token file holds one named token per line): it says whether the
// value came from the file, and returns the file's contents as they are,
// since that format decides what its whitespace means (and its line
// numbers must stay true). The value of the variable is trimmed as always.
// It returns "" when neither variable is set, or on a problem.
func (r *Reader) SecretSource(name string) (value string, fromFile bool) {
	v, fromFile, _ := r.secret(name)
	return v, fromFile
}

type secretState int

const (
	secretUnset secretState = iota
	secretSet
	secretBad // set, but unusable; the problem is recorded
)

// secret reads name or name_FILE; value is "" unless the state is
// secretSet, and the contents of the file are not trimmed.
func (r *Reader) secret(name string) (value string, fromFile bool, st secretState) {
	fileVar := name + FileSuffix
	v, path := r.value(name), r.value(fileVar)
	switch {
	case v != "" && path != "":
		r.Errorf("set %s or %s, not both", name, fileVar)
		return "", false, secretBad
	case v != "":
		return v, false, secretSet
	case path == "":
		return "", false, secretUnset
	}
	b, err := os.ReadFile(path)
	if err != nil {
		// The error names the path, which is not secret; the contents are.
		r.Errorf("read %s: %w", fileVar, err)
		return "", true, secretBad
	}
	if strings.TrimSpace(string(b)) == "" {
		r.Errorf("%s: %s is empty", fileVar, path)
		return "", true, secretBad
	}
	return string(b), true, secretSet
}
