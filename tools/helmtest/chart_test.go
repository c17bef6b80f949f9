package helmtest

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// binDir holds the service binaries buildServices builds; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if binDir, err = os.MkdirTemp("", "helmtest-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(binDir) // a temporary directory: nothing to report
	os.Exit(code)
}

func yamlUnmarshal(s string, v any) error { return yaml.Unmarshal([]byte(s), v) }

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// repo is the repository root, relative to this package's directory.
const repo = "../.."

var chartDir = filepath.Join(repo, "helm", "qyai")

// cases are the renders every test checks: the defaults and each example.
var cases = []struct{ name, file string }{
	{"default", ""},
	{"small", "examples/small.yaml"},
	{"production", "examples/production.yaml"},
}

type render struct {
	vals    map[string]any
	objects []Object
}

func renderCase(t *testing.T, file string, extra map[string]any) render {
	t.Helper()
	c, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{}
	if file != "" {
		if vals, err = ReadValues(filepath.Join(chartDir, file)); err != nil {
			t.Fatal(err)
		}
	}
	vals = Merge(vals, extra)
	ms, err := Render(c, vals)
	if err != nil {
		t.Fatalf("render %s: %v", file, err)
	}
	d := NewDecoder()
	r := render{vals: vals}
	for _, m := range ms {
		o, err := d.Decode(m)
		if err != nil {
			t.Errorf("decode: %v", err)
			continue
		}
		r.objects = append(r.objects, o)
	}
	return r
}

func (r render) find(kind, name string) (Object, bool) {
	for _, o := range r.objects {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

// workload is one pod template with what the checks need to know of it.
type workload struct {
	kind, name  string
	pod         corev1.PodSpec
	annotations map[string]string
	longRunning bool
}

func (r render) workloads() []workload {
	var ws []workload
	for _, o := range r.objects {
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{"Deployment", v.Name, v.Spec.Template.Spec, v.Spec.Template.Annotations, true})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{"StatefulSet", v.Name, v.Spec.Template.Spec, v.Spec.Template.Annotations, true})
		case *batchv1.Job:
			ws = append(ws, workload{"Job", v.Name, v.Spec.Template.Spec, v.Spec.Template.Annotations, false})
		}
	}
	return ws
}

// service is the QYAI service a container runs: its image's last path
// element, without the tag.
func service(c corev1.Container) string {
	img := c.Image[strings.LastIndex(c.Image, "/")+1:]
	name, _, _ := strings.Cut(img, ":")
	return name
}

func TestGolden(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := renderCase(t, tc.file, nil)
			var b bytes.Buffer
			for _, o := range r.objects {
				fmt.Fprintf(&b, "---\n# Source: %s\n%s", o.Source, normalise(o))
			}
			golden := filepath.Join("testdata", tc.name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run: cd tools/helmtest && GOWORK=off go test -run TestGolden -update)", err)
			}
			if !bytes.Equal(want, b.Bytes()) {
				t.Errorf("render of %s differs from %s (run: cd tools/helmtest && GOWORK=off go test -run TestGolden -update, and review the diff)", tc.name, golden)
			}
		})
	}
}

var (
	secretDataLine = regexp.MustCompile(`(?m)^(  [a-z0-9-]+): ".*"$`)
	checksumSecret = regexp.MustCompile(`(checksum/secret): [0-9a-f]{64}`)
)

// normalise keeps secrets out of the golden files, and makes them stable:
// a render without given secrets generates a pepper and an admin token.
func normalise(o Object) []byte {
	y := o.YAML
	if o.Kind == "Secret" {
		y = secretDataLine.ReplaceAll(y, []byte(`$1: REDACTED`))
	}
	return checksumSecret.ReplaceAll(y, []byte(`$1: REDACTED`))
}

// TestClickHouseAddressList: a list of nodes reaches the services as
// CLICKHOUSE_ADDR unchanged.
func TestClickHouseAddressList(t *testing.T) {
	c, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	const list = "ch-0:9000,ch-1:9000,ch-2:9000,ch-3:9000"
	ms, err := Render(c, map[string]any{"clickhouse": map[string]any{"address": list}})
	if err != nil {
		t.Fatalf("render with a ClickHouse address list: %v", err)
	}
	var out strings.Builder
	for _, m := range ms {
		out.Write(m.YAML)
	}
	if !strings.Contains(out.String(), `value: "`+list+`"`) {
		t.Errorf("CLICKHOUSE_ADDR %q not rendered", list)
	}
}

func TestSchemaRefusesWrongValues(t *testing.T) {
	c, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		vals string
		want string
	}{
		{"replicas not a number", `{gateway: {replicas: three}}`, "/gateway/replicas"},
		{"image tag latest", `{image: {tag: latest}}`, "/image/tag"},
		{"both ingress and httpRoute", `{ingress: {enabled: true}, httpRoute: {enabled: true}}`, "allOf"},
		{"unknown key", `{gateway: {replica: 2}}`, "replica"},
		{"unknown top-level key", `{gatway: {}}`, "gatway"},
		{"log level", `{logLevel: loud}`, "/logLevel"},
		{"duration", `{redis: {timeout: soon}}`, "/redis/timeout"},
		{"no redis", `{redis: {addresses: []}}`, "/redis/addresses"},
		{"nats url", `{nats: {urls: ["127.0.0.1:4222"]}}`, "/nats/urls"},
		{"stream replicas", `{nats: {streamReplicas: 7}}`, "/nats/streamReplicas"},
		{"resources without limits", `{meter: {resources: {requests: {cpu: 1, memory: 1Gi}, limits: null}}}`, "/meter/resources"},
		{"auth method", `{nats: {auth: {method: password}}}`, "/nats/auth/method"},
		{"clickhouse address list with an empty entry", `{clickhouse: {address: "a:9000,,b:9000"}}`, "/clickhouse/address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yamlUnmarshal(tc.vals, &vals); err != nil {
				t.Fatal(err)
			}
			_, err := Render(c, vals)
			if err == nil || !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render with %s: %v; want a schema error naming %q", tc.vals, err, tc.want)
			}
		})
	}
}

func TestTemplatesRefuseUnsafeValues(t *testing.T) {
	c, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, vals, want string }{
		{"gateway grace shorter than the drain", `{gateway: {terminationGracePeriodSeconds: 30}}`, "terminationGracePeriodSeconds"},
		{"admin grace shorter than the drain", `{admin: {terminationGracePeriodSeconds: 12}}`, "terminationGracePeriodSeconds"},
		{"clickhouse password missing", `{clickhouse: {usePassword: true}}`, "secrets.clickhousePassword"},
		{"nats password missing", `{nats: {auth: {method: userPassword}}}`, "secrets.natsGatewayPassword"},
		{"nats tls without secret", `{nats: {tls: {enabled: true}}}`, "nats.tls.secretName"},
		{"autoscaling min over max", `{meter: {autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}}}`, "minReplicas"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yamlUnmarshal(tc.vals, &vals); err != nil {
				t.Fatal(err)
			}
			if _, err := Render(c, vals); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render with %s: %v; want an error naming %q", tc.vals, err, tc.want)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := renderCase(t, tc.file, nil)
			ws := r.workloads()
			if len(ws) != 4 {
				t.Fatalf("%d workloads, want gateway, meter, admin and the migrations Job", len(ws))
			}
			for _, w := range ws {
				checkPod(t, w)
			}
			checkSecretsStayInSecrets(t, r)
			for _, o := range r.objects {
				if sa, ok := o.Obj.(*corev1.ServiceAccount); ok && (sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken) {
					t.Errorf("ServiceAccount %s mounts its token", sa.Name)
				}
			}
		})
	}
}

var tagRE = regexp.MustCompile(`^[^:@]+:([A-Za-z0-9_][A-Za-z0-9_.-]*)$`)

func checkPod(t *testing.T, w workload) {
	t.Helper()
	p := w.pod
	where := w.kind + " " + w.name
	if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken is not false", where)
	}
	sc := p.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || ptrIs(sc.RunAsUser, 65532) || ptrIs(sc.RunAsGroup, 65532) || ptrIs(sc.FSGroup, 65532) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot, user, group and fsGroup 65532, seccomp RuntimeDefault", where, sc)
	}
	if len(p.Containers) == 0 {
		t.Fatalf("%s: no containers", where)
	}
	tmp := false
	for _, v := range p.Volumes {
		if v.EmptyDir != nil && v.Name == "tmp" {
			tmp = true
		}
	}
	for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
		cw := where + " container " + c.Name
		if m := tagRE.FindStringSubmatch(c.Image); m == nil || m[1] == "latest" {
			t.Errorf("%s: image %q: want a repository and a tag other than latest", cw, c.Image)
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[res]; !ok {
				t.Errorf("%s: no %s request", cw, res)
			}
			if _, ok := c.Resources.Limits[res]; !ok {
				t.Errorf("%s: no %s limit", cw, res)
			}
		}
		s := c.SecurityContext
		if s == nil || s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation ||
			s.RunAsNonRoot == nil || !*s.RunAsNonRoot || s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
			len(s.Capabilities.Add) > 0 || s.SeccompProfile == nil || s.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: securityContext %+v: want read-only root, no privilege escalation, non-root, capabilities drop ALL, seccomp RuntimeDefault", cw, s)
		}
		mountsTmp := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/tmp" && m.Name == "tmp" })
		if !tmp || !mountsTmp {
			t.Errorf("%s: no emptyDir at /tmp (the root file system is read-only)", cw)
		}
		if !w.longRunning {
			continue
		}
		ports := map[string]bool{}
		for _, cp := range c.Ports {
			ports[cp.Name] = true
		}
		checkProbe := func(kind string, pr *corev1.Probe, path string) {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != path || !ports[pr.HTTPGet.Port.String()] {
				t.Errorf("%s: %s probe %+v: want GET %s on a named container port", cw, kind, pr, path)
			}
		}
		checkProbe("liveness", c.LivenessProbe, "/healthz")
		checkProbe("readiness", c.ReadinessProbe, "/readyz")
		// The drain must fit in the grace period (README, Operations).
		drain := envSeconds(t, c, "SHUTDOWN_TIMEOUT")
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			if c.Lifecycle.PreStop.Sleep == nil {
				t.Errorf("%s: preStop is not a sleep action (the images hold no shell)", cw)
			} else {
				drain += c.Lifecycle.PreStop.Sleep.Seconds
			}
		}
		if p.TerminationGracePeriodSeconds == nil || *p.TerminationGracePeriodSeconds <= drain {
			t.Errorf("%s: terminationGracePeriodSeconds %v not above preStop + SHUTDOWN_TIMEOUT = %d s", cw, p.TerminationGracePeriodSeconds, drain)
		}
		if service(c) == "gateway" && (c.Lifecycle == nil || c.Lifecycle.PreStop == nil) {
			t.Errorf("%s: no preStop: new requests would reach a draining gateway", cw)
		}
	}
	if w.longRunning && (w.annotations["checksum/secret"] == "") {
		t.Errorf("%s: no checksum/secret annotation: pods would not roll on a secret change", where)
	}
}

func ptrIs(p *int64, v int64) bool { return p == nil || *p != v }

// envSeconds is a container's duration variable in seconds ("25s"); 0 when
// unset.
func envSeconds(t *testing.T, c corev1.Container, name string) int64 {
	for _, e := range c.Env {
		if e.Name == name {
			var n int64
			if _, err := fmt.Sscanf(e.Value, "%ds", &n); err != nil {
				t.Errorf("container %s: %s=%q: want whole seconds", c.Name, name, e.Value)
			}
			return n
		}
	}
	return 0
}

var secretLooking = []*regexp.Regexp{
	regexp.MustCompile(`sk-[A-Za-z0-9]{16,}`),
	regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----`),
	regexp.MustCompile(`(?i)(password|passwd|secret|token|pepper|api[_-]?key)\s*[:=]\s*\S{6,}`),
}

// checkSecretsStayInSecrets: no ConfigMap holds a value that looks like a
// secret or is one of the rendered Secrets' values, and no container gets a
// secret as a plain env value (the chart passes them as *_FILE paths).
func checkSecretsStayInSecrets(t *testing.T, r render) {
	t.Helper()
	var secrets []string
	for _, o := range r.objects {
		if s, ok := o.Obj.(*corev1.Secret); ok {
			for _, v := range s.Data {
				if len(v) >= 6 {
					secrets = append(secrets, string(v))
				}
			}
		}
	}
	leaks := func(where, v string) {
		for _, re := range secretLooking {
			if re.MatchString(v) {
				t.Errorf("%s: a secret-looking value (%s)", where, re)
			}
		}
		for _, s := range secrets {
			if strings.Contains(v, s) {
				t.Errorf("%s: holds a value of a Secret", where)
			}
		}
	}
	for _, o := range r.objects {
		if cm, ok := o.Obj.(*corev1.ConfigMap); ok {
			for k, v := range cm.Data {
				leaks("ConfigMap "+cm.Name+" key "+k, v)
			}
		}
	}
	for _, w := range r.workloads() {
		for _, c := range w.pod.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					continue
				}
				leaks(w.name+" env "+e.Name, e.Value)
				if isSecretVar(e.Name) {
					t.Errorf("%s env %s: a secret as a plain value; use %s_FILE", w.name, e.Name, e.Name)
				}
			}
		}
	}
}

func isSecretVar(name string) bool {
	switch name {
	case "KEY_PEPPER", "UPSTREAM_API_KEY", "CLICKHOUSE_PASSWORD", "NATS_PASSWORD", "NATS_TOKEN", "ADMIN_TOKEN", "ADMIN_TOKENS":
		return true
	}
	return false
}

func TestChecksumsRollPods(t *testing.T) {
	base := map[string]any{"secrets": map[string]any{"keyPepper": "pepper-one-0123456789", "adminTokens": "ops:token-one-0123456789"}}
	ann := func(extra map[string]any) map[string]map[string]string {
		r := renderCase(t, "", Merge(base, extra))
		out := map[string]map[string]string{}
		for _, w := range r.workloads() {
			out[w.name] = w.annotations
		}
		return out
	}
	before := ann(nil)
	if again := ann(nil); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Fatalf("two renders of the same values give different checksums: %v, %v", before, again)
	}
	tiers := ann(map[string]any{"admin": map[string]any{"tiers": "tiers:\n  basic: {rpm: 5, monthly_limit: 100, tpm: 0}\n"}})
	if tiers["qyai-admin"]["checksum/config"] == before["qyai-admin"]["checksum/config"] {
		t.Error("a changed tier table leaves admin's checksum/config as it was")
	}
	pepper := ann(map[string]any{"secrets": map[string]any{"keyPepper": "pepper-two-0123456789"}})
	for _, w := range []string{"qyai-gateway", "qyai-admin", "qyai-meter"} {
		if pepper[w]["checksum/secret"] == before[w]["checksum/secret"] {
			t.Errorf("%s: a changed pepper leaves checksum/secret as it was", w)
		}
	}
}

func TestExposure(t *testing.T) {
	t.Run("ingress", func(t *testing.T) {
		r := renderCase(t, "examples/small.yaml", nil)
		if _, ok := r.find("HTTPRoute", "qyai"); ok {
			t.Error("small renders an HTTPRoute too")
		}
		if _, ok := r.find("Ingress", "qyai"); !ok {
			t.Error("small renders no Ingress")
		}
	})
	t.Run("httpRoute", func(t *testing.T) {
		r := renderCase(t, "examples/production.yaml", nil)
		o, ok := r.find("HTTPRoute", "qyai")
		if !ok {
			t.Fatal("production renders no HTTPRoute")
		}
		hr := o.Obj.(*HTTPRoute)
		if len(hr.Spec.Rules) != 1 || hr.Spec.Rules[0].BackendRefs[0].Name != "qyai-gateway" || hr.Spec.Rules[0].Matches[0].Path.Value != "/v1" {
			t.Errorf("HTTPRoute spec %+v: want /v1 to qyai-gateway", hr.Spec)
		}
		if _, ok := r.find("Ingress", "qyai"); ok {
			t.Error("production renders an Ingress too")
		}
	})
	t.Run("gateway spool on a claim per replica", func(t *testing.T) {
		r := renderCase(t, "", nil)
		o, ok := r.find("StatefulSet", "qyai-gateway")
		if !ok {
			t.Fatal("no gateway StatefulSet")
		}
		ss := o.Obj.(*appsv1.StatefulSet)
		if len(ss.Spec.VolumeClaimTemplates) != 1 || ss.Spec.VolumeClaimTemplates[0].Name != "spool" {
			t.Fatalf("volumeClaimTemplates %+v: want one named spool", ss.Spec.VolumeClaimTemplates)
		}
		c := ss.Spec.Template.Spec.Containers[0]
		spool := env(c, "SPOOL_DIR")
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.Name == "spool" && strings.HasPrefix(spool, m.MountPath+"/")
		})
		if !mounted {
			t.Errorf("SPOOL_DIR %q is not a subdirectory of the spool volume's mount", spool)
		}
		if fc := ss.Spec.Template.Spec.SecurityContext.FSGroupChangePolicy; fc == nil || *fc != corev1.FSGroupChangeOnRootMismatch {
			t.Error("fsGroupChangePolicy is not OnRootMismatch (Always makes the spool group-writable, and the gateway refuses it)")
		}
	})
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// The monitoring objects: every alert has a runbook_url whose anchor is a
// heading of docs/runbook.md, and every metric an alert or a dashboard
// panel names is one the services export.
func TestMonitoring(t *testing.T) {
	r := renderCase(t, "examples/production.yaml", nil)
	runbook, err := os.ReadFile(filepath.Join(repo, "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\S+)`).FindAllStringSubmatch(string(runbook), -1) {
		anchors[strings.ToLower(m[1])] = true
	}
	known := exportedMetrics(t)
	checkExpr := func(where, expr string) {
		for _, m := range regexp.MustCompile(`\b(?:qyai|meter)_[a-z_]+`).FindAllString(expr, -1) {
			base := m
			for _, suf := range []string{"_bucket", "_total", "_seconds"} {
				base = strings.TrimSuffix(base, suf)
			}
			if !known[base] {
				t.Errorf("%s: metric %s: no service exports %s", where, m, base)
			}
		}
	}
	o, ok := r.find("PrometheusRule", "qyai")
	if !ok {
		t.Fatal("production renders no PrometheusRule")
	}
	var alerts []string
	for _, g := range o.Obj.(*PrometheusRule).Spec.Groups {
		for _, rule := range g.Rules {
			alerts = append(alerts, rule.Alert)
			url := rule.Annotations["runbook_url"]
			_, anchor, _ := strings.Cut(url, "#")
			if !strings.HasPrefix(url, "https://") || !strings.Contains(url, "docs/runbook.md#") || !anchors[anchor] {
				t.Errorf("alert %s: runbook_url %q: want docs/runbook.md#<a heading of it>", rule.Alert, url)
			}
			if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" {
				t.Errorf("alert %s: no severity or summary", rule.Alert)
			}
			checkExpr("alert "+rule.Alert, rule.Expr)
		}
	}
	for _, want := range []string{"QYAIUsageSpoolGrowing", "QYAIMeterDeadLetters", "QYAIMeterConsumerLag", "QYAIUpstreamCredentialFailures", "QYAIHigh5xxRate", "QYAIHighLatencyP99", "QYAIRedisFallbackActive"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
	for _, sm := range []string{"qyai-gateway", "qyai-meter"} {
		if _, ok := r.find("ServiceMonitor", sm); !ok {
			t.Errorf("no ServiceMonitor %s", sm)
		}
	}
	cmo, ok := r.find("ConfigMap", "qyai-dashboard")
	if !ok {
		t.Fatal("production renders no dashboard")
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr   string `json:"expr"`
				RawSQL string `json:"rawSql"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cmo.Obj.(*corev1.ConfigMap).Data["qyai.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var titles []string
	for _, p := range dash.Panels {
		titles = append(titles, p.Title)
		for _, tg := range p.Targets {
			checkExpr("panel "+p.Title, tg.Expr)
		}
	}
	for _, want := range []string{"Requests", "duration", "first byte", "Tokens by model", "Cost by model", "spool", "lag"} {
		if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("dashboard: no panel about %q (panels %q)", want, titles)
		}
	}
}

// exportedMetrics are the metric names the services register (OpenTelemetry
// instrument names, dots as Prometheus underscores), read from their source.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`"((?:qyai_[a-z_]+)|(?:meter\.[a-z_.]+))"`)
	out := map[string]bool{}
	for _, dir := range []string{"gateway", "meter", "admin", "pkg"} {
		walkGo(t, filepath.Join(repo, dir), func(src []byte) {
			for _, m := range re.FindAllSubmatch(src, -1) {
				out[strings.ReplaceAll(string(m[1]), ".", "_")] = true
			}
		})
	}
	return out
}

func walkGo(t *testing.T, dir string, f func([]byte)) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil {
			f(b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEnvIsWhatTheServicesRead: every variable the chart sets is in the
// README's configuration table for that service, is named in the service's
// (or pkg's) source, and the rendered environment passes the service
// binary's --validate, with the files the chart mounts (Secret items,
// ConfigMaps) laid out in a temporary directory.
func TestEnvIsWhatTheServicesRead(t *testing.T) {
	table := readmeTable(t)
	bins := buildServices(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := renderCase(t, tc.file, nil)
			for _, w := range r.workloads() {
				for _, c := range w.pod.Containers {
					svc := service(c)
					for _, e := range c.Env {
						if !table[e.Name][svc] {
							t.Errorf("%s: %s is not in the README's configuration table for %s", w.name, e.Name, svc)
						}
						if !namedInSource(t, svc, e.Name) {
							t.Errorf("%s: no %s source names %s", w.name, svc, strings.TrimSuffix(e.Name, "_FILE"))
						}
					}
					if !w.longRunning {
						continue // admin migrate: its variables are checked above
					}
					if err := validate(t, r, w, c, bins[svc]); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
}

var sourceCache sync.Map // service -> []byte, all its non-test Go source and pkg's

func namedInSource(t *testing.T, svc, name string) bool {
	t.Helper()
	v, ok := sourceCache.Load(svc)
	if !ok {
		var b bytes.Buffer
		for _, dir := range []string{svc, "pkg"} {
			walkGo(t, filepath.Join(repo, dir), func(src []byte) { b.Write(src) })
		}
		v, _ = sourceCache.LoadOrStore(svc, b.Bytes())
	}
	src := v.([]byte)
	return bytes.Contains(src, []byte(`"`+name+`"`)) || bytes.Contains(src, []byte(`"`+strings.TrimSuffix(name, "_FILE")+`"`))
}

// readmeTable reads README.md's configuration table: variable -> services.
func readmeTable(t *testing.T) map[string]map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	section, _, _ := strings.Cut(after, "\n## ")
	out := map[string]map[string]bool{}
	names := regexp.MustCompile("`([A-Z][A-Z0-9_]+)`")
	for _, line := range strings.Split(section, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 4 || !strings.HasPrefix(line, "| `") {
			continue
		}
		svcs := map[string]bool{}
		for _, s := range strings.Split(cols[2], ",") {
			s = strings.TrimSpace(s)
			if s == "all" {
				svcs["gateway"], svcs["meter"], svcs["admin"] = true, true, true
			}
			svcs[s] = true
		}
		for _, m := range names.FindAllStringSubmatch(cols[1], -1) {
			out[m[1]] = svcs
		}
	}
	if len(out) < 40 {
		t.Fatalf("read %d variables from README.md's configuration table; the table's format changed?", len(out))
	}
	return out
}

// buildServices builds the three service binaries from the repository's
// workspace (the go.work at its root), once per test binary.
var buildServices = func() func(t *testing.T) map[string]string {
	var once sync.Once
	var dir string
	var err error
	return func(t *testing.T) map[string]string {
		t.Helper()
		once.Do(func() {
			dir = binDir
			root, _ := filepath.Abs(repo)
			cmd := exec.Command("go", "build", "-o", dir+"/", "./gateway/cmd/gateway", "./meter/cmd/meter", "./admin/cmd/admin")
			cmd.Dir = root
			// This module runs with GOWORK=off; the services build in the workspace.
			cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
			var out []byte
			if out, err = cmd.CombinedOutput(); err != nil {
				err = fmt.Errorf("go build the services: %w\n%s", err, out)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"gateway": filepath.Join(dir, "gateway"), "meter": filepath.Join(dir, "meter"), "admin": filepath.Join(dir, "admin")}
	}
}()

// placeholder values of the keys an existingSecret holds (examples that
// name one); the chart's own Secret gives its rendered values.
var placeholder = map[string]string{
	"key-pepper":            "placeholder-pepper-0123456789abcdef",
	"admin-tokens":          "ops:placeholder-admin-token-0123456789\n",
	"upstream-api-key":      "sk-placeholder",
	"clickhouse-password":   "placeholder",
	"nats-gateway-password": "placeholder",
	"nats-meter-password":   "placeholder",
	"nats-token":            "placeholder",
	"nats-gateway-creds":    "placeholder",
	"nats-meter-creds":      "placeholder",
	"ca.crt":                "placeholder",
	"tls.crt":               "placeholder",
	"tls.key":               "placeholder",
}

// validate runs bin --validate with c's rendered environment, its mounted
// files laid out under a temporary directory and the paths rewritten there.
func validate(t *testing.T, r render, w workload, c corev1.Container, bin string) error {
	t.Helper()
	root := t.TempDir()
	mounts := map[string]string{} // mount path -> local directory
	for i, m := range c.VolumeMounts {
		local := filepath.Join(root, fmt.Sprint(i))
		if err := os.MkdirAll(local, 0o700); err != nil {
			t.Fatal(err)
		}
		mounts[m.MountPath] = local
		for _, v := range w.pod.Volumes {
			if v.Name != m.Name {
				continue
			}
			files := map[string]string{}
			switch {
			case v.Secret != nil:
				var data map[string][]byte
				if o, ok := r.find("Secret", v.Secret.SecretName); ok {
					data = o.Obj.(*corev1.Secret).Data
				}
				keys := v.Secret.Items
				if len(keys) == 0 { // the whole Secret: an external TLS one
					for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
						keys = append(keys, corev1.KeyToPath{Key: k, Path: k})
					}
				}
				for _, it := range keys {
					val, ok := data[it.Key]
					if !ok {
						if _, chartMade := r.find("Secret", v.Secret.SecretName); chartMade {
							t.Errorf("%s mounts key %s the chart's Secret %s lacks", w.name, it.Key, v.Secret.SecretName)
						}
						val = []byte(placeholder[it.Key])
					}
					files[it.Path] = string(val)
				}
			case v.ConfigMap != nil:
				o, ok := r.find("ConfigMap", v.ConfigMap.Name)
				if !ok {
					t.Errorf("%s mounts ConfigMap %s, which the chart does not render", w.name, v.ConfigMap.Name)
					continue
				}
				files = o.Obj.(*corev1.ConfigMap).Data
			}
			for name, content := range files {
				if err := os.WriteFile(filepath.Join(local, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var envv []string
	for _, e := range c.Env {
		val := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			val = w.name + "-0" // metadata.name of a pod
		}
		best := "" // the longest mount path the value lies under, rewritten once
		for mp := range mounts {
			if (val == mp || strings.HasPrefix(val, mp+"/")) && len(mp) > len(best) {
				best = mp
			}
		}
		if best != "" {
			val = mounts[best] + strings.TrimPrefix(val, best)
		}
		envv = append(envv, e.Name+"="+val)
	}
	cmd := exec.Command(bin, append(slices.Clone(c.Args), "--validate")...)
	cmd.Env = envv
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %s --validate with the rendered env: %w\n%s\nenv: %q", w.name, service(c), err, out, envv)
	}
	return nil
}

// TestValidateHasTeeth: a value the schema lets through but a service
// refuses fails the --validate check, so a pass above means something.
func TestValidateHasTeeth(t *testing.T) {
	bins := buildServices(t)
	r := renderCase(t, "", map[string]any{"gateway": map[string]any{"keyCacheTTL": "0s"}})
	for _, w := range r.workloads() {
		if w.name != "qyai-gateway" {
			continue
		}
		err := validate(t, r, w, w.pod.Containers[0], bins["gateway"])
		if err == nil || !strings.Contains(err.Error(), "KEY_CACHE_TTL must be positive") {
			t.Errorf("gateway --validate with KEY_CACHE_TTL=0s: %v; want it refused", err)
		}
		return
	}
	t.Fatal("no gateway workload")
}

func TestMigrationsHook(t *testing.T) {
	tests := []struct {
		name       string
		file       string
		extra      map[string]any
		hookSecret bool
	}{
		{"defaults: no password", "", nil, false},
		{"chart Secret with a password: a hook Secret", "examples/small.yaml", nil, true},
		{"existingSecret: that one", "examples/production.yaml", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := renderCase(t, tc.file, tc.extra)
			o, ok := r.find("Job", "qyai-migrate")
			if !ok {
				t.Fatal("no migrations Job")
			}
			job := o.Obj.(*batchv1.Job)
			if hooks := job.Annotations["helm.sh/hook"]; hooks != "pre-install,pre-upgrade" {
				t.Errorf("Job hook %q: want pre-install,pre-upgrade", hooks)
			}
			c := job.Spec.Template.Spec.Containers[0]
			if service(c) != "admin" || !slices.Equal(c.Args, []string{"migrate"}) {
				t.Errorf("Job runs %s %q: want admin migrate", c.Image, c.Args)
			}
			hs, ok := r.find("Secret", "qyai-migrate")
			if ok != tc.hookSecret {
				t.Fatalf("hook Secret rendered: %v, want %v", ok, tc.hookSecret)
			}
			if ok {
				s := hs.Obj.(*corev1.Secret)
				if s.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" || s.Annotations["helm.sh/hook-weight"] >= job.Annotations["helm.sh/hook-weight"] {
					t.Errorf("hook Secret annotations %v: want the Job's hooks at a lower weight (created first)", s.Annotations)
				}
			}
			for _, v := range job.Spec.Template.Spec.Volumes {
				if v.Secret != nil && v.Secret.SecretName == "qyai-secrets" {
					t.Error("the Job mounts the chart's Secret, which does not exist yet at pre-install")
				}
			}
		})
	}
}

// TestProductionObjects: the production example renders the scale-out and
// safety objects, with the engines' cluster forms in the environment.
func TestProductionObjects(t *testing.T) {
	r := renderCase(t, "examples/production.yaml", nil)
	for _, want := range []struct{ kind, name string }{
		{"HorizontalPodAutoscaler", "qyai-gateway"}, {"HorizontalPodAutoscaler", "qyai-meter"},
		{"PodDisruptionBudget", "qyai-gateway"}, {"PodDisruptionBudget", "qyai-meter"}, {"PodDisruptionBudget", "qyai-admin"},
		{"NetworkPolicy", "qyai-gateway"}, {"NetworkPolicy", "qyai-meter"}, {"NetworkPolicy", "qyai-admin"},
		{"Service", "qyai-gateway"}, {"Service", "qyai-gateway-metrics"}, {"Service", "qyai-admin"}, {"Service", "qyai-meter-metrics"},
		{"ServiceAccount", "qyai"}, {"ConfigMap", "qyai-tiers"}, {"ConfigMap", "qyai-models"},
	} {
		if _, ok := r.find(want.kind, want.name); !ok {
			t.Errorf("no %s %s", want.kind, want.name)
		}
	}
	if _, ok := r.find("Secret", "qyai-secrets"); ok {
		t.Error("a chart Secret next to existingSecret")
	}
	for _, w := range r.workloads() {
		c := w.pod.Containers[0]
		switch service(c) {
		case "gateway":
			if got := env(c, "REDIS_ADDR"); strings.Count(got, ",") != 2 {
				t.Errorf("gateway REDIS_ADDR %q: want the three cluster seeds", got)
			}
			if mf := env(c, "MODELS_FILE"); !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == "models" && strings.HasPrefix(mf, m.MountPath+"/")
			}) {
				t.Errorf("gateway MODELS_FILE %q is not in the mounted catalog ConfigMap", mf)
			}
			if got := env(c, "NATS_URL"); strings.Count(got, ",") != 2 || env(c, "STREAM_REPLICAS") != "3" {
				t.Errorf("gateway NATS_URL %q, STREAM_REPLICAS %q: want three URLs and 3", got, env(c, "STREAM_REPLICAS"))
			}
		case "meter":
			if env(c, "CLICKHOUSE_CLUSTER") != "qyai" {
				t.Errorf("meter CLICKHOUSE_CLUSTER %q: want qyai", env(c, "CLICKHOUSE_CLUSTER"))
			}
		}
		if len(w.pod.TopologySpreadConstraints) == 0 && w.longRunning {
			t.Errorf("%s: no topologySpreadConstraints", w.name)
		}
	}
	o, _ := r.find("Service", "qyai-gateway-metrics")
	if svc := o.Obj.(*corev1.Service); svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Error("gateway-metrics is not headless (the StatefulSet's governing Service)")
	}
}
