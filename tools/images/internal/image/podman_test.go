package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// podman runs rootful podman with a private configuration and storage under
// a temp dir (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), so that nothing
// global changes. The settings are the ones these hosts need: runc (crun
// fails on hybrid cgroups), cgroupfs, file events, and explicit ulimits
// (without them runc's setrlimit is refused).
type podman struct {
	t   *testing.T
	env []string
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	bin, err := exec.LookPath("podman")
	if err != nil {
		t.Fatalf("podman not found (%v): run deploy/local/install.sh images", err)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not found (%v): run deploy/local/install.sh images", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s: the smoke test runs rootful podman and needs root", bin)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "containers.conf")
	storage := filepath.Join(dir, "storage.conf")
	write(t, conf, fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
tmp_dir = %q
`, filepath.Join(dir, "events.log"), filepath.Join(dir, "libpod")))
	write(t, storage, fmt.Sprintf(`[storage]
driver = "vfs"
runroot = %q
graphroot = %q
`, filepath.Join(dir, "run"), filepath.Join(dir, "root")))
	// No `podman system reset` at the end: it would also delete the host's
	// network definitions. Containers run with --rm and the vfs driver
	// mounts nothing, so removing the temp dir removes everything.
	return &podman{t: t, env: append(os.Environ(), "CONTAINERS_CONF="+conf, "CONTAINERS_STORAGE_CONF="+storage)}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// try runs podman, bounded by a deadline of its own rather than t.Context(),
// which is cancelled before the cleanups that stop containers run.
func (p *podman) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

func (p *podman) run(args ...string) string {
	p.t.Helper()
	out, err := p.try(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestPodman loads each image, checks podman sees the ID the builder
// printed, and runs the binary as the chart will (non-root, read-only root,
// host network) with --validate and a minimal configuration.
func TestPodman(t *testing.T) {
	p := newPodman(t)
	env := map[string][]string{
		"gateway": {"QYAI_DEV=1", "UPSTREAM_BASE_URL=http://127.0.0.1:9", "UPSTREAM_API_KEY=sk-dummy"},
		"meter":   {},
		"admin":   {"ADMIN_TOKEN=smoke-test-admin-token-0123456789", "KEY_PEPPER=smoke-test-pepper-0123456789abcdef"},
	}
	for _, r := range results(t) {
		t.Run(r.Service, func(t *testing.T) {
			out := p.run("load", "-i", r.Path)
			if !strings.Contains(out, r.Tag) {
				t.Fatalf("podman load says %q, want it to name %s", out, r.Tag)
			}
			id := strings.TrimSpace(p.run("image", "inspect", "--format", "{{.ID}}", r.Tag))
			if "sha256:"+id != r.ImageID.String() {
				t.Errorf("podman image ID %s, builder printed %s", id, r.ImageID)
			}
			args := []string{"run", "--rm", "--network", "host", "--read-only", "--user", "65532:65532"}
			for _, e := range env[r.Service] {
				args = append(args, "-e", e)
			}
			out = p.run(append(args, r.Tag, "--validate")...)
			if !strings.Contains(out, r.Service+": configuration is valid") {
				t.Fatalf("%s --validate said %q", r.Service, out)
			}
		})
	}
}

// TestDockerfileFinalStage builds deploy/docker/Dockerfile's final stages
// with podman (FROM scratch works offline; its golang build stage cannot
// here), from a build stage replaced by the Go-built layer's files, and
// expects the same files, modes and config as the Go-built image.
func TestDockerfileFinalStage(t *testing.T) {
	p := newPodman(t)
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot(), "deploy/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	const marker = "# ---- final stages"
	i := bytes.Index(dockerfile, []byte(marker))
	if i < 0 {
		t.Fatalf("deploy/docker/Dockerfile lacks the line %q", marker)
	}
	for _, r := range results(t) {
		t.Run(r.Service, func(t *testing.T) {
			goImg, err := tarball.ImageFromPath(r.Path, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctxDir := t.TempDir()
			extract(t, goImg, filepath.Join(ctxDir, "rootfs"))
			containerfile := "ARG SERVICE=gateway\nFROM scratch AS build\nCOPY rootfs/ /rootfs/\n" + string(dockerfile[i:])
			write(t, filepath.Join(ctxDir, "Containerfile"), containerfile)
			tag := "localhost/dockerfile/" + r.Service + ":test"
			p.run("build", "-q", "--build-arg", "SERVICE="+r.Service,
				"--build-arg", "VERSION="+testMeta.Version, "--build-arg", "REVISION="+testMeta.Revision,
				"-t", tag, ctxDir)
			archive := filepath.Join(t.TempDir(), "df.tar")
			p.run("save", "--format", "docker-archive", "-o", archive, tag)
			dfImg, err := tarball.ImageFromPath(archive, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, got := layerFiles(t, goImg), mergedFiles(t, dfImg)
			for path, w := range want {
				g, ok := got[path]
				switch {
				case !ok:
					t.Errorf("Dockerfile image lacks %s", path)
				case g.hdr.Mode&0o7777 != w.hdr.Mode || g.hdr.Uid != 0 || g.hdr.Gid != 0 || !bytes.Equal(g.data, w.data):
					t.Errorf("%s: Dockerfile mode %o uid %d gid %d (%d bytes), Go builder %o 0 0 (%d bytes)", path, g.hdr.Mode, g.hdr.Uid, g.hdr.Gid, len(g.data), w.hdr.Mode, len(w.data))
				}
			}
			for path := range got {
				if _, ok := want[path]; !ok {
					t.Errorf("Dockerfile image has %s, the Go builder's does not", path)
				}
			}
			gc, err := goImg.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			dc, err := dfImg.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			g, d := gc.Config, dc.Config
			delete(d.Labels, "io.buildah.version")
			switch {
			case g.User != d.User:
				t.Errorf("User: Go %q, Dockerfile %q", g.User, d.User)
			case !slices.Equal(g.Entrypoint, d.Entrypoint) || len(d.Cmd) != 0:
				t.Errorf("Entrypoint: Go %q, Dockerfile %q (Cmd %q)", g.Entrypoint, d.Entrypoint, d.Cmd)
			case !slices.Equal(sorted(g.Env), sorted(d.Env)):
				t.Errorf("Env: Go %q, Dockerfile %q", g.Env, d.Env)
			case fmt.Sprint(g.ExposedPorts) != fmt.Sprint(d.ExposedPorts):
				t.Errorf("ExposedPorts: Go %v, Dockerfile %v", g.ExposedPorts, d.ExposedPorts)
			case fmt.Sprint(g.Labels) != fmt.Sprint(d.Labels):
				t.Errorf("Labels: Go %v, Dockerfile %v", g.Labels, d.Labels)
			case g.WorkingDir != d.WorkingDir:
				t.Errorf("WorkingDir: Go %q, Dockerfile %q", g.WorkingDir, d.WorkingDir)
			case dc.OS != gc.OS || dc.Architecture != gc.Architecture:
				t.Errorf("platform: Go %s/%s, Dockerfile %s/%s", gc.OS, gc.Architecture, dc.OS, dc.Architecture)
			}
		})
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// mergedFiles is layerFiles over every layer (buildah may add an empty one
// per instruction), later layers winning.
func mergedFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]file{}
	for _, l := range layers {
		for p, f := range readLayer(t, l) {
			files[p] = f
		}
	}
	return files
}

// extract writes the image's layer under dir with its modes (the build
// context of the Dockerfile's final stages).
func extract(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	for path, f := range layerFiles(t, img) {
		target := filepath.Join(dir, path)
		mode := os.FileMode(f.hdr.Mode & 0o777)
		if f.hdr.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		var err error
		if f.hdr.Typeflag == tar.TypeDir {
			err = os.MkdirAll(target, 0o755)
		} else {
			err = os.MkdirAll(filepath.Dir(target), 0o755)
			if err == nil {
				err = os.WriteFile(target, f.data, 0o600)
			}
		}
		if err == nil {
			err = os.Chmod(target, mode)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPodmanGatewayServes starts the gateway container as the chart will
// (read-only root, non-root, the spool on a writable mount) with no Redis
// or NATS behind it (degraded, not down) and waits for /healthz on its
// metrics listener. Ports are free loopback ones: host networking shares
// the machine with other tests.
func TestPodmanGatewayServes(t *testing.T) {
	p := newPodman(t)
	r := result(t, "gateway")
	p.run("load", "-i", r.Path)
	addr, metrics, redis, nats := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	name := fmt.Sprintf("qyai-smoke-%d", os.Getpid())
	p.run("run", "-d", "--name", name, "--network", "host", "--read-only", "--user", "65532:65532",
		"--tmpfs", "/var/lib/qyai:rw,mode=1777", "-e", "SPOOL_DIR=/var/lib/qyai/spool",
		"-e", "QYAI_DEV=1", "-e", "UPSTREAM_BASE_URL=http://127.0.0.1:9", "-e", "UPSTREAM_API_KEY=sk-dummy",
		"-e", "GATEWAY_ADDR="+addr, "-e", "GATEWAY_METRICS_ADDR="+metrics,
		"-e", "REDIS_ADDR="+redis, "-e", "NATS_URL=nats://"+nats, r.Tag)
	// Stop, then remove: a detached --rm container removed with rm -f can
	// leave its /dev/shm mount behind while conmon's cleanup still runs.
	t.Cleanup(func() {
		_, _ = p.try("stop", "-t", "5", name)
		_, _ = p.try("rm", "-f", name)
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + metrics + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			logs, _ := p.try("logs", name)
			t.Fatalf("gateway container: no 200 from /healthz within 20 s (last: %v)\n%s", err, logs)
		}
		time.Sleep(100 * time.Millisecond) // polling with a deadline
	}
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
