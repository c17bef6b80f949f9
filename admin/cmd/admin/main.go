// Command admin serves QYAI's admin API (API keys, usage for finance) and the
// public billing endpoints the gateway passes through; with a subcommand
// (admin keys ..., admin usage ...) it is the operators' CLI.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/admin/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		os.Exit(1) // app.Run has written the error to stderr
	}
}
