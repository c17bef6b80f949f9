package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrUnsafe is returned by Open for a spool directory, or a file in it,
// that someone other than the process's user could have made, changed or
// replaced: anyone who can write the spool can forge usage events (billed
// to any key), delete them, or hold its lock so that the gateway cannot
// start.
var ErrUnsafe = errors.New("unsafe spool directory")

// prepareDir creates dir when missing (with 0700, as are the parents it
// creates) and checks that it, and the spool files already in it, are
// safe to use. It reports whether dir was created.
func prepareDir(dir string) (created bool, err error) {
	info, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("create spool directory: %w", err)
		}
		created = true
		info, err = os.Lstat(dir)
	}
	if err != nil {
		return false, fmt.Errorf("open spool %s: %w", dir, err)
	}
	if err := checkOwned(dir, info, fs.ModeDir); err != nil {
		return false, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("open spool %s: %w", dir, err)
	}
	for _, e := range entries {
		if !isSpoolFile(e.Name()) {
			continue // e.g. lost+found at the root of a volume
		}
		info, err := e.Info() // lstat: a symlink is reported as one
		if err != nil {
			return false, fmt.Errorf("open spool %s: %w", dir, err)
		}
		if err := checkOwned(filepath.Join(dir, e.Name()), info, 0); err != nil {
			return false, err
		}
	}
	return created, nil
}

// isSpoolFile reports whether name is one of the files a spool keeps.
func isSpoolFile(name string) bool {
	if _, ok := parseSegName(name); ok {
		return true
	}
	return name == offsetName || name == offsetTmp || name == lockName
}

// checkOwned refuses path unless it is of type typ (a directory, or a
// regular file when typ is 0; never a symlink), is owned by the process's
// effective user, and is not writable by group or others.
func checkOwned(path string, info fs.FileInfo, typ fs.FileMode) error {
	what := "a directory"
	if typ == 0 {
		what = "a regular file"
	}
	if info.Mode().Type() != typ {
		return fmt.Errorf("%w: %s is not %s (mode %s); a symlink is refused too", ErrUnsafe, path, what, info.Mode())
	}
	if uid, me, ok := foreignOwner(info); ok {
		return fmt.Errorf("%w: %s is owned by uid %d, not by the gateway's user (uid %d)", ErrUnsafe, path, uid, me)
	}
	if info.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by group or others (mode %s); run chmod go-w on it (0700 for the directory, 0600 for its files)",
			ErrUnsafe, path, info.Mode())
	}
	return nil
}
