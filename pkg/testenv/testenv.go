// Package testenv starts the real servers QYAI depends on (Redis, NATS JetStream,
// ClickHouse) on free loopback ports for integration tests, and stops them when the
// test ends, passed or failed.
//
// Redis and ClickHouse run as processes through the scripts in deploy/local, the same
// ones `make run` uses; NATS runs embedded in the test binary (NATS), or as a process
// for end-to-end tests (NATSProcess). A server that cannot start fails the test with
// the tail of its log: a suite that silently skips is a defect, so nothing here ever
// calls t.Skip. Install the servers with deploy/local/install.sh.
//
// Every Server can be stopped and started again on the same port with the same data
// directory, for fault-injection tests:
//
//	nc := testenv.NATS(t)
//	nc.Stop(t)
//	// ... the gateway spools events while NATS is down ...
//	nc.Start(t) // same URL, JetStream streams and messages kept
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const installHint = "install the servers with deploy/local/install.sh"

// scriptTimeout bounds one run of a deploy/local script; the scripts have their own
// readiness deadlines (ClickHouse 30 s, the others 10 s) well below it.
const scriptTimeout = 90 * time.Second

// Server is one running (or stopped) server owned by a test.
type Server struct {
	// Name is "redis", "clickhouse", "nats" or "nats-process".
	Name string
	// Addr is host:port of the main protocol (RESP, ClickHouse native, NATS).
	Addr string
	// URL is the client URL: nats://host:port for NATS, redis://host:port for Redis,
	// clickhouse://host:port for ClickHouse.
	URL string
	// HTTPAddr is host:port of the HTTP interface: ClickHouse's HTTP port, or the
	// NATS monitoring port (/healthz, /jsz); empty for Redis.
	HTTPAddr string
	// Dir is the data directory; it outlives Stop and is removed after the test.
	Dir string

	mu      sync.Mutex
	running bool
	port    int
	http    int
	script  string   // deploy/local script for process servers
	env     []string // extra environment for the script
	nats    *embeddedNATS
}

// Port returns the port of the main protocol.
func (s *Server) Port() int { return s.port }

// Running reports whether the server was started and not stopped since.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// RepoRoot returns the repository root: the nearest directory at or above the working
// directory that holds go.work.
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return root
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("find repository root: no go.work at or above %s", wd)
		}
	}
}

// Redis starts a Redis server (deploy/local/redis.sh) on a free port with a fresh data
// directory, without persistence: its data does not survive Stop (use RedisPersistent
// for that). It is stopped when the test ends.
func Redis(t testing.TB) *Server {
	t.Helper()
	return startProcess(t, "redis", "redis.sh", nil)
}

// RedisPersistent is Redis with an append-only file, so that keys written before Stop
// are there again after Start, as with a production Redis.
func RedisPersistent(t testing.TB) *Server {
	t.Helper()
	return startProcess(t, "redis", "redis.sh", []string{"REDIS_PERSIST=1"})
}

// ClickHouse starts a ClickHouse server (deploy/local/clickhouse.sh) on free native
// and HTTP ports with a fresh data directory. Connect with clickhouse-go v2.26.0 over
// the native protocol at Addr (see DESIGN.md: newer clients cannot insert into 18.16).
// It is stopped when the test ends.
func ClickHouse(t testing.TB) *Server {
	t.Helper()
	return startProcess(t, "clickhouse", "clickhouse.sh", nil)
}

// NATSProcess starts a real nats-server process with JetStream (deploy/local/nats.sh,
// binary <repo>/.bin/nats-server), for end-to-end tests that run the service binaries.
// Unit and integration tests use the faster embedded NATS. It is stopped when the
// test ends.
func NATSProcess(t testing.TB) *Server {
	t.Helper()
	return startProcess(t, "nats-process", "nats.sh", nil)
}

// Start starts a stopped server again on the same port(s) with the same data.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return
	}
	var err error
	if s.nats != nil {
		err = s.nats.start(s.port, s.http)
	} else {
		ports := []string{strconv.Itoa(s.port)}
		if s.http != 0 {
			ports = append(ports, strconv.Itoa(s.http))
		}
		err = s.runScript("start", ports...)
	}
	if err != nil {
		t.Fatalf("testenv: restart %s on port %d: %v", s.Name, s.port, err)
	}
	s.running = true
}

// Stop stops the server and keeps its data directory and port for Start.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return nil
	}
	if s.nats != nil {
		s.nats.stop()
	} else if err := s.runScript("stop"); err != nil {
		return fmt.Errorf("stop %s: %w", s.Name, err)
	}
	s.running = false
	return nil
}

// startProcess starts a server through a deploy/local script and registers its stop.
func startProcess(t testing.TB, name, script string, env []string) *Server {
	t.Helper()
	s := &Server{
		Name:   name,
		Dir:    t.TempDir(),
		script: filepath.Join(RepoRoot(t), "deploy", "local", script),
		env:    env,
	}
	start := time.Now()
	if err := s.runScript("start"); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	s.running = true
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	var err error
	if s.port, err = readPort(s.Dir, "port"); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	if name != "redis" {
		if s.http, err = readPort(s.Dir, "http_port"); err != nil {
			t.Fatalf("testenv: start %s: %v", name, err)
		}
		s.HTTPAddr = hostPort(s.http)
	}
	s.Addr = hostPort(s.port)
	switch name {
	case "redis":
		s.URL = "redis://" + s.Addr
	case "clickhouse":
		s.URL = "clickhouse://" + s.Addr
	default:
		s.URL = "nats://" + s.Addr
	}
	t.Logf("testenv: %s on %s in %v", name, s.Addr, time.Since(start).Round(time.Millisecond))
	return s
}

// runScript runs "<script> <cmd> <dir> [ports...]". QYAI_OWNER_PID makes the script
// leave a watchdog that stops the server if this test binary dies without cleaning up
// (a test timeout, Ctrl-C, kill -9).
func (s *Server) runScript(cmd string, ports ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	args := append([]string{s.script, cmd, s.Dir}, ports...)
	c := exec.CommandContext(ctx, "bash", args...)
	c.Env = append(os.Environ(), "QYAI_OWNER_PID="+strconv.Itoa(os.Getpid()))
	c.Env = append(c.Env, s.env...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	// The script detaches the server; should anything still hold its output open,
	// do not wait for it forever.
	c.WaitDelay = 5 * time.Second
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (timed out after %v)", err, scriptTimeout)
		}
		return fmt.Errorf("%s %s %s: %w\n%s\n(%s)", filepath.Base(s.script), cmd, s.Dir, err, msg, installHint)
	}
	return nil
}

func readPort(dir, file string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, fmt.Errorf("read port: %w", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read port from %s: %w", file, err)
	}
	return port, nil
}

func hostPort(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
