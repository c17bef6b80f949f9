// Command benchmeter measures the metering pipeline end to end (publisher ->
// NATS JetStream -> meter -> ClickHouse) and prints a Markdown table. `make
// bench-meter` (deploy/local/bench-meter.sh) starts the servers and the meter
// and runs it; see package benchmeter for what it measures.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qyai/qyai/deploy/internal/benchmeter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := benchmeter.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchmeter:", err)
		os.Exit(1)
	}
}
