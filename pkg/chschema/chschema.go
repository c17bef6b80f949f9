// Package chschema owns the ClickHouse schema of QYAI: versioned migrations
// embedded from migrations/NNNN_name.sql, applied in order by Apply; the
// rollup that keeps the exact hourly aggregates (Rollup); the price table
// as data (SyncPrices); and a connection helper, Open, for the native
// protocol. docs/clickhouse.md documents the tables and the exactness proof.
//
// Every service that needs the schema (meter, admin) calls Apply at start.
// Concurrent appliers are harmless: every statement is idempotent
// (IF NOT EXISTS), and the bookkeeping table schema_migrations is a
// ReplacingMergeTree keyed by version, so two appliers recording the same
// version leave one logical row.
//
// The SQL must stay valid on ClickHouse 18.16 (what runs locally) and on a
// modern server (production). 18.16 has no ADD COLUMN IF NOT EXISTS: a later
// migration that alters a table lists the error codes that mean "already
// done" in a comment line "-- tolerate: 44" (44 is "column already exists").
//
// Cluster form. With ApplyOptions.Cluster set, every DDL runs ON CLUSTER,
// MergeTree engines become Replicated*MergeTree with the conventional
// ZooKeeper path /clickhouse/tables/{shard}/<db>/<table> and replica
// '{replica}' (both macros must be defined on every server), the storage
// table is named <table>_local, and a Distributed table with the public name
// shards by key_id (so all copies of one event meet on one shard and FINAL
// collapses them). Writers that need "acked means stored" on a cluster set
// insert_distributed_sync=1. Templates in the .sql files see .DB, .Cluster,
// .OnCluster and the functions engine and local.
package chschema

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ClickHouse error codes that Apply treats as "already done" for IF NOT
// EXISTS statements racing with another applier.
const (
	codeTableAlreadyExists    = 57
	codeDatabaseAlreadyExists = 82
	codeUnknownDatabase       = 81
)

// ErrInvalidName means a database or cluster name is not a plain identifier.
var ErrInvalidName = errors.New("invalid identifier")

var (
	identRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	fileRE     = regexp.MustCompile(`^([0-9]{4})_([a-z0-9_]+)\.sql$`)
	tolerateRE = regexp.MustCompile(`(?m)^--\s*tolerate:\s*([0-9 ,]+)$`)
)

// Options says how to reach a ClickHouse server over the native protocol.
type Options struct {
	Addr     string // host:port of the native protocol, e.g. 127.0.0.1:9000
	Database string // default database of the connection; created if missing
	User     string
	Password string
	// Cluster, when set, makes the database creation done by Open use
	// ON CLUSTER. It must match ApplyOptions.Cluster.
	Cluster string
	// DialTimeout defaults to 2 s, ReadTimeout to 30 s.
	DialTimeout time.Duration
	ReadTimeout time.Duration
}

// Open connects to ClickHouse and pings it. The server refuses a connection
// whose default database does not exist, so on a fresh server Open first
// creates Database over a bootstrap connection to the "default" database.
func Open(ctx context.Context, o Options) (driver.Conn, error) {
	if o.Database != "" && !identRE.MatchString(o.Database) {
		return nil, fmt.Errorf("open clickhouse: database %q: %w", o.Database, ErrInvalidName)
	}
	conn, err := open(ctx, o)
	if err == nil || !isCode(err, codeUnknownDatabase) {
		return conn, err
	}
	boot := o
	boot.Database = "default"
	bc, err := open(ctx, boot)
	if err != nil {
		return nil, err
	}
	defer func() { _ = bc.Close() }() // the bootstrap connection only created the database
	if err := createDatabase(ctx, bc, o.Database, o.Cluster); err != nil {
		return nil, err
	}
	return open(ctx, o)
}

func open(ctx context.Context, o Options) (driver.Conn, error) {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 2 * time.Second
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{o.Addr},
		Auth: clickhouse.Auth{
			Database: o.Database,
			Username: o.User,
			Password: o.Password,
		},
		DialTimeout:     o.DialTimeout,
		ReadTimeout:     o.ReadTimeout,
		MaxOpenConns:    8,
		MaxIdleConns:    4,
		ConnMaxLifetime: time.Hour,
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", o.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close() // the ping error is the one to report
		return nil, fmt.Errorf("ping clickhouse %s: %w", o.Addr, err)
	}
	return conn, nil
}

// ApplyOptions tunes Apply.
type ApplyOptions struct {
	// Cluster selects the cluster form (see the package comment) when set.
	Cluster string
	// Logger receives one line per applied migration. Required by Apply.
	Logger *slog.Logger
}

// Migration is one versioned schema change, rendered for a database.
type Migration struct {
	Version    int
	Name       string
	Statements []string
	// Tolerate lists ClickHouse error codes that mean the statement's
	// effect is already there.
	Tolerate []int32
}

// Migrations renders every embedded migration for db, oldest first.
func Migrations(db string, opts ApplyOptions) ([]Migration, error) {
	if err := CheckNames(db, opts.Cluster); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	data := templateData{DB: db, Cluster: opts.Cluster}
	if opts.Cluster != "" {
		data.OnCluster = " ON CLUSTER " + opts.Cluster
	}
	var out []Migration
	seen := map[int]bool{}
	for _, e := range entries {
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration file %s: name is not NNNN_name.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if v == 0 || seen[v] {
			return nil, fmt.Errorf("migration file %s: version %d is zero or duplicate", e.Name(), v)
		}
		seen[v] = true
		src, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		mig, err := render(v, m[2], string(src), data)
		if err != nil {
			return nil, fmt.Errorf("render migration %s: %w", e.Name(), err)
		}
		out = append(out, mig)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

type templateData struct {
	DB        string
	Cluster   string
	OnCluster string
}

func render(version int, name, src string, data templateData) (Migration, error) {
	funcs := template.FuncMap{
		// engine names the table engine: kind as is on one server, the
		// Replicated variant with the conventional ZooKeeper path on a
		// cluster. params, if any, are the engine's own parameters (the
		// version column of a ReplacingMergeTree, the summed columns of a
		// SummingMergeTree).
		"engine": func(kind, table string, params ...string) string {
			if data.Cluster == "" {
				if len(params) == 0 {
					return kind
				}
				return kind + "(" + strings.Join(params, ", ") + ")"
			}
			args := append([]string{fmt.Sprintf("'/clickhouse/tables/{shard}/%s/%s'", data.DB, table), "'{replica}'"}, params...)
			return fmt.Sprintf("Replicated%s(%s)", kind, strings.Join(args, ", "))
		},
		// local names the storage table behind a public name.
		"local": func(table string) string {
			if data.Cluster == "" {
				return table
			}
			return table + "_local"
		},
	}
	tmpl, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(src)
	if err != nil {
		return Migration{}, err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		return Migration{}, err
	}
	mig := Migration{Version: version, Name: name, Statements: splitStatements(buf.String())}
	for _, m := range tolerateRE.FindAllStringSubmatch(src, -1) {
		for _, f := range strings.FieldsFunc(m[1], func(r rune) bool { return r == ',' || r == ' ' }) {
			c, err := strconv.ParseInt(f, 10, 32)
			if err != nil {
				return Migration{}, fmt.Errorf("tolerate %q: %w", f, err)
			}
			mig.Tolerate = append(mig.Tolerate, int32(c))
		}
	}
	if len(mig.Statements) == 0 {
		return Migration{}, errors.New("no statements")
	}
	return mig, nil
}

// splitStatements drops whole-line "--" comments and splits on semicolons
// that end a line. ClickHouse takes one statement per query, and the
// migrations never put ";" at the end of a line inside a string literal.
func splitStatements(sql string) []string {
	var stmts []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			stmts = append(stmts, s)
		}
		cur.Reset()
	}
	for _, line := range strings.Split(sql, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		if strings.HasSuffix(t, ";") {
			cur.WriteString(strings.TrimSuffix(strings.TrimRight(line, " \t\r"), ";"))
			flush()
			continue
		}
		cur.WriteString(strings.TrimRight(line, " \t\r"))
		cur.WriteByte('\n')
	}
	flush()
	return stmts
}

// Apply creates db and its schema_migrations table if needed, then applies
// every embedded migration not recorded there yet, in version order, and
// records it. It is safe to call concurrently from several processes.
func Apply(ctx context.Context, conn driver.Conn, db string, opts ApplyOptions) error {
	log := opts.Logger
	if log == nil {
		return errors.New("chschema: ApplyOptions.Logger is required")
	}
	migs, err := Migrations(db, opts)
	if err != nil {
		return err
	}
	if err := createDatabase(ctx, conn, db, opts.Cluster); err != nil {
		return err
	}
	onCluster, engine := "", "ReplacingMergeTree"
	if opts.Cluster != "" {
		onCluster = " ON CLUSTER " + opts.Cluster
		engine = fmt.Sprintf("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/%s/schema_migrations', '{replica}')", db)
	}
	ddl := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.schema_migrations%s\n"+
		"(version UInt32, name String, applied_at DateTime)\nENGINE = %s\nORDER BY version", db, onCluster, engine)
	if err := exec(ctx, conn, ddl, nil); err != nil {
		return fmt.Errorf("create %s.schema_migrations: %w", db, err)
	}
	applied, err := appliedVersions(ctx, conn, db)
	if err != nil {
		return err
	}
	for _, m := range migs {
		if applied[m.Version] {
			continue
		}
		for i, stmt := range m.Statements {
			if err := exec(ctx, conn, stmt, m.Tolerate); err != nil {
				return fmt.Errorf("apply migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
		// Version and name come from a validated file name: no quoting issue.
		rec := fmt.Sprintf("INSERT INTO %s.schema_migrations (version, name, applied_at) SELECT %d, '%s', now()",
			db, m.Version, m.Name)
		if err := conn.Exec(ctx, rec); err != nil {
			return fmt.Errorf("record migration %04d_%s: %w", m.Version, m.Name, err)
		}
		log.InfoContext(ctx, "applied clickhouse migration", "database", db, "version", m.Version, "name", m.Name)
	}
	return nil
}

// AppliedVersions returns the migration versions recorded in db.
func AppliedVersions(ctx context.Context, conn driver.Conn, db string) ([]int, error) {
	if err := CheckNames(db, ""); err != nil {
		return nil, err
	}
	set, err := appliedVersions(ctx, conn, db)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Ints(out)
	return out, nil
}

func appliedVersions(ctx context.Context, conn driver.Conn, db string) (map[int]bool, error) {
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT DISTINCT version FROM %s.schema_migrations", db))
	if err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", db, err)
	}
	defer func() { _ = rows.Close() }() // its error is the query's, which rows.Err() reports
	set := map[int]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("scan %s.schema_migrations: %w", db, err)
		}
		set[int(v)] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", db, err)
	}
	return set, nil
}

func createDatabase(ctx context.Context, conn driver.Conn, db, cluster string) error {
	if err := CheckNames(db, cluster); err != nil {
		return err
	}
	q := "CREATE DATABASE IF NOT EXISTS " + db
	if cluster != "" {
		q += " ON CLUSTER " + cluster
	}
	if err := exec(ctx, conn, q, nil); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}

// exec runs one statement. "Already exists" errors count as success: two
// appliers racing on the same IF NOT EXISTS statement may see them.
func exec(ctx context.Context, conn driver.Conn, stmt string, tolerate []int32) error {
	err := conn.Exec(ctx, stmt)
	if err == nil || isCode(err, codeTableAlreadyExists) || isCode(err, codeDatabaseAlreadyExists) {
		return nil
	}
	for _, c := range tolerate {
		if isCode(err, c) {
			return nil
		}
	}
	return err
}

func isCode(err error, code int32) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == code
}

// CheckNames checks that db and cluster (when set) are plain identifiers, safe
// to splice into SQL; the error wraps ErrInvalidName.
func CheckNames(db, cluster string) error {
	var errs []error
	if !identRE.MatchString(db) {
		errs = append(errs, fmt.Errorf("database %q: %w", db, ErrInvalidName))
	}
	if cluster != "" && !identRE.MatchString(cluster) {
		errs = append(errs, fmt.Errorf("cluster %q: %w", cluster, ErrInvalidName))
	}
	return errors.Join(errs...)
}
