// Package image builds QYAI's container images offline: a static binary per
// service compiled from the repository, assembled with go-containerregistry
// onto an empty base (no pull, no Docker daemon) into one reproducible layer,
// and written as a docker-archive that `podman load` and `docker load` accept.
//
// The same source, Go toolchain and CA bundle give the same digest: every
// file has mtime 0 and uid/gid 0 unless said otherwise, the config's created
// time is 0, and the binaries are built with -trimpath and an empty build id.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Fixed parts of every image; deploy/docker/Dockerfile uses the same values.
const (
	// User is the image's user: distroless's "nonroot", uid and gid 65532.
	User = "65532:65532"
	// BinDir holds the service binary, /usr/local/bin/<service>.
	BinDir = "/usr/local/bin"
	// CertsPath is where Go's crypto/x509 looks first on Linux.
	CertsPath = "/etc/ssl/certs/ca-certificates.crt"
	// BuildTags embeds the time zone database in the binary (time/tzdata),
	// so the image needs no /usr/share/zoneinfo and the data is the Go
	// toolchain's, the same on every build machine.
	BuildTags = "timetzdata"
	// PathEnv is the image's PATH, so that `admin keys ...` works in
	// `kubectl exec`.
	PathEnv = "PATH=" + BinDir
)

// Service is what differs between the three images.
type Service struct {
	Name string
	// Ports are the config defaults' ports, as ExposedPorts keys.
	Ports []string
	// Env makes the service listen on every interface in a container
	// (the services' own defaults are loopback, right for a laptop,
	// useless behind a container's network namespace).
	Env []string
}

// Services returns gateway, meter and admin, in that order.
func Services() []Service {
	return []Service{
		{Name: "gateway", Ports: []string{"8080/tcp", "9464/tcp"}, Env: []string{"GATEWAY_ADDR=:8080", "GATEWAY_METRICS_ADDR=:9464"}},
		{Name: "meter", Ports: []string{"8082/tcp"}, Env: []string{"METER_ADDR=:8082"}},
		{Name: "admin", Ports: []string{"8081/tcp"}, Env: []string{"ADMIN_ADDR=:8081"}},
	}
}

// Meta is what the OCI labels and the tag say.
type Meta struct {
	Version  string // e.g. `git describe --tags --always --dirty`; never "latest"
	Revision string // the commit
	Source   string // the repository URL
	Licenses string // an SPDX expression
}

// Files are the non-binary contents of the layer.
type Files struct {
	Passwd, Group, Certs []byte
}

// Result is one written image.
type Result struct {
	Service string
	Tag     string
	Path    string
	Digest  v1.Hash // the manifest's digest
	ImageID v1.Hash // the config's digest: what `podman images` shows as ID
}

// ErrLatest says a version would tag an image "latest".
var ErrLatest = errors.New(`version "latest" is not allowed: images are tagged with what they were built from`)

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Tag returns qyai/<service>:<version>.
func Tag(service, version string) (name.Tag, error) {
	if version == "" {
		return name.Tag{}, errors.New("empty version")
	}
	if strings.EqualFold(version, "latest") {
		return name.Tag{}, ErrLatest
	}
	if !tagRE.MatchString(version) {
		return name.Tag{}, fmt.Errorf("version %q is not a valid image tag", version)
	}
	return name.NewTag("qyai/" + service + ":" + version)
}

// Compile builds the service's static binary from <repo>/<service> with
// GOWORK=off (each service module replaces pkg with ../pkg), as the
// Dockerfile does, into out.
func Compile(ctx context.Context, repo, service, out string, stderr io.Writer) error {
	cmd := exec.CommandContext(ctx, "go", "build",
		"-trimpath", "-buildvcs=false", "-tags", BuildTags,
		"-ldflags", "-s -w -buildid=",
		"-o", out, "./cmd/"+service)
	cmd.Dir = filepath.Join(repo, service)
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOWORK=off",
		"GOFLAGS=-mod=readonly")
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("compile %s: %w", service, err)
	}
	return nil
}

// Image assembles the image of svc around binary.
func Image(svc Service, binary []byte, files Files, meta Meta) (v1.Image, error) {
	layerTar, err := Layer(svc.Name, binary, files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer of %s: %w", svc.Name, err)
	}
	epoch := v1.Time{Time: time.Unix(0, 0).UTC()}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: epoch, CreatedBy: "qyai tools/images", Comment: svc.Name + " binary, users, CA certificates, /tmp"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer of %s: %w", svc.Name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", svc.Name, err)
	}
	cf = cf.DeepCopy()
	cf.Created = epoch
	cf.OS = "linux"
	cf.Architecture = "amd64"
	ports := map[string]struct{}{}
	for _, p := range svc.Ports {
		ports[p] = struct{}{}
	}
	cf.Config = v1.Config{
		Entrypoint:   []string{BinDir + "/" + svc.Name},
		User:         User,
		WorkingDir:   "/",
		Env:          append([]string{PathEnv}, svc.Env...),
		ExposedPorts: ports,
		Labels:       Labels(svc.Name, meta),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config of %s: %w", svc.Name, err)
	}
	return img, nil
}

// Labels returns the OCI annotations of the service's image.
func Labels(service string, meta Meta) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "qyai-" + service,
		"org.opencontainers.image.source":      meta.Source,
		"org.opencontainers.image.revision":    meta.Revision,
		"org.opencontainers.image.version":     meta.Version,
		"org.opencontainers.image.licenses":    meta.Licenses,
		"org.opencontainers.image.description": "QYAI " + service,
	}
}

// entry is one file or directory of the layer.
type entry struct {
	path string // without a leading slash
	mode int64
	data []byte // nil for a directory
	dir  bool
}

// Layer returns the uncompressed tar of the image's only layer: parent
// directories before their children, sorted, every mtime 0.
func Layer(service string, binary []byte, files Files) ([]byte, error) {
	if len(binary) == 0 || len(files.Passwd) == 0 || len(files.Group) == 0 || len(files.Certs) == 0 {
		return nil, fmt.Errorf("layer of %s: binary, passwd, group and CA certificates are all required", service)
	}
	entries := []entry{
		{path: "etc/", mode: 0o755, dir: true},
		{path: "etc/group", mode: 0o644, data: files.Group},
		{path: "etc/passwd", mode: 0o644, data: files.Passwd},
		{path: "etc/ssl/", mode: 0o755, dir: true},
		{path: "etc/ssl/certs/", mode: 0o755, dir: true},
		{path: strings.TrimPrefix(CertsPath, "/"), mode: 0o644, data: files.Certs},
		{path: "tmp/", mode: 0o1777, dir: true},
		{path: "usr/", mode: 0o755, dir: true},
		{path: "usr/local/", mode: 0o755, dir: true},
		{path: "usr/local/bin/", mode: 0o755, dir: true},
		{path: strings.TrimPrefix(BinDir, "/") + "/" + service, mode: 0o755, data: binary},
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.path,
			Mode:    e.mode,
			ModTime: time.Unix(0, 0),
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer of %s: %s: %w", service, e.path, err)
		}
		if !e.dir {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("layer of %s: %s: %w", service, e.path, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer of %s: %w", service, err)
	}
	return buf.Bytes(), nil
}

// Options says what Build builds.
type Options struct {
	Repo      string // the repository root
	OutDir    string // where <service>.tar goes
	CertsFile string // the CA bundle to copy, e.g. /etc/ssl/certs/ca-certificates.crt
	Meta      Meta
	Services  []Service
	Stderr    io.Writer // the go build output
}

// Build compiles and writes every image of opts.Services.
func Build(ctx context.Context, opts Options) ([]Result, error) {
	passwd, err := os.ReadFile(filepath.Join(opts.Repo, "deploy/docker/passwd"))
	if err != nil {
		return nil, fmt.Errorf("read passwd: %w", err)
	}
	group, err := os.ReadFile(filepath.Join(opts.Repo, "deploy/docker/group"))
	if err != nil {
		return nil, fmt.Errorf("read group: %w", err)
	}
	certs, err := os.ReadFile(opts.CertsFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificates: %w", err)
	}
	files := Files{Passwd: passwd, Group: group, Certs: certs}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.OutDir, err)
	}
	binDir, err := os.MkdirTemp("", "qyai-images-")
	if err != nil {
		return nil, fmt.Errorf("temp dir for binaries: %w", err)
	}
	defer func() { _ = os.RemoveAll(binDir) }()
	var results []Result
	for _, svc := range opts.Services {
		tag, err := Tag(svc.Name, opts.Meta.Version)
		if err != nil {
			return nil, err
		}
		bin := filepath.Join(binDir, svc.Name)
		if err := Compile(ctx, opts.Repo, svc.Name, bin, opts.Stderr); err != nil {
			return nil, err
		}
		binary, err := os.ReadFile(bin)
		if err != nil {
			return nil, fmt.Errorf("read binary of %s: %w", svc.Name, err)
		}
		img, err := Image(svc, binary, files, opts.Meta)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(opts.OutDir, svc.Name+".tar")
		if err := tarball.WriteToFile(path, tag, img); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		digest, err := img.Digest()
		if err != nil {
			return nil, fmt.Errorf("digest of %s: %w", svc.Name, err)
		}
		id, err := img.ConfigName()
		if err != nil {
			return nil, fmt.Errorf("config digest of %s: %w", svc.Name, err)
		}
		results = append(results, Result{Service: svc.Name, Tag: tag.String(), Path: path, Digest: digest, ImageID: id})
	}
	return results, nil
}
