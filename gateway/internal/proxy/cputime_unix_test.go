//go:build unix

package proxy

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used, user and system. On a
// shared machine ns/op is wall time and counts the time other processes
// held the CPU; CPU time per op does not.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
