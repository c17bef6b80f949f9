// Command chartdoc writes helm/qyai/README.md from the chart's values.yaml
// comments and README.md.gotmpl; with -check it only reports whether the
// README is up to date.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qyai/qyai/tools/helmtest/chartdoc"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chartdoc:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("chart", "../../helm/qyai", "chart directory")
	check := flag.Bool("check", false, "fail when README.md is not up to date instead of writing it")
	flag.Parse()
	out, err := chartdoc.Generate(*dir)
	if err != nil {
		return err
	}
	path := filepath.Join(*dir, "README.md")
	if *check {
		have, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(have, out) {
			return fmt.Errorf("%s is not up to date: run cd tools/helmtest && GOWORK=off go run ./cmd/chartdoc", path)
		}
		return nil
	}
	return os.WriteFile(path, out, 0o644)
}
