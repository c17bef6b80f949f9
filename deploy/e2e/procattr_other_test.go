//go:build !linux

package e2e

import "syscall"

// procAttr: no parent-death signal outside Linux; cleanups stop the binaries.
func procAttr() *syscall.SysProcAttr { return nil }
