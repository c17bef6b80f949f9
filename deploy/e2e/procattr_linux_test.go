package e2e

import "syscall"

// procAttr makes a started binary die with the test binary: a test that
// times out panics and exits without running its cleanups, and the gateways,
// meters and admins it started would live on. (Pdeathsig follows the thread
// that started the child; the Go runtime keeps its threads unless one locked
// with LockOSThread exits, which no test here does.)
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
