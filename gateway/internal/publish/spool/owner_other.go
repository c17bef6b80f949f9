//go:build !unix

package spool

import "io/fs"

// foreignOwner reports no foreign owner: without POSIX owners only the
// type and mode of the spool's files are checked.
func foreignOwner(fs.FileInfo) (owner, me int, foreign bool) { return 0, 0, false }
