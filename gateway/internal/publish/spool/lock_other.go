//go:build !unix

package spool

import (
	"os"
	"path/filepath"
)

// lockDir opens dir/LOCK; without flock(2) the directory is not locked.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
}
