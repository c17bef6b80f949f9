// Package helmtest renders the QYAI Helm chart (helm/qyai) in-process with
// the Helm SDK, as `helm template` would, and decodes what it renders, for
// the chart's tests. It is a tools module of its own (GOWORK=off): no
// service imports it, and its Kubernetes and Helm dependencies stay out of
// the services' go.mod files.
package helmtest

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

// KubeVersion is the Kubernetes version the chart is rendered for: the
// one DEPLOY-FACTS.md builds the real control plane at.
const KubeVersion = "v1.37.2"

// Release is the release (and namespace) name of every render: a first
// install of the release "qyai" into the namespace "qyai".
const Release = "qyai"

// Manifest is one rendered document.
type Manifest struct {
	Source string // the template, e.g. qyai/templates/services.yaml
	YAML   []byte
}

// Load loads the chart in dir.
func Load(dir string) (*chart.Chart, error) {
	c, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return c, nil
}

// ReadValues reads a values file (an example, or a test's own).
func ReadValues(file string) (map[string]any, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	v := map[string]any{}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("read values %s: %w", file, err)
	}
	return v, nil
}

// Merge returns base with over laid on it, maps merged key by key.
func Merge(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if bm, ok := out[k].(map[string]any); ok {
			if om, ok := v.(map[string]any); ok {
				out[k] = Merge(bm, om)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// Render renders c with the user values vals (schema checked, as helm does)
// and returns its documents in a stable order: by template, then position.
func Render(c *chart.Chart, vals map[string]any) ([]Manifest, error) {
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = chartutil.KubeVersion{Version: KubeVersion, Major: "1", Minor: "37"}
	opts := chartutil.ReleaseOptions{Name: Release, Namespace: Release, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(c, vals, opts, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(c, rv)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []Manifest
	for _, n := range names {
		if path.Ext(n) != ".yaml" || strings.HasPrefix(path.Base(n), "_") {
			continue // NOTES.txt, helpers
		}
		for _, doc := range splitDocs(files[n]) {
			out = append(out, Manifest{Source: n, YAML: doc})
		}
	}
	return out, nil
}

// splitDocs splits a YAML stream on "---" lines, dropping documents that
// hold only comments or whitespace.
func splitDocs(s string) [][]byte {
	var docs [][]byte
	for _, d := range strings.Split("\n"+s, "\n---") {
		body := false
		for _, l := range strings.Split(d, "\n") {
			t := strings.TrimSpace(l)
			if t != "" && !strings.HasPrefix(t, "#") {
				body = true
				break
			}
		}
		if body {
			docs = append(docs, bytes.TrimLeft([]byte(d), "\n"))
		}
	}
	return docs
}
