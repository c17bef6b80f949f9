//go:build linux

package podrun

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// repoRoot is the repository root, from this package's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// podman runs rootful podman with a configuration and storage of its own
// under a temp dir (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF): runc (crun
// fails on these hosts' hybrid cgroups), cgroupfs, file events, explicit
// ulimits (without them runc's setrlimit is refused), vfs storage.
type podman struct{ env []string }

func newPodman(t *testing.T) podman {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs rootful podman and needs root")
	}
	for _, bin := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found (%v): run deploy/local/install.sh images", bin, err)
		}
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "containers.conf")
	storage := filepath.Join(dir, "storage.conf")
	writeFile(t, conf, fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
tmp_dir = %q
`, filepath.Join(dir, "events.log"), filepath.Join(dir, "libpod")))
	writeFile(t, storage, fmt.Sprintf(`[storage]
driver = "vfs"
runroot = %q
graphroot = %q
`, filepath.Join(dir, "run"), filepath.Join(dir, "root")))
	// No `podman system reset` at the end: it would also delete the host's
	// network definitions. Containers run with --rm and vfs mounts nothing,
	// so removing the temp dir removes the rest.
	return podman{env: append(os.Environ(), "CONTAINERS_CONF="+conf, "CONTAINERS_STORAGE_CONF="+storage)}
}

// try runs podman with a deadline of its own, not t.Context(): that one is
// cancelled before the cleanups that stop containers run.
func (p podman) try(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (p podman) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.try(2*time.Minute, args...)
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", redactArgs(args), err, out)
	}
	return out
}

// redactArgs drops --env values from a command line for messages: they may
// hold secrets (none today; the chart mounts them as files).
func redactArgs(args []string) string {
	out := slices.Clone(args)
	for i := range out {
		if i > 0 && out[i-1] == "--env" {
			name, _, _ := strings.Cut(out[i], "=")
			out[i] = name + "=..."
		}
	}
	return strings.Join(out, " ")
}

// stop stops a container (SIGTERM, then SIGKILL after grace) and waits
// until --rm removed it.
func (p podman) stop(t *testing.T, name string, grace time.Duration) {
	t.Helper()
	if out, err := p.try(grace+30*time.Second, "stop", "-t", fmt.Sprint(int(grace.Seconds())), name); err != nil && !strings.Contains(out, "no such container") {
		t.Errorf("podman stop %s: %v\n%s", name, err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.try(10*time.Second, "container", "exists", name); err != nil {
			return // gone
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
	_, _ = p.try(30*time.Second, "rm", "-f", name)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// server is one of Redis, NATS, ClickHouse started by its deploy/local
// script in dir.
type server struct {
	script, dir string
}

// startServer starts deploy/local/<name>.sh in dir (ports: given, or free
// ones) and registers its stop. The scripts' watchdog stops the server when
// this test process is gone (QYAI_OWNER_PID).
func startServer(t *testing.T, root, name, dir string, ports ...string) server {
	t.Helper()
	s := server{script: filepath.Join(root, "deploy", "local", name+".sh"), dir: dir}
	if out, err := s.cmd("start", ports...); err != nil {
		t.Fatalf("%s start: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := s.cmd("stop"); err != nil {
			t.Errorf("%s stop: %v\n%s", name, err, out)
		}
	})
	return s
}

func (s server) cmd(verb string, ports ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.script, append([]string{verb, s.dir}, ports...)...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("QYAI_OWNER_PID=%d", os.Getpid()))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// file reads one of the files the script writes into its dir (port, ...).
func (s server) file(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		t.Fatalf("%s: %v", s.script, err)
	}
	return strings.TrimSpace(string(b))
}

// buildImages builds the three images with tools/images into out and
// returns their archives by service, and their tags.
func buildImages(ctx context.Context, root, out string) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, "go", "run", ".", "-repo", root, "-out", out, "-version", "podrun", "-revision", "podrun")
	cmd.Dir = filepath.Join(root, "tools", "images")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("build the images (tools/images): %w\n%s", err, stderr.String())
	}
	archives := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		svc := strings.TrimSuffix(filepath.Base(f[0]), ".tar")
		archives[svc] = f[0]
	}
	for _, svc := range []string{"gateway", "meter", "admin"} {
		if archives[svc] == "" {
			return nil, fmt.Errorf("tools/images printed no archive of %s:\n%s", svc, b)
		}
	}
	return archives, nil
}

// startSimulator builds deploy/cmd/upstream-sim (in the go.work workspace)
// and starts it on a free port; it dies with the test (Pdeathsig).
func startSimulator(t *testing.T, root, key string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "upstream-sim")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./deploy/cmd/upstream-sim")
	build.Dir = root
	build.Env = append(os.Environ(), "GOWORK=") // the workspace of the repository root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build upstream-sim: %v\n%s", err, out)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SIM_ADDR="+addr, "SIM_API_KEY="+key, "LOG_LEVEL=warn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start upstream-sim: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	url := "http://" + addr
	if err := await(10*time.Second, time.Second, url+"/_sim/healthz"); err != nil {
		t.Fatalf("upstream-sim not healthy: %v\n%s", err, logs.String())
	}
	return url
}

// await GETs url until it answers 2xx (each try bounded by each), or the
// budget is spent.
func await(budget, each time.Duration, url string) error {
	client := &http.Client{Timeout: each}
	deadline := time.Now().Add(budget)
	var last error
	for {
		resp, err := client.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: no 2xx within %s (last: %w)", url, budget, last)
		}
		time.Sleep(200 * time.Millisecond) // polling with a deadline
	}
}
