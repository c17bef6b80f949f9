// Command loadgen measures what the gateway adds over its upstream: the same
// workload straight to the simulator and through the gateway, printed as a
// Markdown table. `make bench` (deploy/local/bench.sh) starts the stack and
// runs it; see package loadgen for the phases and flags.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/deploy/internal/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := loadgen.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
