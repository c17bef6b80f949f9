// Package kubeapi_test runs the chart against a real Kubernetes control plane:
// etcd, kube-apiserver and kube-controller-manager, built from the Kubernetes Go
// modules (tools/kube) and started by deploy/local/kube.sh on free ports. What a
// render cannot show is shown here: the apiserver's strict server-side validation
// of every object of every values file (hooks included), helm install, upgrade,
// rollback and uninstall with the helm CLI the chart is linted with, controllers
// turning the workloads into ReplicaSets and Pods, pods rolling when config or
// secrets change, and values the schema refuses.
//
// There is no node (a kubelet cannot run on these hosts), so Pods stay Pending and
// the pre-install migrations Job cannot complete: helm runs with --no-hooks, and
// the Job is validated by the server-side dry runs instead. Running the containers
// is what tools/helmtest/podrun does.
package kubeapi_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// repo is the repository root, relative to this package's directory.
const repo = "../../.."

const (
	release   = "qyai"
	namespace = "qyai"
)

var (
	chartDir = filepath.Join(repo, "helm", "qyai")
	helmBin  = filepath.Join(repo, ".bin", "helm")
	kubectl  = filepath.Join(repo, ".bin", "kube", "kubectl")
)

// cluster is a control plane kube.sh started for this test.
type cluster struct {
	kubeconfig string
	cs         *kubernetes.Clientset
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	for _, bin := range []string{helmBin, kubectl} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%v: run deploy/local/install.sh helm and deploy/local/install.sh kube (make test-chart does)", err)
		}
	}
	dir := t.TempDir()
	script := filepath.Join(repo, "deploy", "local", "kube.sh")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := exec.CommandContext(ctx, script, "start", dir)
	// The watchdog of lib.sh stops the servers if this test binary dies.
	start.Env = append(os.Environ(), fmt.Sprintf("QYAI_OWNER_PID=%d", os.Getpid()))
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("kube.sh start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("kube.sh stop: %v\n%s", err, out)
		}
	})
	kubeconfig := filepath.Join(dir, "kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{kubeconfig: kubeconfig, cs: cs}
}

// run runs a command with the cluster's kubeconfig and returns its combined output.
func (c *cluster) run(stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HELM_CACHE_HOME="+filepath.Join(filepath.Dir(c.kubeconfig), "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(filepath.Dir(c.kubeconfig), "helm-config"), "HELM_DATA_HOME="+filepath.Join(filepath.Dir(c.kubeconfig), "helm-data"))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *cluster) must(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	out, err := c.run(stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) helm(t *testing.T, args ...string) string {
	t.Helper()
	return c.must(t, nil, helmBin, args...)
}

// eventually polls f every 200 ms until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// valuesFiles are the renders checked server-side: the defaults and each example.
var valuesFiles = []string{"", "examples/small.yaml", "examples/production.yaml"}

func TestChartOnAPIServer(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()

	// The optional objects' kinds come from operators the cluster would run;
	// here their stand-in CRDs (see testdata/crds.yaml).
	c.must(t, nil, kubectl, "apply", "--server-side", "-f", "testdata/crds.yaml")
	c.must(t, nil, kubectl, "wait", "--for", "condition=Established", "--timeout", "60s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com",
		"crd/httproutes.gateway.networking.k8s.io")
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("strict server-side validation of every object", func(t *testing.T) {
		for _, f := range valuesFiles {
			args := []string{"template", release, chartDir, "-n", namespace, "--kube-version", "v1.37.2"}
			if f != "" {
				args = append(args, "-f", filepath.Join(chartDir, f))
			}
			// Hooks (the migrations Job) and tests are part of the template output.
			manifest := c.must(t, nil, helmBin, args...)
			docs := strings.Count("\n"+manifest, "\nkind: ")
			out := c.must(t, []byte(manifest), kubectl, "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-")
			if got := strings.Count(out, "(server dry run)"); got != docs || docs < 10 {
				t.Errorf("values %q: the server accepted %d objects of %d rendered:\n%s", f, got, docs, out)
			}
		}
	})

	t.Run("strict validation has teeth", func(t *testing.T) {
		// A field no API knows, in a built-in kind and in each stand-in CRD, and
		// a semantic error: the same dry run must refuse each.
		for _, tc := range []struct{ name, want, doc string }{
			{"unknown container field", `unknown field "spec.template.spec.containers[0].imagePullPolic"`, `apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: "i:1", imagePullPolic: Always}]`},
			{"unknown ServiceMonitor field", `unknown field "spec.endpoints[0].intervall"`, `apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  endpoints: [{port: metrics, intervall: 30s}]`},
			{"unknown PrometheusRule field", `unknown field "spec.groups[0].rules[0].runbook"`, `apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: x}
spec:
  groups: [{name: g, rules: [{alert: A, expr: "up == 0", runbook: x}]}]`},
			{"unknown HTTPRoute field", `unknown field "spec.parentRefs[0].section"`, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: x}
spec:
  parentRefs: [{name: public, section: https}]`},
			{"PDB with both bounds", "minAvailable and maxUnavailable cannot be both set", `apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: x}
spec: {minAvailable: 1, maxUnavailable: 1, selector: {matchLabels: {a: b}}}`},
		} {
			out, err := c.run([]byte(tc.doc), kubectl, "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-")
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("%s: err %v, want a refusal saying %q:\n%s", tc.name, err, tc.want, out)
			}
		}
	})

	small := filepath.Join(chartDir, "examples", "small.yaml")
	// --no-hooks: the migrations Job would wait for a node forever.
	install := []string{"-n", namespace, "-f", small, "--no-hooks", "--timeout", "2m"}

	t.Run("install", func(t *testing.T) {
		c.helm(t, append([]string{"install", release, chartDir}, install...)...)
		for _, d := range []string{"qyai-admin", "qyai-meter"} {
			eventually(t, d+" has a ReplicaSet with its replicas as Pods", time.Minute, func() error {
				return rolledOut(ctx, c.cs, d)
			})
		}
		eventually(t, "the gateway StatefulSet has its Pod and spool claim", time.Minute, func() error {
			if _, err := c.cs.CoreV1().Pods(namespace).Get(ctx, "qyai-gateway-0", metav1.GetOptions{}); err != nil {
				return err
			}
			_, err := c.cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, "spool-qyai-gateway-0", metav1.GetOptions{})
			return err
		})
	})
	rev1 := checksums(t, c)
	gatewayRevision := func() string {
		s, err := c.cs.AppsV1().StatefulSets(namespace).Get(ctx, "qyai-gateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.Status.UpdateRevision
	}
	sts1 := gatewayRevision()

	t.Run("upgrade with changed config and secrets rolls the pods", func(t *testing.T) {
		c.helm(t, append([]string{"upgrade", release, chartDir,
			"--set-file", "admin.tiers=" + filepath.Join(repo, "pkg", "tier", "tiers.yaml"),
			"--set-string", "secrets.adminTokens=ops:another-admin-token-0123456789abcdef"}, install...)...)
		rev2 := checksums(t, c)
		for obj, sums := range rev2 {
			for k, v := range sums {
				if rev1[obj][k] == v {
					t.Errorf("%s: %s stayed %s across a change of config and secrets", obj, k, v)
				}
			}
		}
		eventually(t, "qyai-admin rolled to a new ReplicaSet", time.Minute, func() error {
			if n := replicaSets(ctx, t, c.cs, "admin"); n != 2 {
				return fmt.Errorf("%d ReplicaSets", n)
			}
			return rolledOut(ctx, c.cs, "qyai-admin")
		})
		eventually(t, "the gateway StatefulSet has a new revision", time.Minute, func() error {
			if r := gatewayRevision(); r == sts1 {
				return fmt.Errorf("update revision still %s", r)
			}
			return nil
		})
	})

	t.Run("rollback restores the first revision", func(t *testing.T) {
		c.helm(t, "rollback", release, "1", "-n", namespace, "--no-hooks", "--timeout", "2m")
		got := checksums(t, c)
		for obj, sums := range rev1 {
			for k, v := range sums {
				if got[obj][k] != v {
					t.Errorf("%s: %s is %s after the rollback, %s at revision 1", obj, k, got[obj][k], v)
				}
			}
		}
		eventually(t, "qyai-admin back on its first ReplicaSet", time.Minute, func() error {
			return rolledOut(ctx, c.cs, "qyai-admin")
		})
		if h := c.helm(t, "history", release, "-n", namespace); !strings.Contains(h, "Rollback to 1") {
			t.Errorf("history:\n%s", h)
		}
	})

	t.Run("the schema refuses a wrong value", func(t *testing.T) {
		for _, set := range []string{"gateway.replicas=many", "gateway.replica=2", "upstream.connectTimeout=5 seconds", "upstream.baseURLs={ftp://x}"} {
			out, err := c.run(nil, helmBin, append([]string{"upgrade", release, chartDir, "--set", set}, install...)...)
			if err == nil || !strings.Contains(out, "schema") {
				t.Errorf("--set %s: err %v, want a schema error:\n%s", set, err, out)
			}
		}
		// Nothing reached the cluster: the release is still the rollback.
		st := c.helm(t, "status", release, "-n", namespace, "-o", "json")
		if !strings.Contains(st, `"version":3`) || !strings.Contains(st, `"status":"deployed"`) {
			t.Errorf("status after refused upgrades: %.300s", st)
		}
	})

	t.Run("uninstall removes the release", func(t *testing.T) {
		c.helm(t, "uninstall", release, "-n", namespace, "--wait", "--timeout", "2m")
		eventually(t, "workloads, their ReplicaSets and Pods gone", time.Minute, func() error {
			deps, err := c.cs.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			rss, err := c.cs.AppsV1().ReplicaSets(namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			if _, err := c.cs.AppsV1().StatefulSets(namespace).Get(ctx, "qyai-gateway", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("gateway StatefulSet: %w", err)
			}
			if n := len(deps.Items) + len(rss.Items); n != 0 {
				return fmt.Errorf("%d Deployments and ReplicaSets left", n)
			}
			return nil
		})
		// The spool claims stay (whenDeleted: Retain): they may hold events.
		if _, err := c.cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, "spool-qyai-gateway-0", metav1.GetOptions{}); err != nil {
			t.Errorf("the spool claim went with the release: %v", err)
		}
	})
}

// rolledOut succeeds when the Deployment's controller has observed its latest
// generation and its current ReplicaSet holds all replicas as Pods (Pending: there
// is no node to run them).
func rolledOut(ctx context.Context, cs *kubernetes.Clientset, name string) error {
	d, err := cs.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if d.Status.ObservedGeneration != d.Generation || d.Status.UpdatedReplicas != *d.Spec.Replicas {
		return fmt.Errorf("observed generation %d of %d, %d of %d replicas updated",
			d.Status.ObservedGeneration, d.Generation, d.Status.UpdatedReplicas, *d.Spec.Replicas)
	}
	sel := metav1.FormatLabelSelector(d.Spec.Selector)
	pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	if int32(len(pods.Items)) < *d.Spec.Replicas {
		return fmt.Errorf("%d pods of %d", len(pods.Items), *d.Spec.Replicas)
	}
	return nil
}

func replicaSets(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, component string) int {
	t.Helper()
	rss, err := cs.AppsV1().ReplicaSets(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=" + component})
	if err != nil {
		t.Fatal(err)
	}
	return len(rss.Items)
}

// checksums returns the checksum/* annotations of each workload's pod template, as
// the apiserver stores them.
func checksums(t *testing.T, c *cluster) map[string]map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]map[string]string{}
	pick := func(name string, tmpl corev1.PodTemplateSpec) {
		sums := map[string]string{}
		for k, v := range tmpl.Annotations {
			if strings.HasPrefix(k, "checksum/") {
				sums[k] = v
			}
		}
		if len(sums) == 0 {
			t.Errorf("%s: no checksum annotations on its pod template", name)
		}
		out[name] = sums
	}
	for _, name := range []string{"qyai-admin", "qyai-meter"} {
		d, err := c.cs.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pick(name, d.Spec.Template)
	}
	s, err := c.cs.AppsV1().StatefulSets(namespace).Get(ctx, "qyai-gateway", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pick("qyai-gateway", s.Spec.Template)
	return out
}
