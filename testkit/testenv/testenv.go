// Package testenv starts the real servers QYAI depends on (Redis, NATS JetStream,
// ClickHouse) on free loopback ports for integration tests, and stops them when the
// test ends, passed or failed.
//
// The servers run as processes through the scripts in deploy/local, the same ones
// `make run` uses. A test package names that directory explicitly, relative to its
// own directory (go test runs a test binary there), and starts servers from it:
//
//	const scripts testenv.Scripts = "../../../deploy/local"
//
//	rdb := scripts.Redis(t)
//
// Nothing walks the file system to find the repository. NATS can also run embedded
// in the test binary (package embednats, the only package of the kit that links
// nats-server), through Custom. A server that cannot start fails the test with the
// tail of its log: a suite that silently skips is a defect, so nothing here ever
// calls t.Skip. Install the servers with deploy/local/install.sh.
//
// Every Server can be stopped and started again on the same port with the same data
// directory, for fault-injection tests:
//
//	nc := scripts.NATSProcess(t)
//	nc.Stop(t)
//	// ... the gateway spools events while NATS is down ...
//	nc.Start(t) // same URL, JetStream streams and messages kept
//
// This module is test support: only _test.go files and the simulator's command
// import it (the lint gate's depguard rules check that).
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
// readiness deadlines (Redis 60 s, to load a large append-only file; ClickHouse 30 s;
// NATS 10 s) below it.
const scriptTimeout = 90 * time.Second

// Server is one running (or stopped) server owned by a test.
type Server struct {
	// Name is "redis", "clickhouse", "nats-process", or a Custom server's name.
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
	script  string     // deploy/local script for process servers
	env     []string   // extra environment for the script
	ctl     Controller // set for Custom servers instead of script
}

// Scripts is the directory that holds the deploy/local scripts, as a path relative
// to the test's working directory (its package directory) or absolute.
type Scripts string

// Controller starts and stops a server that does not run through a script (an
// embedded one). Start must bring it up on the same ports, over the same data,
// after the first time.
type Controller interface {
	// Start starts the server and returns its main and HTTP ports (0: none).
	Start() (port, httpPort int, err error)
	// Stop stops it; its data stays for the next Start.
	Stop() error
}

// Custom registers a server run by ctl, already started by the caller on port and
// httpPort, with data in dir; scheme makes its URL (scheme://host:port). It is
// stopped when the test ends.
func Custom(t testing.TB, name, scheme, dir string, port, httpPort int, ctl Controller) *Server {
	t.Helper()
	s := &Server{Name: name, Dir: dir, ctl: ctl, running: true, port: port, http: httpPort}
	s.Addr = hostPort(port)
	s.URL = scheme + "://" + s.Addr
	if httpPort != 0 {
		s.HTTPAddr = hostPort(httpPort)
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return s
}

// Port returns the port of the main protocol.
func (s *Server) Port() int { return s.port }

// Running reports whether the server was started and not stopped since.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Redis starts a Redis server (deploy/local/redis.sh) on a free port with a fresh data
// directory, without persistence: its data does not survive Stop (use RedisPersistent
// for that). It is stopped when the test ends.
func (d Scripts) Redis(t testing.TB) *Server {
	t.Helper()
	return d.startProcess(t, "redis", "redis.sh", nil)
}

// RedisPersistent is Redis with an append-only file, so that keys written before Stop
// are there again after Start, as with a production Redis.
func (d Scripts) RedisPersistent(t testing.TB) *Server {
	t.Helper()
	return d.startProcess(t, "redis", "redis.sh", []string{"REDIS_PERSIST=1"})
}

// ClickHouse starts a ClickHouse server (deploy/local/clickhouse.sh) on free native
// and HTTP ports with a fresh data directory. Connect with clickhouse-go v2.26.0 over
// the native protocol at Addr (see DESIGN.md: newer clients cannot insert into 18.16).
// It is stopped when the test ends.
func (d Scripts) ClickHouse(t testing.TB) *Server {
	t.Helper()
	return d.startProcess(t, "clickhouse", "clickhouse.sh", nil)
}

// NATSProcess starts a real nats-server process with JetStream (deploy/local/nats.sh,
// binary <repo>/.bin/nats-server). Tests that need many fast restarts can use the
// embedded server of package embednats instead. It is stopped when the test ends.
func (d Scripts) NATSProcess(t testing.TB) *Server {
	t.Helper()
	return d.startProcess(t, "nats-process", "nats.sh", nil)
}

// NATSProcessConfig is NATSProcess with the server config file configFile
// (NATS_CONFIG, passed to nats-server as -c): authorization, accounts, tls.
// The script's command-line flags (loopback listen, ports, JetStream and its
// store directory) override the file's.
func (d Scripts) NATSProcessConfig(t testing.TB, configFile string) *Server {
	t.Helper()
	abs, err := filepath.Abs(configFile)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return d.startProcess(t, "nats-process", "nats.sh", []string{"NATS_CONFIG=" + abs})
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
	if s.ctl != nil {
		_, _, err = s.ctl.Start()
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
	if s.ctl != nil {
		if err := s.ctl.Stop(); err != nil {
			return fmt.Errorf("stop %s: %w", s.Name, err)
		}
	} else if err := s.runScript("stop"); err != nil {
		return fmt.Errorf("stop %s: %w", s.Name, err)
	}
	s.running = false
	return nil
}

// startProcess starts a server through a deploy/local script and registers its stop.
func (d Scripts) startProcess(t testing.TB, name, script string, env []string) *Server {
	t.Helper()
	if d == "" {
		t.Fatal("testenv: no scripts directory (declare const scripts testenv.Scripts = \"<relative path>/deploy/local\")")
	}
	path, err := filepath.Abs(filepath.Join(string(d), script))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("testenv: scripts directory %s: %v", d, err)
	}
	s := &Server{
		Name:   name,
		Dir:    t.TempDir(),
		script: path,
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
