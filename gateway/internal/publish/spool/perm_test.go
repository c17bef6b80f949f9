//go:build unix

package spool

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// nobody stands for another local user: the tests chown to it (they run
// as root in CI; as another user the chown fails and the test says so).
const nobody = 65534

func chown(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, nobody, nobody); err != nil {
		t.Fatalf("chown %s to uid %d (to stand for another user; needs root): %v", path, nobody, err)
	}
}

// ownDir returns a fresh 0700 directory of the test's user.
func ownDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(t *testing.T, path string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, nil, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestOpenRefusesUnsafeDirectories: a spool someone else could write is
// refused at Open with an error that names the path and the problem, and
// nothing is created in it.
func TestOpenRefusesUnsafeDirectories(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the directory to open and the path the error must name.
		setup func(t *testing.T) (dir, bad string)
		want  string
	}{
		{"world-writable directory", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			return dir, dir
		}, "writable by group or others"},
		{"world-writable sticky directory", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
				t.Fatal(err)
			}
			return dir, dir
		}, "writable by group or others"},
		{"group-writable directory", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			if err := os.Chmod(dir, 0o770); err != nil {
				t.Fatal(err)
			}
			return dir, dir
		}, "writable by group or others"},
		{"symlinked directory", func(t *testing.T) (string, string) {
			target := ownDir(t)
			link := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link, link
		}, "is not a directory"},
		{"a file, not a directory", func(t *testing.T) (string, string) {
			p := filepath.Join(t.TempDir(), "spool")
			writeFile(t, p, 0o600)
			return p, p
		}, "is not a directory"},
		{"directory of another user", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			chown(t, dir)
			return dir, dir
		}, "owned by uid 65534"},
		{"lock file of another user", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			p := filepath.Join(dir, lockName)
			writeFile(t, p, 0o600)
			chown(t, p)
			return dir, p
		}, "owned by uid 65534"},
		{"world-writable lock file", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			p := filepath.Join(dir, lockName)
			writeFile(t, p, 0o666)
			return dir, p
		}, "writable by group or others"},
		{"symlinked lock file", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			target := filepath.Join(t.TempDir(), "elsewhere")
			writeFile(t, target, 0o600)
			p := filepath.Join(dir, lockName)
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			return dir, p
		}, "is not a regular file"},
		{"forged segment of another user", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			p := filepath.Join(dir, segName(1))
			if err := os.WriteFile(p, appendFrame(nil, rec(1)), 0o600); err != nil {
				t.Fatal(err)
			}
			chown(t, p)
			return dir, p
		}, "owned by uid 65534"},
		{"group-writable segment", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			p := filepath.Join(dir, segName(1))
			writeFile(t, p, 0o620)
			return dir, p
		}, "writable by group or others"},
		{"offset file of another user", func(t *testing.T) (string, string) {
			dir := ownDir(t)
			p := filepath.Join(dir, offsetName)
			writeFile(t, p, 0o600)
			chown(t, p)
			return dir, p
		}, "owned by uid 65534"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, bad := tc.setup(t)
			before, _ := os.ReadDir(dir)
			s, err := Open(Options{Dir: dir, Log: slog.New(slog.DiscardHandler)})
			if err == nil {
				_ = s.Close()
				t.Fatal("open succeeded, want ErrUnsafe")
			}
			if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), bad+" ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open: %v\nwant ErrUnsafe naming %s and %q", err, bad, tc.want)
			}
			if after, _ := os.ReadDir(dir); len(after) != len(before) {
				t.Errorf("open changed the refused directory: %d entries, had %d", len(after), len(before))
			}
		})
	}
}

// TestOpenAcceptsOwnDirectory: a directory of our own user that only we
// can write is used, setgid or not (a subdirectory of a Kubernetes volume
// with fsGroup), and other entries (lost+found at a volume's root) are
// ignored.
func TestOpenAcceptsOwnDirectory(t *testing.T) {
	for _, mode := range []os.FileMode{0o700, 0o755, 0o700 | os.ModeSetgid} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := ownDir(t)
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			lf := filepath.Join(dir, "lost+found")
			if err := os.Mkdir(lf, 0o700); err != nil {
				t.Fatal(err)
			}
			chown(t, lf)
			s, _ := open(t, Options{Dir: dir})
			put(t, s, 0, 2)
			if st := s.Stats(); st.Appended != 2 {
				t.Errorf("stats %+v, want 2 appended", st)
			}
		})
	}
}

// TestCreatedModes: Open creates the directory and its missing parents
// 0700 and every file 0600.
func TestCreatedModes(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "state", "qyai", "spool")
	s, _ := open(t, Options{Dir: dir})
	put(t, s, 0, 3)
	r := s.NewReader()
	recs, _, _ := readAll(t, r)
	r.Close()
	wantRecords(t, recs, 0, 3)
	// Commit one record of three: the offset is written and the segment kept.
	first := s.NewReader()
	e, ok, err := first.Next()
	first.Close()
	if err != nil || !ok {
		t.Fatalf("first record: %v %v", ok, err)
	}
	s.Commit(e.Next, 1)
	_ = s.Close()

	for _, d := range []string{filepath.Join(base, "state"), filepath.Join(base, "state", "qyai"), dir} {
		info, err := os.Lstat(d)
		if err != nil {
			t.Fatal(err)
		}
		if !info.IsDir() || info.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %s, want a directory with 0700", d, info.Mode())
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Name()] = true
		if !info.Mode().IsRegular() || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %s, want a regular file with 0600", e.Name(), info.Mode())
		}
	}
	for _, name := range []string{lockName, offsetName, segName(1)} {
		if !seen[name] {
			t.Errorf("%s not in the spool (have %v)", name, seen)
		}
	}
	// What Open made passes its own checks.
	s2, _ := open(t, Options{Dir: dir})
	if st := s2.Stats(); st.Pending != 2 {
		t.Errorf("reopened stats %+v, want 2 pending", st)
	}
}
