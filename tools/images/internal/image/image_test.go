package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/qyai/qyai/tools/images/internal/image"
)

const hostCerts = "/etc/ssl/certs/ca-certificates.crt"

var testMeta = image.Meta{Version: "v0.0.0-test", Revision: "0123456789abcdef", Source: "https://github.com/qyai/qyai", Licenses: "NOASSERTION"}

// built is the one build of the three images the tests share: compiling
// them is what costs (about a minute warm), so it happens once per run.
type built struct {
	results []image.Result
	err     error
}

var shared built

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qyai-images-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// No testing.T here: a deadline bounds a hung go build instead.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	shared.results, shared.err = build(ctx, dir, image.Services())
	cancel()
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string { return filepath.Join("..", "..", "..", "..") }

func build(ctx context.Context, out string, services []image.Service) ([]image.Result, error) {
	root, err := filepath.Abs(repoRoot())
	if err != nil {
		return nil, err
	}
	var log bytes.Buffer
	rs, err := image.Build(ctx, image.Options{
		Repo: root, OutDir: out, CertsFile: hostCerts, Meta: testMeta, Services: services, Stderr: &log,
	})
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, log.String())
	}
	return rs, nil
}

func results(t *testing.T) []image.Result {
	t.Helper()
	if shared.err != nil {
		t.Fatalf("build the images: %v", shared.err)
	}
	return shared.results
}

func result(t *testing.T, service string) image.Result {
	t.Helper()
	for _, r := range results(t) {
		if r.Service == service {
			return r
		}
	}
	t.Fatalf("no image of %s", service)
	return image.Result{}
}

// TestReproducible builds admin a second time, into another directory, and
// expects the same digest: same source, same image.
func TestReproducible(t *testing.T) {
	first := result(t, "admin")
	svcs := slices.DeleteFunc(image.Services(), func(s image.Service) bool { return s.Name != "admin" })
	again, err := build(t.Context(), t.TempDir(), svcs)
	if err != nil {
		t.Fatalf("second build: %v", err)
	}
	if again[0].Digest != first.Digest || again[0].ImageID != first.ImageID {
		t.Fatalf("admin built twice: digest %s then %s, id %s then %s", first.Digest, again[0].Digest, first.ImageID, again[0].ImageID)
	}
	a, err := os.ReadFile(first.Path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(again[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s and %s differ", first.Path, again[0].Path)
	}
}

func TestTag(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    string
		err     bool
	}{
		{"v1.2.3", "qyai/gateway:v1.2.3", false},
		{"e9f7011-dirty", "qyai/gateway:e9f7011-dirty", false},
		{"latest", "", true},
		{"LATEST", "", true},
		{"", "", true},
		{"a/b", "", true},
	} {
		t.Run(tc.version, func(t *testing.T) {
			tag, err := image.Tag("gateway", tc.version)
			if tc.err {
				if err == nil {
					t.Fatalf("Tag(%q) = %s, want an error", tc.version, tag)
				}
				return
			}
			if err != nil || tag.String() != tc.want {
				t.Fatalf("Tag(%q) = %s, %v; want %s", tc.version, tag, err, tc.want)
			}
		})
	}
	if _, err := image.Tag("admin", "latest"); !errors.Is(err, image.ErrLatest) {
		t.Fatalf("latest: %v, want ErrLatest", err)
	}
}

func TestConfig(t *testing.T) {
	ports := map[string][]string{"gateway": {"8080/tcp", "9464/tcp"}, "meter": {"8082/tcp"}, "admin": {"8081/tcp"}}
	for _, r := range results(t) {
		t.Run(r.Service, func(t *testing.T) {
			m, err := tarball.LoadManifest(opener(r.Path))
			if err != nil {
				t.Fatalf("manifest.json of %s: %v", r.Path, err)
			}
			if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"qyai/" + r.Service + ":" + testMeta.Version}) {
				t.Fatalf("RepoTags = %+v", m)
			}
			img, err := tarball.ImageFromPath(r.Path, nil)
			if err != nil {
				t.Fatal(err)
			}
			// A docker-archive keeps the config and the layers, not the OCI
			// manifest: the image ID (config digest) is what survives a load.
			if id, _ := img.ConfigName(); id != r.ImageID {
				t.Fatalf("image ID read back %s, built %s", id, r.ImageID)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			c := cf.Config
			if cf.OS != "linux" || cf.Architecture != "amd64" || cf.Created.Unix() != 0 {
				t.Errorf("os/arch/created = %s/%s/%s", cf.OS, cf.Architecture, cf.Created.Time)
			}
			if c.User != "65532:65532" {
				t.Errorf("User = %q", c.User)
			}
			if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/" + r.Service}) || len(c.Cmd) != 0 {
				t.Errorf("Entrypoint, Cmd = %q, %q", c.Entrypoint, c.Cmd)
			}
			var got []string
			for p := range c.ExposedPorts {
				got = append(got, p)
			}
			slices.Sort(got)
			if !slices.Equal(got, ports[r.Service]) {
				t.Errorf("ExposedPorts = %v, want %v", got, ports[r.Service])
			}
			if !slices.Contains(c.Env, "PATH=/usr/local/bin") {
				t.Errorf("Env = %q, want PATH=/usr/local/bin", c.Env)
			}
			want := map[string]string{
				"org.opencontainers.image.title":    "qyai-" + r.Service,
				"org.opencontainers.image.source":   testMeta.Source,
				"org.opencontainers.image.revision": testMeta.Revision,
				"org.opencontainers.image.version":  testMeta.Version,
				"org.opencontainers.image.licenses": testMeta.Licenses,
			}
			for k, v := range want {
				if c.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
				}
			}
		})
	}
}

func opener(path string) tarball.Opener {
	return func() (io.ReadCloser, error) { return os.Open(path) }
}

// file is one entry of a layer.
type file struct {
	hdr  *tar.Header
	data []byte
}

func layerFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	return readLayer(t, layers[0])
}

func readLayer(t *testing.T, layer v1.Layer) map[string]file {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	files := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(h.Name, "/")] = file{hdr: h, data: data}
	}
}

func TestLayer(t *testing.T) {
	certs, err := os.ReadFile(hostCerts)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results(t) {
		t.Run(r.Service, func(t *testing.T) {
			img, err := tarball.ImageFromPath(r.Path, nil)
			if err != nil {
				t.Fatal(err)
			}
			files := layerFiles(t, img)
			bin := "/usr/local/bin/" + r.Service
			wantMode := map[string]int64{
				"/etc": 0o755, "/etc/passwd": 0o644, "/etc/group": 0o644,
				"/etc/ssl": 0o755, "/etc/ssl/certs": 0o755, image.CertsPath: 0o644,
				"/tmp": 0o1777, "/usr": 0o755, "/usr/local": 0o755, "/usr/local/bin": 0o755, bin: 0o755,
			}
			for p, mode := range wantMode {
				f, ok := files[p]
				if !ok {
					t.Errorf("%s missing", p)
					continue
				}
				if f.hdr.Mode != mode || f.hdr.Uid != 0 || f.hdr.Gid != 0 || !f.hdr.ModTime.Equal(time.Unix(0, 0)) {
					t.Errorf("%s: mode %o uid %d gid %d mtime %s; want %o 0 0 epoch", p, f.hdr.Mode, f.hdr.Uid, f.hdr.Gid, f.hdr.ModTime, mode)
				}
			}
			if len(files) != len(wantMode) {
				t.Errorf("%d entries, want %d", len(files), len(wantMode))
			}
			if !strings.Contains(string(files["/etc/passwd"].data), "nonroot:x:65532:65532:") ||
				!strings.Contains(string(files["/etc/group"].data), "nonroot:x:65532:") {
				t.Errorf("passwd/group lack uid/gid 65532:\n%s%s", files["/etc/passwd"].data, files["/etc/group"].data)
			}
			if !bytes.Equal(files[image.CertsPath].data, certs) {
				t.Errorf("%s differs from the build machine's %s", image.CertsPath, hostCerts)
			}
			info, err := buildinfo.Read(bytes.NewReader(files[bin].data))
			if err != nil {
				t.Fatalf("%s is not a Go binary: %v", bin, err)
			}
			settings := map[string]string{}
			for _, s := range info.Settings {
				settings[s.Key] = s.Value
			}
			// timetzdata: the time zone database is in the binary.
			for k, v := range map[string]string{"CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64", "-tags": "timetzdata", "-trimpath": "true"} {
				if settings[k] != v {
					t.Errorf("%s built with %s=%q, want %q", bin, k, settings[k], v)
				}
			}
			if info.Path != "github.com/qyai/qyai/"+r.Service+"/cmd/"+r.Service {
				t.Errorf("%s is %s", bin, info.Path)
			}
		})
	}
}
