// Package chartdoc writes a chart's README from the helm-docs style comments
// of its values.yaml: each value is preceded by "# -- description" (more
// "# " lines continue it), and the README's values table lists key, type,
// default and description. A value without a description is an error, so
// that every value stays documented.
package chartdoc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

// Value is one documented value.
type Value struct {
	Key, Type, Default, Description string
}

// Chart is what the README template sees.
type Chart struct {
	Name, Version, AppVersion, Description, KubeVersion string
	Values                                              []Value
	Table                                               string
}

var keyRE = regexp.MustCompile(`^(\s*)([A-Za-z0-9_.-]+):(\s|$)`)

// Values parses values.yaml's comments and defaults.
func Values(src []byte) ([]Value, error) {
	var tree map[string]any
	if err := yaml.Unmarshal(src, &tree); err != nil {
		return nil, fmt.Errorf("parse values: %w", err)
	}
	type frame struct {
		indent int
		key    string
	}
	var stack []frame
	var doc []string
	inDoc := false
	var out []Value
	documented := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(src))
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trim, "# -- "):
			doc, inDoc = []string{strings.TrimPrefix(trim, "# -- ")}, true
			continue
		case inDoc && strings.HasPrefix(trim, "# "):
			doc = append(doc, strings.TrimPrefix(trim, "# "))
			continue
		case trim == "" || strings.HasPrefix(trim, "#") || strings.HasPrefix(trim, "- "):
			if trim == "" || strings.HasPrefix(trim, "#") {
				doc, inDoc = nil, false
			}
			continue
		}
		m := keyRE.FindStringSubmatch(line)
		if m == nil {
			continue // a continuation of a block scalar
		}
		indent := len(m[1])
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		stack = append(stack, frame{indent, m[2]})
		if doc == nil {
			continue
		}
		keys := make([]string, len(stack))
		for i, f := range stack {
			keys[i] = f.key
		}
		path := strings.Join(keys, ".")
		v, ok := lookup(tree, keys)
		if !ok {
			return nil, fmt.Errorf("values.yaml: %s is documented but not found", path)
		}
		def, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out = append(out, Value{Key: path, Type: typeOf(v), Default: string(def), Description: strings.Join(doc, " ")})
		documented[path] = true
		doc, inDoc = nil, false
	}
	var missing []error
	for _, leaf := range leaves(tree, "") {
		if !coveredBy(leaf, documented) {
			missing = append(missing, fmt.Errorf("values.yaml: %s has no # -- description", leaf))
		}
	}
	return out, errors.Join(missing...)
}

func coveredBy(leaf string, documented map[string]bool) bool {
	for p := leaf; p != ""; {
		if documented[p] {
			return true
		}
		i := strings.LastIndex(p, ".")
		if i < 0 {
			return false
		}
		p = p[:i]
	}
	return false
}

// leaves are the paths of the tree's values that are not non-empty maps.
func leaves(v any, prefix string) []string {
	m, ok := v.(map[string]any)
	if !ok || (len(m) == 0 && prefix != "") {
		return []string{prefix}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		out = append(out, leaves(m[k], p)...)
	}
	return out
}

func lookup(tree map[string]any, keys []string) (any, bool) {
	var cur any = tree
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func typeOf(v any) string {
	switch v := v.(type) {
	case string:
		return "string"
	case bool:
		return "bool"
	case float64:
		if v == float64(int64(v)) {
			return "int"
		}
		return "float"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// Table renders the values as a Markdown table.
func Table(vals []Value) string {
	var b strings.Builder
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	esc := strings.NewReplacer("|", `\|`, "\n", " ")
	for _, v := range vals {
		def := v.Default
		if len(def) > 120 {
			def = def[:117] + "..."
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", v.Key, v.Type, esc.Replace(def), esc.Replace(v.Description))
	}
	return b.String()
}

// Generate renders dir/README.md.gotmpl with the chart's metadata and values.
func Generate(dir string) ([]byte, error) {
	src, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return nil, err
	}
	vals, err := Values(src)
	if err != nil {
		return nil, err
	}
	meta, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	var c struct {
		Name        string `json:"name"`
		Version     string `json:"version"`
		AppVersion  string `json:"appVersion"`
		Description string `json:"description"`
		KubeVersion string `json:"kubeVersion"`
	}
	if err := yaml.Unmarshal(meta, &c); err != nil {
		return nil, fmt.Errorf("parse Chart.yaml: %w", err)
	}
	tpl, err := template.ParseFiles(filepath.Join(dir, "README.md.gotmpl"))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = tpl.Execute(&b, Chart{Name: c.Name, Version: c.Version, AppVersion: c.AppVersion, Description: c.Description,
		KubeVersion: c.KubeVersion, Values: vals, Table: Table(vals)})
	return b.Bytes(), err
}
