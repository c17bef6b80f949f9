// Command gateway is QYAI's OpenAI-compatible API gateway.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/gateway/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, os.Args[1:], os.Stderr); err != nil {
		os.Exit(1)
	}
}
