package chartdoc_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/qyai/qyai/tools/helmtest/chartdoc"
)

func TestReadmeUpToDate(t *testing.T) {
	out, err := chartdoc.Generate("../../../helm/qyai")
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile("../../../helm/qyai/README.md")
	if err != nil || !bytes.Equal(have, out) {
		t.Errorf("helm/qyai/README.md is not up to date (%v): run cd tools/helmtest && GOWORK=off go run ./cmd/chartdoc", err)
	}
}

func TestValues(t *testing.T) {
	tests := []struct {
		name, src, want, wantErr string
	}{
		{"documented scalar", "# -- The answer.\nanswer: 42\n", "answer int 42 The answer.", ""},
		{"nested and continued", "a:\n  # -- First line,\n  # second line.\n  b: [x]\n", "a.b list [\"x\"] First line, second line.", ""},
		{"undocumented leaf", "a:\n  b: 1\n", "", "a.b has no # -- description"},
		{"a documented map covers its keys", "# -- Labels.\nlabels:\n  x: \"1\"\n", "labels object {\"x\":\"1\"} Labels.", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartdoc.Values([]byte(tc.src))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(vals) != 1 {
				t.Fatalf("values %+v, %v", vals, err)
			}
			v := vals[0]
			if got := v.Key + " " + v.Type + " " + v.Default + " " + v.Description; got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
