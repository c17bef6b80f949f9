package chschema

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestMigrationsGolden pins the rendered SQL of both forms: a change to a
// migration shows up as a reviewable diff of testdata/*.sql.
func TestMigrationsGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts ApplyOptions
	}{
		{name: "single", opts: ApplyOptions{}},
		{name: "cluster", opts: ApplyOptions{Cluster: "qyai_cluster"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			migs, err := Migrations("qyai", tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for _, m := range migs {
				for i, s := range m.Statements {
					fmt.Fprintf(&b, "-- %04d_%s statement %d\n%s;\n\n", m.Version, m.Name, i+1, s)
				}
			}
			path := filepath.Join("testdata", tc.name+".sql")
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if b.String() != string(want) {
				t.Errorf("rendered migrations differ from %s (go test -update rewrites it):\n%s", path, b.String())
			}
		})
	}
}

func TestMigrationsOrderAndShape(t *testing.T) {
	migs, err := Migrations("qyai", ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(migs) == 0 || migs[0].Version != 1 || migs[0].Name != "usage_events" {
		t.Fatalf("first migration = %+v, want 0001_usage_events", migs)
	}
	for i, m := range migs {
		if i > 0 && m.Version <= migs[i-1].Version {
			t.Errorf("migration %d out of order", m.Version)
		}
		for _, s := range m.Statements {
			if strings.Contains(s, ";") {
				t.Errorf("migration %d: statement still holds a semicolon: %q", m.Version, s)
			}
			if strings.Contains(s, "{{") {
				t.Errorf("migration %d: unrendered template: %q", m.Version, s)
			}
		}
	}
}

func TestInvalidNames(t *testing.T) {
	for _, tc := range []struct {
		name, db, cluster string
	}{
		{name: "empty db", db: ""},
		{name: "db with dash", db: "qy-ai"},
		{name: "db injection", db: "qyai; DROP TABLE x"},
		{name: "cluster with space", db: "qyai", cluster: "a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Migrations(tc.db, ApplyOptions{Cluster: tc.cluster}); !errors.Is(err, ErrInvalidName) {
				t.Fatalf("err = %v, want ErrInvalidName", err)
			}
		})
	}
}

func TestSplitStatements(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{name: "one", in: "SELECT 1;\n", want: []string{"SELECT 1"}},
		{name: "no trailing semicolon", in: "SELECT 1", want: []string{"SELECT 1"}},
		{name: "comments dropped", in: "-- hi\nSELECT 1;\n-- bye\n", want: []string{"SELECT 1"}},
		{name: "two multi-line", in: "CREATE TABLE a\n(x UInt8)\nENGINE = Memory;\n\nSELECT ';' ;\n",
			want: []string{"CREATE TABLE a\n(x UInt8)\nENGINE = Memory", "SELECT ';'"}},
		{name: "semicolon inside a line stays", in: "SELECT 'a;b'\n;\n", want: []string{"SELECT 'a;b'"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := splitStatements(tc.in)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
