// Command images builds QYAI's container images offline into
// <repo>/.bin/images/<service>.tar (see package image) and prints each
// image's tag, digest and ID. Run it from tools/images with GOWORK=off:
//
//	go run . -repo ../.. [-version v1.2.3]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/qyai/qyai/tools/images/internal/image"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	repo := fs.String("repo", "../..", "the repository root")
	out := fs.String("out", "", "output directory (default <repo>/.bin/images)")
	version := fs.String("version", "", "image tag and version label (default `git describe --tags --always --dirty`)")
	revision := fs.String("revision", "", "revision label (default `git rev-parse HEAD`)")
	source := fs.String("source", "https://github.com/qyai/qyai", "source label")
	licenses := fs.String("licenses", "NOASSERTION", "licenses label (SPDX; the repository has no LICENSE file yet)")
	certs := fs.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to put in the images")
	only := fs.String("services", "gateway,meter,admin", "comma-separated services to build")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	root, err := filepath.Abs(*repo)
	if err != nil {
		return fmt.Errorf("repository root: %w", err)
	}
	if *version == "" {
		if *version, err = git(ctx, root, "describe", "--tags", "--always", "--dirty"); err != nil {
			return err
		}
	}
	if *revision == "" {
		if *revision, err = git(ctx, root, "rev-parse", "HEAD"); err != nil {
			return err
		}
	}
	if *out == "" {
		*out = filepath.Join(root, ".bin", "images")
	}
	var services []image.Service
	want := strings.Split(*only, ",")
	for _, s := range image.Services() {
		if slices.Contains(want, s.Name) {
			services = append(services, s)
		}
	}
	if len(services) != len(want) {
		return fmt.Errorf("-services %q: each must be one of gateway, meter, admin", *only)
	}
	results, err := image.Build(ctx, image.Options{
		Repo:      root,
		OutDir:    *out,
		CertsFile: *certs,
		Meta:      image.Meta{Version: *version, Revision: *revision, Source: *source, Licenses: *licenses},
		Services:  services,
		Stderr:    stderr,
	})
	if err != nil {
		return err
	}
	for _, r := range results {
		_, _ = fmt.Fprintf(stdout, "%s %s digest %s id %s\n", r.Path, r.Tag, r.Digest, r.ImageID)
	}
	return nil
}

// git runs git in the repository and returns its trimmed output.
func git(ctx context.Context, repo string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = repo
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(b)), nil
}
