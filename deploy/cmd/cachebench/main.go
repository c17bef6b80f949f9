// Command cachebench measures what cache-aware routing saves: the same
// multi-turn workload through a gateway routing with affinity and through
// one routing by round robin, both in front of a four-key pool of the
// simulator, printed as a Markdown table. `make bench` (deploy/local/bench.sh)
// starts the stack and runs it; see package cachebench for the flags.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/deploy/internal/cachebench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cachebench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cachebench:", err)
		os.Exit(1)
	}
}
