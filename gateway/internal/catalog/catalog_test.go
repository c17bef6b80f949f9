package catalog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltin(t *testing.T) {
	c := Builtin()
	want := map[string]struct{ upstream, thinking string }{
		"deepseek-v4-pro":   {"deepseek-v4-pro", ""},
		"deepseek-v4-flash": {"deepseek-v4-flash", ""},
		"deepseek-chat":     {"deepseek-v4-flash", ThinkingDisabled},
		"deepseek-reasoner": {"deepseek-v4-flash", ThinkingEnabled},
		"gpt-4o":            {"deepseek-v4-flash", ""},
		"gpt-4o-mini":       {"deepseek-v4-flash", ""},
	}
	for id, w := range want {
		t.Run(id, func(t *testing.T) {
			m := c.Lookup(id)
			if m == nil {
				t.Fatal("missing")
			}
			if m.Upstream != w.upstream || m.Thinking != w.thinking {
				t.Errorf("got upstream %q thinking %q", m.Upstream, m.Thinking)
			}
		})
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object, OwnedBy string
			Created             int64
		} `json:"data"`
	}
	if err := json.Unmarshal(c.ListJSON(), &list); err != nil {
		t.Fatal(err)
	}
	if list.Object != "list" || len(list.Data) != 6 || list.Data[0].ID != "deepseek-v4-pro" || list.Data[0].Created != 1743465600 {
		t.Errorf("list = %s", c.ListJSON())
	}
	if !strings.Contains(string(c.ListJSON()), `"owned_by":"qyai"`) {
		t.Errorf("owned_by missing: %s", c.ListJSON())
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]string{
		"empty":           "models: []",
		"no upstream":     "models: [{id: a}]",
		"duplicate":       "models: [{id: a, upstream: b}, {id: a, upstream: b}]",
		"bad thinking":    "models: [{id: a, upstream: b, thinking: maybe}]",
		"not yaml at all": "models: {",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(in)); err == nil {
				t.Error("want error")
			}
		})
	}
}

func TestHolderReloadKeepsOldOnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "models.yaml")
	write := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("models: [{id: one, upstream: up}]")
	h, err := NewHolder(p)
	if err != nil {
		t.Fatal(err)
	}
	if h.Changed() {
		t.Error("Changed right after load")
	}
	write("models: [{id: two, upstream: up}, {id: three, upstream: up}]")
	if !h.Changed() {
		t.Error("a rewritten file is not Changed")
	}
	if err := h.Reload(); err != nil || h.Get().Lookup("two") == nil {
		t.Fatalf("reload: %v", err)
	}
	write("models: [{id: broken}]")
	if err := h.Reload(); err == nil {
		t.Fatal("want error")
	}
	if h.Get().Lookup("two") == nil {
		t.Error("a failed reload replaced the catalog")
	}
}
