//go:build linux

package podrun

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/qyai/qyai/tools/helmtest"
)

// stack is the rendered chart and what runs it.
type stack struct {
	pm         podman
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	gateway    *appsv1.StatefulSet
	meter      *appsv1.Deployment
	admin      *appsv1.Deployment
	migrate    *batchv1.Job
	files      string            // configMap and secret volumes
	claims     map[string]string // the gateway's volumeClaimTemplates
	ports      map[int32]int32   // container port -> host port, all pods
}

// TestChartPodsUnderPodman runs the images under podman with exactly the
// container specs the chart renders (see Translate), against real Redis,
// NATS and ClickHouse and the upstream simulator: the migrations Job, then
// admin, meter and gateway, each until its declared probes pass. Then the
// usage of N requests must be billed exactly, and M more sent while NATS is
// down must be spooled on the gateway's volume and billed exactly once
// after a new gateway container starts on the same volume.
func TestChartPodsUnderPodman(t *testing.T) {
	pm := newPodman(t)
	root := repoRoot(t)
	base := t.TempDir() // before the cleanups that stop what lives in it

	// The image build is the slow part: it runs while the servers start.
	type built struct {
		archives map[string]string
		err      error
	}
	images := make(chan built, 1)
	go func() {
		a, err := buildImages(t.Context(), root, filepath.Join(base, "images"))
		images <- built{a, err}
	}()
	redis := startServer(t, root, "redis", filepath.Join(base, "redis"))
	nats := startServer(t, root, "nats", filepath.Join(base, "nats"))
	ch := startServer(t, root, "clickhouse", filepath.Join(base, "clickhouse"))
	simKey := "sk-sim-" + randomHex(t, 8)
	simURL := startSimulator(t, root, simKey)
	b := <-images
	if b.err != nil {
		t.Fatal(b.err)
	}
	for _, svc := range []string{"gateway", "meter", "admin"} {
		pm.run(t, "load", "-q", "-i", b.archives[svc])
	}

	adminToken := randomHex(t, 24)
	vals := map[string]any{
		"image":      map[string]any{"repository": "qyai", "tag": "podrun"},
		"redis":      map[string]any{"addresses": []any{"127.0.0.1:" + redis.file(t, "port")}},
		"nats":       map[string]any{"urls": []any{"nats://127.0.0.1:" + nats.file(t, "port")}},
		"clickhouse": map[string]any{"address": "127.0.0.1:" + ch.file(t, "port")},
		"upstream":   map[string]any{"baseURLs": []any{simURL}},
		"secrets": map[string]any{
			"keyPepper":      randomHex(t, 24),
			"adminTokens":    "podrun:" + adminToken,
			"upstreamApiKey": simKey,
		},
		"gateway": map[string]any{"replicas": 1},
		"meter":   map[string]any{"replicas": 1},
		"admin":   map[string]any{"replicas": 1},
	}
	s := renderStack(t, vals)
	s.pm = pm
	s.files = filepath.Join(base, "volumes")
	s.claims = map[string]string{}
	for _, c := range s.gateway.Spec.VolumeClaimTemplates {
		s.claims[c.Name] = claimDir(t, filepath.Join(base, "claims", c.Name), s.gateway.Spec.Template.Spec.SecurityContext)
	}

	s.runJob(t, s.migrate)
	s.start(t, s.admin.Name+"-0", s.admin.Spec.Template.Spec)
	s.start(t, s.meter.Name+"-0", s.meter.Spec.Template.Spec)
	gatewayPod := s.gateway.Name + "-0"
	s.start(t, gatewayPod, s.gateway.Spec.Template.Spec)

	adminURL := fmt.Sprintf("http://127.0.0.1:%d", s.ports[8081])
	gatewayURL := fmt.Sprintf("http://127.0.0.1:%d", s.ports[8080])
	keyID, key := createKey(t, adminURL, adminToken)

	const n, m = 20, 10
	var want usage
	for i := range n {
		want = want.add(chat(t, gatewayURL, key, i))
	}
	awaitBilled(t, adminURL, adminToken, keyID, want)
	billedN := want

	// NATS down: the gateway answers and spools the usage on its volume.
	if out, err := nats.cmd("stop"); err != nil {
		t.Fatalf("nats stop: %v\n%s", err, out)
	}
	for i := range m {
		want = want.add(chat(t, gatewayURL, key, n+i))
	}
	grace := time.Duration(*s.gateway.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	pm.stop(t, gatewayPod, grace)
	// Only the spool holds the M events now: nothing more can be billed.
	if got := billed(t, adminURL, adminToken, keyID); got != billedN {
		t.Fatalf("with NATS down, billed %+v, want still %+v", got, billedN)
	}
	if spooled := dirBytes(t, s.claims["spool"]); spooled == 0 {
		t.Fatal("the gateway stopped with NATS down and left nothing in its spool volume")
	}
	if out, err := nats.cmd("start", nats.file(t, "port"), nats.file(t, "http_port")); err != nil {
		t.Fatalf("nats start again: %v\n%s", err, out)
	}
	s.start(t, gatewayPod, s.gateway.Spec.Template.Spec)
	awaitBilled(t, adminURL, adminToken, keyID, want)
}

// renderStack renders the chart with vals and picks out the workloads, the
// ConfigMaps and the Secrets.
func renderStack(t *testing.T, vals map[string]any) *stack {
	t.Helper()
	c, err := helmtest.Load(filepath.Join(repoRoot(t), "helm", "qyai"))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := helmtest.Render(c, vals)
	if err != nil {
		t.Fatalf("render the chart: %v", err)
	}
	s := &stack{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, ports: map[int32]int32{}}
	d := helmtest.NewDecoder()
	for _, mf := range ms {
		o, err := d.Decode(mf)
		if err != nil {
			t.Fatal(err)
		}
		switch obj := o.Obj.(type) {
		case *corev1.ConfigMap:
			s.configMaps[obj.Name] = obj
		case *corev1.Secret:
			s.secrets[obj.Name] = obj
		case *appsv1.StatefulSet:
			s.gateway = obj
		case *appsv1.Deployment:
			switch {
			case strings.HasSuffix(obj.Name, "-meter"):
				s.meter = obj
			case strings.HasSuffix(obj.Name, "-admin"):
				s.admin = obj
			}
		case *batchv1.Job:
			s.migrate = obj
		}
	}
	if s.gateway == nil || s.meter == nil || s.admin == nil || s.migrate == nil {
		t.Fatalf("the render lacks a workload: gateway %v, meter %v, admin %v, migrations Job %v",
			s.gateway != nil, s.meter != nil, s.admin != nil, s.migrate != nil)
	}
	// Every container port gets a free host port (host networking).
	for _, spec := range []corev1.PodSpec{s.gateway.Spec.Template.Spec, s.meter.Spec.Template.Spec, s.admin.Spec.Template.Spec} {
		for _, c := range spec.Containers {
			for _, p := range c.Ports {
				if _, dup := s.ports[p.ContainerPort]; dup {
					t.Fatalf("container port %d is used by two workloads", p.ContainerPort)
				}
				s.ports[p.ContainerPort] = freePort(t)
			}
		}
	}
	return s
}

// claimDir makes the host directory of a PersistentVolumeClaim as the
// kubelet leaves it with an fsGroup: group fsGroup, group-writable, setgid.
func claimDir(t *testing.T, dir string, sc *corev1.PodSecurityContext) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if sc != nil && sc.FSGroup != nil {
		if err := os.Chown(dir, 0, int(*sc.FSGroup)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o775|os.ModeSetgid); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (s *stack) pod(name string, spec corev1.PodSpec, attached bool) Pod {
	return Pod{
		Name: name, Namespace: helmtest.Release, Spec: spec,
		ConfigMaps: s.configMaps, Secrets: s.secrets, Claims: s.claims,
		FilesDir: s.files, Ports: s.ports, Attached: attached,
	}
}

// translate translates a pod and writes its volumes' files.
func (s *stack) translate(t *testing.T, p Pod) Run {
	t.Helper()
	r, err := Translate(p)
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	for _, f := range r.Files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.Path, f.Data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f.Path, os.FileMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f.Path, 0, f.GID); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// runJob runs the Job's container in the foreground: it must exit 0.
func (s *stack) runJob(t *testing.T, j *batchv1.Job) {
	t.Helper()
	r := s.translate(t, s.pod(j.Name, j.Spec.Template.Spec, true))
	out, err := s.pm.try(time.Duration(*j.Spec.ActiveDeadlineSeconds)*time.Second, r.Args...)
	if err != nil {
		t.Fatalf("Job %s: %v\n%s", j.Name, err, out)
	}
	t.Logf("Job %s exited 0", j.Name)
}

// start starts a pod's container and waits for its declared probes, each
// within its budget, as the kubelet runs them.
func (s *stack) start(t *testing.T, name string, spec corev1.PodSpec) {
	t.Helper()
	r := s.translate(t, s.pod(name, spec, false))
	s.pm.run(t, r.Args...)
	grace := 30 * time.Second
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	t.Cleanup(func() { s.pm.stop(t, name, grace) })
	if len(r.Probes) == 0 {
		t.Fatalf("pod %s declares no probes", name)
	}
	for _, p := range r.Probes {
		if err := await(p.Budget, p.Each, p.URL); err != nil {
			logs, _ := s.pm.try(30*time.Second, "logs", name)
			t.Fatalf("pod %s: %s probe: %v\n%s", name, p.Kind, err, logs)
		}
	}
	t.Logf("pod %s: probes pass", name)
}

// createKey creates an API key through the admin API.
func createKey(t *testing.T, adminURL, token string) (id, key string) {
	t.Helper()
	var out struct{ ID, Key string }
	call(t, http.MethodPost, adminURL+"/admin/v1/keys", token, `{"name":"podrun","tier":"enterprise"}`, &out)
	if out.ID == "" || out.Key == "" {
		t.Fatal("key creation answered no id or key")
	}
	return out.ID, out.Key
}

func call(t *testing.T, method, url, bearer, body string, into any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, req.URL.Path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s: %s", method, req.URL.Path, resp.Status, b)
	}
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatalf("%s %s: %v", method, req.URL.Path, err)
	}
}

// usage is what is billed: requests and token sums.
type usage struct {
	Requests         uint64 `json:"requests"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
}

func (u usage) add(o usage) usage {
	return usage{u.Requests + o.Requests, u.PromptTokens + o.PromptTokens, u.CompletionTokens + o.CompletionTokens}
}

// chat sends chat completion i (odd ones streamed) through the gateway and
// returns the usage it reported.
func chat(t *testing.T, gatewayURL, key string, i int) usage {
	t.Helper()
	stream := i%2 == 1
	body, err := json.Marshal(map[string]any{
		"model":          "deepseek-v4-flash",
		"messages":       []map[string]string{{"role": "user", "content": strings.Repeat("count with me ", 1+i%5)}},
		"max_tokens":     3 + i%7,
		"stream":         stream,
		"stream_options": map[string]any{"include_usage": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("chat %d: %v", i, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("chat %d: read: %v", i, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat %d: %s: %s", i, resp.Status, b)
	}
	type withUsage struct {
		Usage *usage `json:"usage"`
	}
	var got *usage
	if !stream {
		var r withUsage
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("chat %d: %v", i, err)
		}
		got = r.Usage
	} else {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var r withUsage
			if err := json.Unmarshal([]byte(data), &r); err != nil {
				t.Fatalf("chat %d: chunk: %v", i, err)
			}
			if r.Usage != nil {
				got = r.Usage
			}
		}
	}
	if got == nil || got.CompletionTokens == 0 {
		t.Fatalf("chat %d (stream %v): no usage in the answer", i, stream)
	}
	got.Requests = 1
	return *got
}

// billed is the usage admin's report shows for the key.
func billed(t *testing.T, adminURL, token, keyID string) usage {
	t.Helper()
	var rep struct {
		Data []struct {
			KeyID *string `json:"key_id"`
			usage
		} `json:"data"`
	}
	call(t, http.MethodGet, adminURL+"/admin/v1/usage?group_by=key&key_id="+keyID, token, "", &rep)
	var got usage
	for _, r := range rep.Data {
		got = got.add(r.usage)
	}
	return got
}

// awaitBilled polls admin's usage report of the key until it shows exactly
// want; more than want (a duplicate) fails at once.
func awaitBilled(t *testing.T, adminURL, token, keyID string, want usage) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := billed(t, adminURL, token, keyID)
		if got == want {
			t.Logf("billed exactly: %+v", got)
			return
		}
		if got.Requests > want.Requests || got.PromptTokens > want.PromptTokens || got.CompletionTokens > want.CompletionTokens {
			t.Fatalf("billed %+v, more than the gateway answered (%+v): duplicates", got, want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("billed %+v after 60 s, want exactly %+v", got, want)
		}
		time.Sleep(250 * time.Millisecond) // polling with a deadline
	}
}

// dirBytes is the size of the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
