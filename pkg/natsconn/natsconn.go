// Package natsconn holds how gateway and meter authenticate to NATS and secure
// the connection: the NATS_* credential and TLS variables, their validation, and
// the nats.Option values they become. Both services read it with Read, check it
// with Validate and connect with nats.Connect(url, append(cfg.Options(), ...)...),
// so the two can never disagree on what a variable means.
//
// At most one credential method may be set: a user and password, a token, an
// nkey seed file, or a .creds file (JWT plus seed, for operator-mode servers).
// None at all keeps the unauthenticated connection (and credentials embedded in
// NATS_URL, nats://user:pass@host, keep working). TLS is independent of the
// method: a CA file to verify the server, and a client certificate and key for
// servers that verify clients (tls { verify: true }).
package natsconn

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/qyai/qyai/pkg/envconfig"
)

// Config is the NATS authentication and TLS configuration.
type Config struct {
	User     string // NATS_USER
	Password string // NATS_PASSWORD or NATS_PASSWORD_FILE
	Token    string // NATS_TOKEN or NATS_TOKEN_FILE
	// NKeyFile is a file holding an nkey user seed (SU...).
	NKeyFile string // NATS_NKEY_FILE
	// CredsFile is a .creds file (user JWT and nkey seed), as `nsc` writes.
	CredsFile string // NATS_CREDS_FILE
	TLS       TLS
}

// TLS secures the connection. Setting any file turns TLS on.
type TLS struct {
	// CAFile verifies the server's certificate; empty: the system roots.
	CAFile string // NATS_TLS_CA_FILE
	// CertFile and KeyFile are the client certificate, for servers that
	// verify clients; both or neither.
	CertFile string // NATS_TLS_CERT_FILE
	KeyFile  string // NATS_TLS_KEY_FILE
}

// Read reads the variables with r; NATS_PASSWORD and NATS_TOKEN are secrets and
// may instead come from the files NATS_PASSWORD_FILE and NATS_TOKEN_FILE name.
// Problems reading them are recorded in r; call Validate for the rest.
func Read(r *envconfig.Reader) Config {
	return Config{
		User:      r.String("NATS_USER", ""),
		Password:  r.Secret("NATS_PASSWORD", ""),
		Token:     r.Secret("NATS_TOKEN", ""),
		NKeyFile:  r.String("NATS_NKEY_FILE", ""),
		CredsFile: r.String("NATS_CREDS_FILE", ""),
		TLS: TLS{
			CAFile:   r.String("NATS_TLS_CA_FILE", ""),
			CertFile: r.String("NATS_TLS_CERT_FILE", ""),
			KeyFile:  r.String("NATS_TLS_KEY_FILE", ""),
		},
	}
}

// Method names the credential method in use, for logs: "none", "user",
// "token", "nkey" or "creds" (the first one set, if Validate was skipped).
func (c Config) Method() string {
	switch {
	case c.User != "" || c.Password != "":
		return "user"
	case c.Token != "":
		return "token"
	case c.NKeyFile != "":
		return "nkey"
	case c.CredsFile != "":
		return "creds"
	}
	return "none"
}

// Validate reports every problem at once: more than one credential method, a
// user without a password (or the reverse), a certificate without its key (or
// the reverse), and files that cannot be read.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	var methods []string
	if c.User != "" || c.Password != "" {
		methods = append(methods, "NATS_USER/NATS_PASSWORD")
		if c.User == "" {
			add("NATS_PASSWORD is set without NATS_USER")
		}
		if c.Password == "" {
			add("NATS_USER is set without NATS_PASSWORD (or NATS_PASSWORD_FILE)")
		}
	}
	if c.Token != "" {
		methods = append(methods, "NATS_TOKEN")
	}
	if c.NKeyFile != "" {
		methods = append(methods, "NATS_NKEY_FILE")
	}
	if c.CredsFile != "" {
		methods = append(methods, "NATS_CREDS_FILE")
	}
	if len(methods) > 1 {
		add("set one NATS credential method, not %d: %v", len(methods), methods)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together (a client certificate needs its key)")
	}
	for _, f := range []struct{ name, path string }{
		{"NATS_NKEY_FILE", c.NKeyFile},
		{"NATS_CREDS_FILE", c.CredsFile},
		{"NATS_TLS_CA_FILE", c.TLS.CAFile},
		{"NATS_TLS_CERT_FILE", c.TLS.CertFile},
		{"NATS_TLS_KEY_FILE", c.TLS.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			add("%s: %w", f.name, err)
		}
	}
	return errors.Join(errs...)
}

// Options returns the nats.Option values of c, to pass to nats.Connect with
// the caller's own (name, reconnect policy, handlers). It also logs, with
// log, what a connection that retries in the background would otherwise hide:
// failed (re)connect attempts, such as a refused password or a TLS handshake
// error, and asynchronous errors such as permission violations. Call it on a
// validated Config.
func (c Config) Options(log *slog.Logger) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats connect failed", "auth", c.Method(), "err", err)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("nats error", "subject", sub.Subject, "err", err)
				return
			}
			log.Error("nats error", "err", err)
		}),
	}
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY_FILE: %w", err)
		}
		opts = append(opts, o)
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLS.CAFile))
	}
	// RootCAs and ClientCert turn TLS on; the URL may still say nats://.
	if c.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLS.CertFile, c.TLS.KeyFile))
	}
	return opts, nil
}

// ValidateURLs checks a NATS_URL value: one server URL or a comma-separated list
// of them (the servers of one cluster, as nats.Connect takes it: the client picks
// one and fails over to the others, and learns the rest of the cluster from the
// server it reaches). Each entry needs a scheme nats://, tls://, ws:// or wss://
// and a host:port; credentials in an entry (nats://user:pass@host:4222) are fine.
// Every bad entry is reported, with its position.
func ValidateURLs(list string) error {
	if strings.TrimSpace(list) == "" {
		return errors.New("NATS_URL is empty")
	}
	var errs []error
	entries := strings.Split(list, ",")
	for i, raw := range entries {
		raw = strings.TrimSpace(raw)
		where := fmt.Sprintf("NATS_URL %q", raw)
		if len(entries) > 1 {
			where = fmt.Sprintf("NATS_URL entry %d %q", i+1, raw)
		}
		if raw == "" {
			errs = append(errs, fmt.Errorf("%s is empty (a stray comma?)", where))
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: want a URL such as nats://127.0.0.1:4222: %w", where, err))
			continue
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			errs = append(errs, fmt.Errorf("%s: want a URL such as nats://127.0.0.1:4222 (scheme nats, tls, ws or wss)", where))
			continue
		}
		if _, port, err := net.SplitHostPort(u.Host); err != nil || u.Hostname() == "" || port == "" {
			errs = append(errs, fmt.Errorf("%s: want host:port after %s://", where, u.Scheme))
		}
	}
	return errors.Join(errs...)
}

// RedactURLs returns a NATS_URL value fit for a log: the password of every entry
// with credentials (nats://user:pass@host) replaced by "xxxxx", and a token
// (nats://token@host) hidden the same way. Entries that do not parse are replaced
// whole, since they may be anything.
func RedactURLs(list string) string {
	entries := strings.Split(list, ",")
	for i, raw := range entries {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			entries[i] = "<unparsable>"
			continue
		}
		if u.User != nil {
			if _, hasPassword := u.User.Password(); !hasPassword {
				u.User = url.User("xxxxx") // a lone user name is how a token is given
			}
		}
		entries[i] = u.Redacted()
	}
	return strings.Join(entries, ",")
}
