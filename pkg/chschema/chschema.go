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
// Cluster form. With ApplyOptions.Cluster set, MergeTree engines become
// Replicated*MergeTree with the conventional ZooKeeper path
// /clickhouse/tables/{shard}/<db>/<table> and replica '{replica}' (both
// macros must be defined on every server), the storage table is named
// <table>_local, and a Distributed table with the public name spreads the
// rows over the shards: usage_events by sipHash64(event_id), so that every
// copy of one event (a redelivery) lands on the shard of its first copy and
// FINAL collapses them there; the per-key tables by sipHash64(key_id).
// Writers that need "acked means stored" set insert_distributed_sync=1.
//
// The DDL does not use ON CLUSTER: clickhouse-go v2.26.0 (the newest client
// that can insert into 18.16) brings down the 18.16 server that receives an
// ON CLUSTER statement over the native protocol (docs/clickhouse.md).
// ApplyAll applies the schema to every node instead, one connection each;
// every statement is idempotent, CREATE is never replicated, and an ALTER of
// a Replicated table that a sibling replica already applied is tolerated
// like any "already done" error. schema_migrations is a plain table on each
// node, recording what that node has. Templates in the .sql files see .DB,
// .Cluster, .OnCluster (always empty now, kept for the templates) and the
// functions engine and local.
package chschema

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/qyai/qyai/pkg/envconfig"
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
	// Addr is host:port of the native protocol, e.g. 127.0.0.1:9000, or a
	// comma-separated list of them (the nodes of a cluster): the client
	// dials them in order and fails over to the next.
	Addr     string
	Database string // default database of the connection; created if missing
	User     string
	Password string
	// Cluster names the cluster (CLICKHOUSE_CLUSTER) when the servers run
	// one: ApplyAll then applies the schema on each of its nodes. It must
	// match ApplyOptions.Cluster.
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
		Addr:     envconfig.Split(o.Addr),
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

// CheckAddrs checks an address list (Options.Addr, CLICKHOUSE_ADDR): one
// or more host:port entries separated by commas.
func CheckAddrs(list string) error {
	addrs := envconfig.Split(list)
	if len(addrs) == 0 {
		return errors.New("want host:port of the native protocol, or a comma-separated list of them")
	}
	for i, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Errorf("entry %d %q: want host:port of the native protocol", i+1, a)
		}
	}
	if strings.Count(list, ",") != len(addrs)-1 {
		return errors.New("empty entry in the list")
	}
	return nil
}

// ApplyAll applies the schema where o points. On one server (opts.Cluster
// empty) that is Apply over one connection. On a cluster it is Apply on
// every node, one connection each (see the package comment for why not ON
// CLUSTER): the nodes named in o.Addr and those the first reachable one
// lists in system.clusters. A node that cannot be reached is skipped with a
// warning, so that a service starts while a replica is down (its tables
// exist from an earlier start, or the next start of any service creates
// them); a node that answers and fails is an error.
func ApplyAll(ctx context.Context, o Options, opts ApplyOptions) error {
	if opts.Logger == nil {
		return errors.New("chschema: ApplyOptions.Logger is required")
	}
	if opts.Cluster == "" {
		conn, err := Open(ctx, o)
		if err != nil {
			return err
		}
		defer func() { _ = conn.Close() }() // the schema is applied or its error reported
		return Apply(ctx, conn, o.Database, opts)
	}
	migs, err := Migrations(o.Database, opts)
	if err != nil {
		return err
	}
	type node struct {
		addr    string
		conn    driver.Conn
		applied map[int]bool
	}
	var ready []node
	defer func() {
		for _, n := range ready {
			_ = n.conn.Close() // done with this node
		}
	}()
	addrs := envconfig.Split(o.Addr)
	seen := map[string]bool{}
	for _, a := range addrs {
		seen[a] = true
	}
	for i := 0; i < len(addrs); i++ {
		no := o
		no.Addr = addrs[i]
		conn, err := Open(ctx, no)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			opts.Logger.WarnContext(ctx, "clickhouse node unreachable: schema not applied there now", "node", addrs[i], "err", err)
			continue
		}
		if len(ready) == 0 {
			more, err := clusterNodes(ctx, conn, opts.Cluster)
			if err != nil {
				_ = conn.Close() // the discovery error is the one to report
				return err
			}
			for _, m := range more {
				if !seen[m] {
					seen[m] = true
					addrs = append(addrs, m)
				}
			}
		}
		applied, err := prepareNode(ctx, conn, o.Database)
		if err != nil {
			_ = conn.Close() // the preparation error is the one to report
			return fmt.Errorf("node %s: %w", addrs[i], err)
		}
		ready = append(ready, node{addrs[i], conn, applied})
	}
	if len(ready) == 0 {
		return fmt.Errorf("apply schema on cluster %s: none of the nodes %s reachable", opts.Cluster, o.Addr)
	}
	// Statement by statement over every node, as ON CLUSTER would: a
	// statement that reads a Distributed table needs the local tables of
	// every shard, created by the statements before it.
	for _, m := range migs {
		var need []node
		for _, n := range ready {
			if !n.applied[m.Version] {
				need = append(need, n)
			}
		}
		for i, stmt := range m.Statements {
			for _, n := range need {
				if err := exec(ctx, n.conn, stmt, m.Tolerate); err != nil {
					return fmt.Errorf("node %s: apply migration %04d_%s statement %d: %w", n.addr, m.Version, m.Name, i+1, err)
				}
			}
		}
		for _, n := range need {
			if err := record(ctx, n.conn, o.Database, m); err != nil {
				return fmt.Errorf("node %s: %w", n.addr, err)
			}
		}
		if len(need) > 0 {
			opts.Logger.InfoContext(ctx, "applied clickhouse migration", "database", o.Database, "version", m.Version,
				"name", m.Name, "cluster", opts.Cluster, "nodes", len(need))
		}
	}
	return nil
}

// clusterNodes lists host:port of every node of cluster, as the server
// knows it (system.clusters).
func clusterNodes(ctx context.Context, conn driver.Conn, cluster string) ([]string, error) {
	rows, err := conn.Query(ctx, "SELECT host_name, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cluster)
	if err != nil {
		return nil, fmt.Errorf("list the nodes of cluster %s: %w", cluster, err)
	}
	defer func() { _ = rows.Close() }() // its error is rows.Err's
	var out []string
	for rows.Next() {
		var host string
		var port uint16
		if err := rows.Scan(&host, &port); err != nil {
			return nil, fmt.Errorf("list the nodes of cluster %s: %w", cluster, err)
		}
		out = append(out, net.JoinHostPort(host, strconv.Itoa(int(port))))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list the nodes of cluster %s: %w", cluster, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cluster %s: no such cluster in system.clusters (check CLICKHOUSE_CLUSTER and remote_servers)", cluster)
	}
	return out, nil
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
	// No ON CLUSTER: ApplyAll runs the DDL on every node (package comment).
	data := templateData{DB: db, Cluster: opts.Cluster}
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
	applied, err := prepareNode(ctx, conn, db)
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
		if err := record(ctx, conn, db, m); err != nil {
			return err
		}
		log.InfoContext(ctx, "applied clickhouse migration", "database", db, "version", m.Version, "name", m.Name)
	}
	return nil
}

// prepareNode creates db and its schema_migrations table on one server if
// needed and returns the versions recorded there.
func prepareNode(ctx context.Context, conn driver.Conn, db string) (map[int]bool, error) {
	if err := createDatabase(ctx, conn, db, ""); err != nil {
		return nil, err
	}
	// One per node, also on a cluster: it records what this node has.
	ddl := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.schema_migrations\n"+
		"(version UInt32, name String, applied_at DateTime)\nENGINE = ReplacingMergeTree\nORDER BY version", db)
	if err := exec(ctx, conn, ddl, nil); err != nil {
		return nil, fmt.Errorf("create %s.schema_migrations: %w", db, err)
	}
	return appliedVersions(ctx, conn, db)
}

// record notes m as applied on one server.
func record(ctx context.Context, conn driver.Conn, db string, m Migration) error {
	// Version and name come from a validated file name: no quoting issue.
	rec := fmt.Sprintf("INSERT INTO %s.schema_migrations (version, name, applied_at) SELECT %d, '%s', now()",
		db, m.Version, m.Name)
	if err := conn.Exec(ctx, rec); err != nil {
		return fmt.Errorf("record migration %04d_%s: %w", m.Version, m.Name, err)
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
	// Never ON CLUSTER (package comment): each node creates its own.
	q := "CREATE DATABASE IF NOT EXISTS " + db
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
