//go:build unix

package proxy

import (
	"syscall"
	"time"
)

// processCPU is the CPU time the process has used (user and system). The
// stream benchmark reports it per operation besides wall time, which on a
// shared machine counts the time spent waiting for a CPU too.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
