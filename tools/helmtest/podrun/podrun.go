// Package podrun runs the containers the chart renders under rootful podman,
// from exactly the rendered pod specs: Translate turns a pod spec into the
// arguments of `podman run` (and the files its configMap and secret volumes
// hold), and the package's test runs the real images that way against real
// Redis, NATS and ClickHouse.
package podrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ErrUnsupported is returned for a part of a pod spec Translate has no
// podman equivalent for; refusing it beats running something else.
var ErrUnsupported = errors.New("unsupported in podman")

// Pod is one pod to run: the rendered spec and what a cluster would supply.
type Pod struct {
	Name      string // pod name (metadata.name; also the container name)
	Namespace string
	Spec      corev1.PodSpec
	// Container is the container of Spec to run; empty: the only one.
	Container string
	// ConfigMaps and Secrets are the rendered ones, by name, for env
	// references and volumes.
	ConfigMaps map[string]*corev1.ConfigMap
	Secrets    map[string]*corev1.Secret
	// Claims maps a persistentVolumeClaim volume (or a volumeClaimTemplate)
	// name to the host directory that stands for it.
	Claims map[string]string
	// FilesDir is the host directory under which configMap and secret
	// volumes are written, one subdirectory per volume.
	FilesDir string
	// Ports maps a container port to the host port it listens on instead.
	// With --network host every pod shares the machine's ports, so a fixed
	// port of the chart could be taken; an env value ":<port>" (a listen
	// address) of a mapped port becomes "127.0.0.1:<host port>". This is
	// the one deliberate change to the rendered spec.
	Ports map[int32]int32
	// Attached runs the container in the foreground, for a Job's container
	// whose exit status is the result; otherwise it runs detached.
	Attached bool
}

// File is a file of a configMap or secret volume, to be written on the host
// before the container starts.
type File struct {
	Path string // host path
	Data []byte
	Mode uint32
	GID  int // owner group (the pod's fsGroup, as the kubelet sets it); -1: unchanged
}

// Probe is a declared httpGet probe, with its port mapped to the host.
type Probe struct {
	Kind   string // startup, liveness or readiness
	URL    string
	Budget time.Duration // initialDelaySeconds + periodSeconds * failureThreshold
	Each   time.Duration // timeoutSeconds
}

// Run is what Translate makes of a pod.
type Run struct {
	Args   []string // after "podman", starting with "run"
	Files  []File
	Probes []Probe
}

// Translate returns the podman run arguments for p: its command and args,
// env (with valueFrom and envFrom resolved), user, read-only root,
// capabilities, no-new-privileges, pull policy, memory and CPU limits, and
// volumes (emptyDir as
// tmpfs, configMap and secret volumes as read-only files, claims as bind
// mounts), on the host network. The container runs with --rm, detached
// unless p.Attached.
//
// What has no podman counterpart is left out on purpose: resource requests
// (a scheduler's business), seccompProfile RuntimeDefault (podman's default
// profile is that already), and lifecycle hooks (the preStop sleep only
// waits for endpoints to drop the pod; podman stop sends SIGTERM at once).
// Anything else it cannot honour (privileged, subPath, exec probes, other
// volume kinds) is an error wrapping ErrUnsupported.
func Translate(p Pod) (Run, error) {
	c, err := container(p)
	if err != nil {
		return Run{}, err
	}
	args := []string{"run", "-d", "--rm", "--name", p.Name, "--network", "host"}
	if p.Attached {
		args = slices.Delete(args, 1, 2)
	}
	if pp, ok := pullPolicy[c.ImagePullPolicy]; ok {
		args = append(args, "--pull", pp)
	}
	sec, err := security(p.Spec.SecurityContext, c.SecurityContext)
	if err != nil {
		return Run{}, err
	}
	args = append(args, sec...)
	args = append(args, limits(c.Resources)...)
	mounts, files, err := volumes(p, c)
	if err != nil {
		return Run{}, err
	}
	args = append(args, mounts...)
	env, err := environment(p, c)
	if err != nil {
		return Run{}, err
	}
	for _, e := range env {
		args = append(args, "--env", e)
	}
	if len(c.Command) > 0 {
		ep, err := json.Marshal(c.Command)
		if err != nil {
			return Run{}, err
		}
		args = append(args, "--entrypoint", string(ep))
	}
	args = append(args, c.Image)
	args = append(args, c.Args...)
	probes, err := probes(p, c)
	if err != nil {
		return Run{}, err
	}
	return Run{Args: args, Files: files, Probes: probes}, nil
}

var pullPolicy = map[corev1.PullPolicy]string{
	corev1.PullAlways: "always", corev1.PullIfNotPresent: "missing", corev1.PullNever: "never",
}

func container(p Pod) (corev1.Container, error) {
	for _, c := range p.Spec.Containers {
		if p.Container == "" && len(p.Spec.Containers) == 1 || c.Name == p.Container {
			return c, nil
		}
	}
	return corev1.Container{}, fmt.Errorf("pod %s: no container %q", p.Name, p.Container)
}

// security translates the pod's and the container's security contexts (the
// container's fields win, as in Kubernetes).
func security(pod *corev1.PodSecurityContext, c *corev1.SecurityContext) ([]string, error) {
	var uid, gid *int64
	var nonRoot *bool
	var fsGroup *int64
	if pod != nil {
		uid, gid, nonRoot, fsGroup = pod.RunAsUser, pod.RunAsGroup, pod.RunAsNonRoot, pod.FSGroup
	}
	var args []string
	if c != nil {
		if c.RunAsUser != nil {
			uid = c.RunAsUser
		}
		if c.RunAsGroup != nil {
			gid = c.RunAsGroup
		}
		if c.RunAsNonRoot != nil {
			nonRoot = c.RunAsNonRoot
		}
		if c.Privileged != nil && *c.Privileged {
			return nil, fmt.Errorf("privileged: %w", ErrUnsupported)
		}
		if c.ReadOnlyRootFilesystem != nil && *c.ReadOnlyRootFilesystem {
			// Only the declared volumes are writable: no tmpfs of podman's own
			// on /tmp, /run and /var/tmp.
			args = append(args, "--read-only", "--read-only-tmpfs=false")
		}
		if c.AllowPrivilegeEscalation != nil && !*c.AllowPrivilegeEscalation {
			args = append(args, "--security-opt", "no-new-privileges")
		}
		if c.Capabilities != nil {
			for _, d := range c.Capabilities.Drop {
				args = append(args, "--cap-drop", string(d))
			}
			for _, a := range c.Capabilities.Add {
				args = append(args, "--cap-add", string(a))
			}
		}
	}
	if uid != nil {
		user := strconv.FormatInt(*uid, 10)
		if gid != nil {
			user += ":" + strconv.FormatInt(*gid, 10)
		}
		args = append(args, "--user", user)
	}
	if nonRoot != nil && *nonRoot && (uid == nil || *uid == 0) {
		return nil, errors.New("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse to start it")
	}
	if fsGroup != nil && (gid == nil || *gid != *fsGroup) {
		args = append(args, "--group-add", strconv.FormatInt(*fsGroup, 10))
	}
	return args, nil
}

// limits translates the container's memory and CPU limits (requests only
// matter to a scheduler).
func limits(r corev1.ResourceRequirements) []string {
	var args []string
	if m, ok := r.Limits[corev1.ResourceMemory]; ok {
		args = append(args, "--memory", strconv.FormatInt(m.Value(), 10))
	}
	if c, ok := r.Limits[corev1.ResourceCPU]; ok {
		args = append(args, "--cpus", strconv.FormatFloat(float64(c.MilliValue())/1000, 'f', -1, 64))
	}
	return args
}

// volumes translates the container's volume mounts.
func volumes(p Pod, c corev1.Container) ([]string, []File, error) {
	byName := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		byName[v.Name] = v
	}
	gid := -1
	if sc := p.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		gid = int(*sc.FSGroup)
	}
	var args []string
	var files []File
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" {
			return nil, nil, fmt.Errorf("volume mount %s: subPath: %w", m.Name, ErrUnsupported)
		}
		ro := ""
		if m.ReadOnly {
			ro = ":ro"
		}
		if dir, ok := p.Claims[m.Name]; ok {
			args = append(args, "--volume", dir+":"+m.MountPath+ro)
			continue
		}
		v, ok := byName[m.Name]
		if !ok {
			return nil, nil, fmt.Errorf("volume mount %s: no such volume", m.Name)
		}
		switch {
		case v.EmptyDir != nil:
			opt := "rw,mode=1777"
			if v.EmptyDir.SizeLimit != nil {
				opt += ",size=" + strconv.FormatInt(v.EmptyDir.SizeLimit.Value(), 10)
			}
			args = append(args, "--tmpfs", m.MountPath+":"+opt)
		case v.ConfigMap != nil:
			cm, ok := p.ConfigMaps[v.ConfigMap.Name]
			if !ok {
				return nil, nil, fmt.Errorf("volume %s: no ConfigMap %s", v.Name, v.ConfigMap.Name)
			}
			data := map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			for k, b := range cm.BinaryData {
				data[k] = b
			}
			dir := filepath.Join(p.FilesDir, p.Name, v.Name)
			fs, err := projected(dir, data, v.ConfigMap.Items, v.ConfigMap.DefaultMode, gid)
			if err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			files = append(files, fs...)
			args = append(args, "--volume", dir+":"+m.MountPath+":ro")
		case v.Secret != nil:
			s, ok := p.Secrets[v.Secret.SecretName]
			if !ok {
				return nil, nil, fmt.Errorf("volume %s: no Secret %s", v.Name, v.Secret.SecretName)
			}
			dir := filepath.Join(p.FilesDir, p.Name, v.Name)
			fs, err := projected(dir, secretData(s), v.Secret.Items, v.Secret.DefaultMode, gid)
			if err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			files = append(files, fs...)
			args = append(args, "--volume", dir+":"+m.MountPath+":ro")
		default:
			return nil, nil, fmt.Errorf("volume %s: this kind of volume: %w", v.Name, ErrUnsupported)
		}
	}
	return args, files, nil
}

// projected lists the files of a configMap or secret volume: every key, or
// only the items, each with its mode or the volume's default (0644).
func projected(dir string, data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32, gid int) ([]File, error) {
	mode := uint32(0o644)
	if defaultMode != nil {
		mode = uint32(*defaultMode)
	}
	if len(items) == 0 {
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	var files []File
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("no key %q", it.Key)
		}
		if filepath.IsAbs(it.Path) || strings.Contains(it.Path, "..") {
			return nil, fmt.Errorf("item path %q leaves the volume", it.Path)
		}
		m := mode
		if it.Mode != nil {
			m = uint32(*it.Mode)
		}
		files = append(files, File{Path: filepath.Join(dir, it.Path), Data: b, Mode: m, GID: gid})
	}
	return files, nil
}

// secretData is a Secret's data with its stringData laid over it, as the
// API server merges them.
func secretData(s *corev1.Secret) map[string][]byte {
	out := make(map[string][]byte, len(s.Data)+len(s.StringData))
	for k, b := range s.Data {
		out[k] = b
	}
	for k, v := range s.StringData {
		out[k] = []byte(v)
	}
	return out
}

// environment resolves the container's envFrom, then env (env wins: later
// --env flags override earlier ones), into NAME=value pairs.
func environment(p Pod, c corev1.Container) ([]string, error) {
	var out []string
	for _, from := range c.EnvFrom {
		var data map[string][]byte
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := p.ConfigMaps[from.ConfigMapRef.Name]
			if !ok {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom: no ConfigMap %s", from.ConfigMapRef.Name)
			}
			data = map[string][]byte{}
			for k, v := range cm.Data {
				data[k] = []byte(v)
			}
		case from.SecretRef != nil:
			s, ok := p.Secrets[from.SecretRef.Name]
			if !ok {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom: no Secret %s", from.SecretRef.Name)
			}
			data = secretData(s)
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, from.Prefix+k+"="+string(data[k]))
		}
	}
	for _, e := range c.Env {
		v, skip, err := envValue(p, e)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if skip {
			continue
		}
		if strings.Contains(v, "$(") {
			return nil, fmt.Errorf("env %s: $(VAR) expansion: %w", e.Name, ErrUnsupported)
		}
		out = append(out, e.Name+"="+listenAddr(v, p.Ports))
	}
	return out, nil
}

// listenAddr rewrites ":<port>" of a mapped port (see Pod.Ports).
func listenAddr(v string, ports map[int32]int32) string {
	if !strings.HasPrefix(v, ":") {
		return v
	}
	n, err := strconv.ParseInt(v[1:], 10, 32)
	if err != nil {
		return v
	}
	if host, ok := ports[int32(n)]; ok {
		return "127.0.0.1:" + strconv.Itoa(int(host))
	}
	return v
}

func optional(b *bool) bool { return b != nil && *b }

// envValue resolves one env entry; skip is true for a missing optional ref.
func envValue(p Pod, e corev1.EnvVar) (v string, skip bool, err error) {
	from := e.ValueFrom
	switch {
	case from == nil:
		return e.Value, false, nil
	case from.ConfigMapKeyRef != nil:
		r := from.ConfigMapKeyRef
		cm, ok := p.ConfigMaps[r.Name]
		if ok {
			if s, ok := cm.Data[r.Key]; ok {
				return s, false, nil
			}
		}
		if optional(r.Optional) {
			return "", true, nil
		}
		return "", false, fmt.Errorf("no key %s in ConfigMap %s", r.Key, r.Name)
	case from.SecretKeyRef != nil:
		r := from.SecretKeyRef
		if s, ok := p.Secrets[r.Name]; ok {
			if b, ok := secretData(s)[r.Key]; ok {
				return string(b), false, nil
			}
		}
		if optional(r.Optional) {
			return "", true, nil
		}
		return "", false, fmt.Errorf("no key %s in Secret %s", r.Key, r.Name)
	case from.FieldRef != nil:
		switch from.FieldRef.FieldPath {
		case "metadata.name":
			return p.Name, false, nil
		case "metadata.namespace":
			return p.Namespace, false, nil
		}
		return "", false, fmt.Errorf("fieldRef %s: %w", from.FieldRef.FieldPath, ErrUnsupported)
	}
	return "", false, fmt.Errorf("this valueFrom: %w", ErrUnsupported)
}

// probes lists the container's httpGet probes, in the order the kubelet
// runs them (startup first, then liveness and readiness).
func probes(p Pod, c corev1.Container) ([]Probe, error) {
	var out []Probe
	for _, kp := range []struct {
		kind string
		pr   *corev1.Probe
	}{{"startup", c.StartupProbe}, {"liveness", c.LivenessProbe}, {"readiness", c.ReadinessProbe}} {
		if kp.pr == nil {
			continue
		}
		g := kp.pr.HTTPGet
		if g == nil {
			return nil, fmt.Errorf("%s probe: only httpGet: %w", kp.kind, ErrUnsupported)
		}
		port, err := probePort(c, g.Port)
		if err != nil {
			return nil, fmt.Errorf("%s probe: %w", kp.kind, err)
		}
		if host, ok := p.Ports[port]; ok {
			port = host
		}
		period, failures, timeout := kp.pr.PeriodSeconds, kp.pr.FailureThreshold, kp.pr.TimeoutSeconds
		if period == 0 {
			period = 10
		}
		if failures == 0 {
			failures = 3
		}
		if timeout == 0 {
			timeout = 1
		}
		out = append(out, Probe{
			Kind:   kp.kind,
			URL:    fmt.Sprintf("http://127.0.0.1:%d%s", port, g.Path),
			Budget: time.Duration(kp.pr.InitialDelaySeconds+period*failures) * time.Second,
			Each:   time.Duration(timeout) * time.Second,
		})
	}
	return out, nil
}

// probePort resolves a probe's port: a number, or a container port's name.
func probePort(c corev1.Container, port intstr.IntOrString) (int32, error) {
	if port.Type == intstr.Int {
		return port.IntVal, nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("no container port named %q", port.StrVal)
}
