package podrun

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptr[T any](v T) *T { return &v }

// examplePod is a pod like the chart's: non-root, read-only, a tmpfs, a
// secret volume with items, a claim, env from literals, refs and envFrom.
func examplePod() Pod {
	return Pod{
		Name:      "web-0",
		Namespace: "ns",
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr(int64(65532)), RunAsGroup: ptr(int64(65532)), FSGroup: ptr(int64(65532))},
			Containers: []corev1.Container{{
				Name:            "web",
				Image:           "qyai/web:1",
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/web"},
				Args:            []string{"serve", "--x"},
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				EnvFrom:         []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
				Env: []corev1.EnvVar{
					{Name: "ADDR", Value: ":8080"},
					{Name: "OTHER", Value: ":9999"},
					{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "level"}}},
					{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "token"}}},
					{Name: "GONE", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "nope", Optional: ptr(true)}}},
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsNonRoot: ptr(true), ReadOnlyRootFilesystem: ptr(true), AllowPrivilegeEscalation: ptr(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "tmp", MountPath: "/tmp"},
					{Name: "secrets", MountPath: "/run/secrets/x", ReadOnly: true},
					{Name: "data", MountPath: "/var/lib/x"},
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 5, FailureThreshold: 2, TimeoutSeconds: 2},
			}},
			Volumes: []corev1.Volume{
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr(resource.MustParse("16Mi"))}}},
				{Name: "secrets", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec", DefaultMode: ptr(int32(0o440)), Items: []corev1.KeyToPath{{Key: "token", Path: "token"}}}}},
			},
		},
		ConfigMaps: map[string]*corev1.ConfigMap{"cfg": {ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"level": "debug"}}},
		Secrets:    map[string]*corev1.Secret{"sec": {Data: map[string][]byte{"token": []byte("t0k"), "other": []byte("x")}}},
		Claims:     map[string]string{"data": "/host/data"},
		FilesDir:   "/host/files",
		Ports:      map[int32]int32{8080: 41000},
	}
}

func TestTranslate(t *testing.T) {
	r, err := Translate(examplePod())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"run", "-d", "--rm", "--name", "web-0", "--network", "host", "--pull", "never",
		"--read-only", "--read-only-tmpfs=false", "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
		"--user", "65532:65532",
		"--memory", "134217728", "--cpus", "0.5",
		"--tmpfs", "/tmp:rw,mode=1777,size=16777216",
		"--volume", "/host/files/web-0/secrets:/run/secrets/x:ro",
		"--volume", "/host/data:/var/lib/x",
		"--env", "CM_level=debug",
		"--env", "ADDR=127.0.0.1:41000",
		"--env", "OTHER=:9999",
		"--env", "POD=web-0",
		"--env", "LEVEL=debug",
		"--env", "TOKEN=t0k",
		"--entrypoint", `["/web"]`,
		"qyai/web:1", "serve", "--x",
	}
	if !slices.Equal(r.Args, want) {
		t.Errorf("args\n got %q\nwant %q", r.Args, want)
	}
	if len(r.Files) != 1 || r.Files[0].Path != "/host/files/web-0/secrets/token" || string(r.Files[0].Data) != "t0k" || r.Files[0].Mode != 0o440 || r.Files[0].GID != 65532 {
		t.Errorf("files %+v, want only the token, 0440, group 65532", r.Files)
	}
	wantProbe := Probe{Kind: "readiness", URL: "http://127.0.0.1:41000/readyz", Budget: 10 * time.Second, Each: 2 * time.Second}
	if len(r.Probes) != 1 || r.Probes[0] != wantProbe {
		t.Errorf("probes %+v, want %+v", r.Probes, wantProbe)
	}
}

func TestTranslateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *Pod)
		want   string
	}{
		{"privileged", func(p *Pod) { p.Spec.Containers[0].SecurityContext.Privileged = ptr(true) }, "privileged"},
		{"root with runAsNonRoot", func(p *Pod) { p.Spec.SecurityContext.RunAsUser = ptr(int64(0)) }, "runAsNonRoot"},
		{"subPath", func(p *Pod) { p.Spec.Containers[0].VolumeMounts[0].SubPath = "x" }, "subPath"},
		{"missing secret key", func(p *Pod) { p.Spec.Containers[0].Env[4].ValueFrom.SecretKeyRef.Key = "nope" }, "no key nope"},
		{"missing volume", func(p *Pod) { p.Spec.Volumes = p.Spec.Volumes[:1] }, "no such volume"},
		{"exec probe", func(p *Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{}}}
		}, "only httpGet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := examplePod()
			tc.change(&p)
			_, err := Translate(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Translate: %v, want an error about %q", err, tc.want)
			}
			if tc.name == "privileged" && !errors.Is(err, ErrUnsupported) {
				t.Errorf("%v is not ErrUnsupported", err)
			}
		})
	}
}
