package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qyai/qyai/testkit/testenv"
)

// binaries builds the service binaries once per test binary.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "qyai-e2e-bin-")
	if err != nil {
		return "", err
	}
	root, err := findRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"./gateway/cmd/gateway", "./meter/cmd/meter", "./admin/cmd/admin", "./deploy/cmd/upstream-sim")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return dir, nil
})

func findRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("no go.work above the working directory")
		}
		d = p
	}
}

func binary(t *testing.T, name string) string {
	t.Helper()
	dir, err := buildOnce()
	if err != nil {
		t.Fatalf("build binaries: %v", err)
	}
	return filepath.Join(dir, name)
}

// proc is a service started as a real process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startProc runs a binary with env; its output goes to a log file that is
// printed when the test fails. It is stopped with SIGTERM at cleanup.
func startProc(t *testing.T, name string, env map[string]string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t, name), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(p.done) }() // the log is read by name
	t.Cleanup(func() {
		p.stop(t, syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s log (tail) ----\n%s", name, tail(string(b), 3000))
		}
	})
	return p
}

// stop signals the process and waits for it to exit.
func (p *proc) stop(t *testing.T, sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 30s of %v", p.name, sig)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// waitHTTP polls url until it answers 200 or the deadline passes.
func waitHTTP(t *testing.T, p *proc, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it became ready", p.name)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready at %s within 60s", p.name, url)
}

// stack is the whole system, every part a real process except NATS when
// embedded is asked for.
type stack struct {
	redis, clickhouse, nats *testenv.Server
	sim, meter, admin       *proc
	gateways                []*proc
	gatewayEnvs             []map[string]string
	simURL, adminURL        string
	gatewayURLs             []string
	adminToken              string
	env                     map[string]string
}

func startStack(t *testing.T, gateways int) *stack {
	t.Helper()
	return startStackEnv(t, gateways, nil)
}

// startStackEnv is startStack with extra environment for every service.
func startStackEnv(t *testing.T, gateways int, extra map[string]string) *stack {
	t.Helper()
	s := &stack{adminToken: "e2e-admin-token"}
	s.redis = scripts.Redis(t)
	s.clickhouse = scripts.ClickHouse(t)
	s.nats = scripts.NATSProcess(t)

	simAddr := freeAddr(t)
	s.simURL = "http://" + simAddr
	s.sim = startProc(t, "upstream-sim", map[string]string{"SIM_ADDR": simAddr, "SIM_API_KEY": "sk-upstream-e2e"})
	waitHTTP(t, s.sim, s.simURL+"/_sim/healthz")

	adminAddr := freeAddr(t)
	meterAddr := freeAddr(t)
	s.adminURL = "http://" + adminAddr
	s.env = map[string]string{
		"REDIS_ADDR":          s.redis.Addr,
		"NATS_URL":            s.nats.URL,
		"CLICKHOUSE_ADDR":     s.clickhouse.Addr,
		"CLICKHOUSE_DATABASE": "qyai",
		"KEY_PEPPER":          "e2e-pepper",
		"ADMIN_TOKEN":         s.adminToken,
		"ADMIN_ADDR":          adminAddr,
		"ADMIN_URL":           s.adminURL,
		"METER_ADDR":          meterAddr,
		"METER_BATCH_MAX_AGE": "100ms",
		"UPSTREAM_BASE_URL":   s.simURL,
		"UPSTREAM_API_KEY":    "sk-upstream-e2e",
		// Short, so that the 504 case of the conformance suite is quick.
		"UPSTREAM_FIRST_BYTE_TIMEOUT": "3s",
		"LOG_LEVEL":                   "info",
	}
	for k, v := range extra {
		s.env[k] = v
	}
	s.meter = startProc(t, "meter", s.env)
	s.admin = startProc(t, "admin", s.env)
	for i := range gateways {
		addr := freeAddr(t)
		env := clone(s.env)
		env["GATEWAY_ADDR"] = addr
		// Each gateway's internal metrics listener on a port of its own.
		env["GATEWAY_METRICS_ADDR"] = freeAddr(t)
		env["GATEWAY_INSTANCE"] = fmt.Sprintf("gw-%d", i)
		// Each gateway spools to its own directory, and a spool of an
		// earlier run can never leak into this run's totals.
		env["SPOOL_DIR"] = filepath.Join(t.TempDir(), fmt.Sprintf("spool-%d", i))
		g := startProc(t, "gateway", env)
		s.gateways = append(s.gateways, g)
		s.gatewayEnvs = append(s.gatewayEnvs, env)
		s.gatewayURLs = append(s.gatewayURLs, "http://"+addr)
	}
	waitHTTP(t, s.meter, "http://"+meterAddr+"/healthz")
	waitHTTP(t, s.admin, s.adminURL+"/readyz")
	for i, g := range s.gateways {
		waitHTTP(t, g, s.gatewayURLs[i]+"/readyz")
	}
	return s
}

func clone(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// createdKey is admin's answer to POST /admin/v1/keys.
type createdKey struct {
	ID           string   `json:"id"`
	Key          string   `json:"key"`
	KeyPrefix    string   `json:"key_prefix"`
	Name         string   `json:"name"`
	Tier         string   `json:"tier"`
	RPM          int64    `json:"rpm"`
	MonthlyLimit int64    `json:"monthly_limit"`
	Models       []string `json:"models"`
	CreatedAt    string   `json:"created_at"`
}

func (s *stack) createKey(t *testing.T, body string) createdKey {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.adminURL+"/admin/v1/keys", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+s.adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var k createdKey
	var raw bytes.Buffer
	_, _ = raw.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create key: status %d: %s", resp.StatusCode, raw.String())
	}
	if err := json.Unmarshal(raw.Bytes(), &k); err != nil {
		t.Fatalf("create key: %v: %s", err, raw.String())
	}
	return k
}

// simStats reads the simulator's counters.
type simStats struct {
	Requests         uint64 `json:"requests"`
	Completed        uint64 `json:"completed"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CacheHitTokens   uint64 `json:"cache_hit_tokens"`
	CacheMissTokens  uint64 `json:"cache_miss_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
	ReasoningTokens  uint64 `json:"reasoning_tokens"`
}

func (s *stack) simStats(t *testing.T) simStats {
	t.Helper()
	var st simStats
	getJSON(t, s.simURL+"/_sim/stats", "", &st)
	return st
}

func getJSON(t *testing.T, url, bearer string, v any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var raw bytes.Buffer
	_, _ = raw.ReadFrom(resp.Body)
	if err := json.Unmarshal(raw.Bytes(), v); err != nil {
		t.Fatalf("GET %s: status %d, body %q: %v", url, resp.StatusCode, raw.String(), err)
	}
	return resp.StatusCode
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
