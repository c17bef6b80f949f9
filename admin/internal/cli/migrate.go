package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/qyai/qyai/pkg/chschema"
	"github.com/qyai/qyai/pkg/logging"
)

// migrateReport is the --json answer of migrate.
type migrateReport struct {
	Database string `json:"database"`
	Cluster  string `json:"cluster,omitempty"`
	Versions []int  `json:"versions"`
}

// migrate applies the ClickHouse migrations (pkg/chschema) and exits: the
// one-shot form of what meter and admin do at start, for a deployment step
// that must finish before new replicas roll out (the Helm chart's
// pre-install/pre-upgrade hook). Applying is idempotent, so it may run
// again, or race with a starting meter.
func (r *runner) migrate(ctx context.Context, args []string) error {
	f := newFlags("migrate", r.errw)
	if _, err := f.parse(args, 0); err != nil {
		return err
	}
	ch := r.cfg.ClickHouse
	o := chschema.Options{Addr: ch.Addr, Database: ch.Database, User: ch.User, Password: ch.Password, Cluster: ch.Cluster}
	// On a cluster, every node (chschema.ApplyAll).
	if err := chschema.ApplyAll(ctx, o, chschema.ApplyOptions{Cluster: ch.Cluster, Logger: logging.New(r.errw, "admin", slog.LevelInfo)}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	conn, err := chschema.Open(ctx, o)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = conn.Close() }() // read-only use from here
	versions, err := chschema.AppliedVersions(ctx, conn, ch.Database)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	rep := migrateReport{Database: ch.Database, Cluster: ch.Cluster, Versions: versions}
	if *f.json {
		return json.NewEncoder(r.out).Encode(rep)
	}
	_, err = fmt.Fprintf(r.out, "clickhouse %s: migrations applied, versions %v\n", ch.Database, versions)
	return err
}
