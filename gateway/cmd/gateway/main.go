// Command gateway is QYAI's OpenAI-compatible API gateway.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/qyai/qyai/gateway/internal/app"
)

// defaultGOGC is the gateway's GC target unless GOGC is set. Its live heap
// is small (about 10 MB) while every request allocates, so Go's default of
// 100 collects many times a second; 400 makes that a quarter as often for
// a few tens of MB more memory.
const defaultGOGC = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		os.Exit(1) // app.Run has written the error to stderr
	}
}
