// Command meter moves usage events from NATS JetStream into ClickHouse.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/meter/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		os.Exit(1) // app.Run has written the error to stderr
	}
}
