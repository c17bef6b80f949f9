// Command upstream-sim serves the DeepSeek API simulator of package
// upstreamsim, the default upstream of `make run`, tests and benchmarks.
//
// Flags take their defaults from the environment: -addr from SIM_ADDR
// (127.0.0.1:8090), -api-key from SIM_API_KEY (none: no auth; a comma-separated
// list accepts each of its keys, each an account with a prompt cache of its
// own, as a pool of DeepSeek keys has), -default-tokens from SIM_DEFAULT_TOKENS
// (20), -usage-on-finish from SIM_USAGE_ON_FINISH (false: OpenAI's stream shape;
// true: DeepSeek's, usage on the finish chunk), -log-level from LOG_LEVEL (info).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/qyai/qyai/testkit/upstreamsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "upstream-sim:", err)
		os.Exit(1)
	}
}

// run is the whole program, with its environment passed in.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	defTokens, err := strconv.Atoi(env("SIM_DEFAULT_TOKENS", strconv.Itoa(upstreamsim.DefaultCompletionTokens)))
	if err != nil {
		return fmt.Errorf("SIM_DEFAULT_TOKENS: %w", err)
	}
	onFinish, err := strconv.ParseBool(env("SIM_USAGE_ON_FINISH", "false"))
	if err != nil {
		return fmt.Errorf("SIM_USAGE_ON_FINISH: %w", err)
	}
	fs := flag.NewFlagSet("upstream-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", env("SIM_ADDR", "127.0.0.1:8090"), "listen address (env SIM_ADDR)")
	apiKey := fs.String("api-key", env("SIM_API_KEY", ""), "bearer key to require, or comma-separated keys, each an account with its own prompt cache; empty: none (env SIM_API_KEY)")
	tokens := fs.Int("default-tokens", defTokens, "completion tokens when a request does not say (env SIM_DEFAULT_TOKENS)")
	usageOnFinish := fs.Bool("usage-on-finish", onFinish, "stream usage on the finish chunk, as DeepSeek sends it (env SIM_USAGE_ON_FINISH)")
	level := fs.String("log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("log level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var keys []string
	for k := range strings.SplitSeq(*apiKey, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	sim := upstreamsim.New(upstreamsim.Config{APIKeys: keys, DefaultTokens: *tokens, UsageOnFinish: *usageOnFinish, Logger: log})
	log.Info("upstream simulator listening", "addr", ln.Addr().String(), "auth", len(keys) > 0, "keys", len(keys))
	if err := sim.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("upstream simulator stopped")
	return nil
}
