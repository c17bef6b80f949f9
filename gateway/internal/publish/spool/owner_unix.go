//go:build unix

package spool

import (
	"io/fs"
	"os"
	"syscall"
)

// foreignOwner returns the owner of info and the process's effective uid,
// and whether they differ.
func foreignOwner(info fs.FileInfo) (owner, me int, foreign bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	me = os.Geteuid()
	return int(st.Uid), me, int(st.Uid) != me
}
