package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/publish/spool"
)

// TestRunRefusesUnsafeSpool: a gateway whose SPOOL_DIR another local user
// could write does not start, and says which directory and why.
func TestRunRefusesUnsafeSpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SPOOL_DIR", dir)
	t.Setenv("GATEWAY_ADDR", freePort(t))
	t.Setenv("KEY_PEPPER", "spool-test-pepper")
	// Bounds the test should the gateway start after all: Run then returns
	// nil and the test fails below.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	err := Run(ctx, nil, &stderr)
	if !errors.Is(err, spool.ErrUnsafe) {
		t.Fatalf("Run = %v, want spool.ErrUnsafe; stderr %q", err, stderr.String())
	}
	want := "gateway: usage publisher: unsafe spool directory: " + dir + " is writable by group or others"
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q does not hold %q", stderr.String(), want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the refused spool directory was written to: %v", entries)
	}
}
