// Package catalog is the model catalog: public model ids and aliases, the
// upstream model each maps to, thinking mode and limits. It is data
// (models.yaml), swapped atomically on reload so requests never see a half
// loaded catalog.
package catalog

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"gopkg.in/yaml.v3"
)

//go:embed models.yaml
var builtin []byte

// Thinking modes a model may force.
const (
	ThinkingEnabled  = "enabled"
	ThinkingDisabled = "disabled"
)

// Model is one public model id.
type Model struct {
	ID              string `yaml:"id"`
	Upstream        string `yaml:"upstream"`
	Thinking        string `yaml:"thinking"`
	OwnedBy         string `yaml:"owned_by"`
	Created         int64  `yaml:"created"`
	ContextWindow   int64  `yaml:"context_window"`
	MaxOutputTokens int64  `yaml:"max_output_tokens"`
	Description     string `yaml:"description"`
}

// Catalog is an immutable set of models plus the pre-rendered /v1/models
// answers, so listing models costs no encoding per request.
type Catalog struct {
	byID     map[string]*Model
	order    []*Model
	listJSON []byte
	oneJSON  map[string][]byte
}

// Lookup returns the model with the public id, or nil.
func (c *Catalog) Lookup(id string) *Model { return c.byID[id] }

// Models returns the models in file order.
func (c *Catalog) Models() []*Model { return c.order }

// ListJSON is the body of GET /v1/models.
func (c *Catalog) ListJSON() []byte { return c.listJSON }

// ModelJSON is the body of GET /v1/models/{id}, or nil.
func (c *Catalog) ModelJSON(id string) []byte { return c.oneJSON[id] }

type wireModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// Parse builds a catalog from YAML, reporting every problem.
func Parse(b []byte) (*Catalog, error) {
	var f struct {
		Models []Model `yaml:"models"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse model catalog: %w", err)
	}
	c := &Catalog{byID: map[string]*Model{}, oneJSON: map[string][]byte{}}
	var errs []error
	list := struct {
		Object string      `json:"object"`
		Data   []wireModel `json:"data"`
	}{Object: "list", Data: []wireModel{}}
	for i := range f.Models {
		m := &f.Models[i]
		switch {
		case m.ID == "" || m.Upstream == "":
			errs = append(errs, fmt.Errorf("model #%d: id and upstream are required", i+1))
			continue
		case c.byID[m.ID] != nil:
			errs = append(errs, fmt.Errorf("model %s: duplicate id", m.ID))
			continue
		case m.Thinking != "" && m.Thinking != ThinkingEnabled && m.Thinking != ThinkingDisabled:
			errs = append(errs, fmt.Errorf("model %s: thinking must be enabled, disabled or empty", m.ID))
		case m.MaxOutputTokens < 0 || m.ContextWindow < 0:
			errs = append(errs, fmt.Errorf("model %s: negative limit", m.ID))
		}
		if m.OwnedBy == "" {
			m.OwnedBy = "qyai"
		}
		c.byID[m.ID] = m
		c.order = append(c.order, m)
		w := wireModel{ID: m.ID, Object: "model", Created: m.Created, OwnedBy: m.OwnedBy}
		list.Data = append(list.Data, w)
		c.oneJSON[m.ID], _ = json.Marshal(w)
	}
	if len(c.order) == 0 {
		errs = append(errs, errors.New("no models"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("model catalog: %w", err)
	}
	c.listJSON, _ = json.Marshal(list)
	return c, nil
}

// Builtin returns the catalog compiled into the binary.
func Builtin() *Catalog {
	c, err := Parse(builtin)
	if err != nil {
		panic(err) // guarded by TestBuiltin
	}
	return c
}

// Holder serves the current catalog and swaps in a new one on Reload.
type Holder struct {
	path string
	cur  atomic.Pointer[Catalog]
	// stamp is the size and modification time of the file last loaded.
	stamp atomic.Value
}

type fileStamp struct {
	size    int64
	modTime int64
}

// NewHolder loads path, or the built-in catalog when path is empty.
func NewHolder(path string) (*Holder, error) {
	h := &Holder{path: path}
	if err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Get returns the current catalog.
func (h *Holder) Get() *Catalog { return h.cur.Load() }

// Reload reads the file again; on error the current catalog stays.
func (h *Holder) Reload() error {
	if h.path == "" {
		h.cur.Store(Builtin())
		return nil
	}
	st, err := os.Stat(h.path)
	if err != nil {
		return fmt.Errorf("read model catalog: %w", err)
	}
	b, err := os.ReadFile(h.path)
	if err != nil {
		return fmt.Errorf("read model catalog: %w", err)
	}
	h.stamp.Store(fileStamp{st.Size(), st.ModTime().UnixNano()})
	c, err := Parse(b)
	if err != nil {
		return err
	}
	h.cur.Store(c)
	return nil
}

// Changed reports whether the file differs from the one last loaded. It
// compares size and modification time, which is what a deploy or a
// Kubernetes ConfigMap update changes.
func (h *Holder) Changed() bool {
	if h.path == "" {
		return false
	}
	st, err := os.Stat(h.path)
	if err != nil {
		return false
	}
	old, _ := h.stamp.Load().(fileStamp)
	return old != fileStamp{st.Size(), st.ModTime().UnixNano()}
}
