package cli_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/admin/internal/cli"
	"github.com/qyai/qyai/admin/internal/config"
)

func TestMigrate(t *testing.T) {
	cs := scripts.ClickHouse(t)
	cfg := config.Client{
		URL:        "http://127.0.0.1:1", // migrate never calls the admin API
		ClickHouse: config.ClickHouse{Addr: cs.Addr, Database: "qyai_migrate", User: "default", QueryTimeout: 5 * time.Second},
	}
	run := func() []int {
		t.Helper()
		var out bytes.Buffer
		if err := cli.Run(t.Context(), []string{"migrate", "--json"}, cfg, &out, io.Discard); err != nil {
			t.Fatalf("migrate: %v", err)
		}
		var rep struct {
			Database string `json:"database"`
			Versions []int  `json:"versions"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("migrate --json %q: %v", out.String(), err)
		}
		if rep.Database != "qyai_migrate" || len(rep.Versions) == 0 {
			t.Fatalf("migrate report %+v: want database qyai_migrate and its versions", rep)
		}
		return rep.Versions
	}
	first := run() // a fresh server: creates the database too
	if again := run(); !slices.Equal(first, again) {
		t.Errorf("second migrate: versions %v, first %v (applying is idempotent)", again, first)
	}
}

func TestMigrateFailsClearly(t *testing.T) {
	cfg := config.Client{
		URL:        "http://127.0.0.1:1",
		ClickHouse: config.ClickHouse{Addr: "127.0.0.1:1", Database: database, User: "default", QueryTimeout: time.Second},
	}
	var errOut bytes.Buffer
	err := cli.Run(t.Context(), []string{"migrate"}, cfg, io.Discard, &errOut)
	if err == nil || errors.Is(err, cli.ErrUsage) || !strings.Contains(errOut.String(), "admin: migrate: ") {
		t.Errorf("migrate without clickhouse: %v, stderr %q", err, errOut.String())
	}
	err = cli.Run(t.Context(), []string{"migrate", "extra"}, cfg, io.Discard, io.Discard)
	if !errors.Is(err, cli.ErrUsage) {
		t.Errorf("migrate extra: %v, want ErrUsage", err)
	}
}
