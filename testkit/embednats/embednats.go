// Package embednats runs a nats-server with JetStream inside the test binary: ready
// in tens of milliseconds, for tests that start many servers or restart them often.
// It is the only package of the test kit that links nats-server, so modules whose
// tests do not use it do not depend on the server's code.
package embednats

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/qyai/qyai/testkit/testenv"
)

// Start starts an in-process nats-server with JetStream on a free loopback port (the
// nats-server test idiom: Port -1, StoreDir in t.TempDir()). HTTPAddr is its
// monitoring endpoint (/healthz, /jsz). Stop shuts it down as a SIGTERM would; Start
// brings it back on the same port over the same store, so streams, consumers and
// messages survive. It is stopped when the test ends.
func Start(t testing.TB) *testenv.Server {
	t.Helper()
	dir := t.TempDir()
	e := &embeddedNATS{storeDir: dir, port: server.RANDOM_PORT, http: server.RANDOM_PORT}
	begin := time.Now()
	port, httpPort, err := e.Start()
	if err != nil {
		t.Fatalf("embednats: start: %v", err)
	}
	s := testenv.Custom(t, "nats", "nats", dir, port, httpPort, e)
	t.Logf("embednats: nats on %s in %v", s.Addr, time.Since(begin).Round(time.Millisecond))
	return s
}

// embeddedNATS is an in-process nats-server; a restart builds a new server.Server on
// the same store directory.
type embeddedNATS struct {
	storeDir   string
	port, http int // RANDOM_PORT until the first start has bound them
	srv        *server.Server
	logs       *tailLogger
}

// Start implements testenv.Controller.
func (e *embeddedNATS) Start() (port, httpPort int, err error) {
	if err := e.start(e.port, e.http); err != nil {
		return 0, 0, err
	}
	addr, ok := e.srv.Addr().(*net.TCPAddr)
	if !ok {
		e.stop()
		return 0, 0, errors.New("no client listener")
	}
	e.port = addr.Port
	if m := e.srv.MonitorAddr(); m != nil {
		e.http = m.Port
	}
	return e.port, e.http, nil
}

// Stop implements testenv.Controller.
func (e *embeddedNATS) Stop() error {
	e.stop()
	return nil
}

func (e *embeddedNATS) start(port, httpPort int) error {
	opts := &server.Options{
		ServerName: "embednats",
		Host:       "127.0.0.1",
		Port:       port,
		HTTPHost:   "127.0.0.1",
		HTTPPort:   httpPort,
		JetStream:  true,
		StoreDir:   e.storeDir,
		NoSigs:     true,
		// Limits keep several servers per test binary cheap; JetStream otherwise
		// reserves a share of the machine's memory and disk for each.
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  1 << 30,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("new server: %w", err)
	}
	e.logs = &tailLogger{}
	srv.SetLoggerV2(e.logs, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("not ready within 10s on port %d\n%s", port, e.logs.tail())
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return errors.New("JetStream not enabled\n" + e.logs.tail())
	}
	e.srv = srv
	return nil
}

func (e *embeddedNATS) stop() {
	if e.srv == nil {
		return
	}
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.srv = nil
}

// tailLogger keeps the last lines a server logged (notices and above), to explain a
// failed start.
type tailLogger struct {
	mu    sync.Mutex
	lines []string
}

const tailLines = 30

func (l *tailLogger) add(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+fmt.Sprintf(format, v...))
	if len(l.lines) > tailLines {
		l.lines = l.lines[len(l.lines)-tailLines:]
	}
}

func (l *tailLogger) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func (l *tailLogger) Noticef(format string, v ...any) { l.add("[INF]", format, v...) }
func (l *tailLogger) Warnf(format string, v ...any)   { l.add("[WRN]", format, v...) }
func (l *tailLogger) Fatalf(format string, v ...any)  { l.add("[FTL]", format, v...) }
func (l *tailLogger) Errorf(format string, v ...any)  { l.add("[ERR]", format, v...) }
func (l *tailLogger) Debugf(string, ...any)           {}
func (l *tailLogger) Tracef(string, ...any)           {}
