// Package clickhouse stores audit entries in ClickHouse's audit_log table
// (pkg/chschema migration 0010) and reads key histories back for a rebuild.
//
// audit_log is a ReplacingMergeTree ordered by (key_id, revision, audit_id):
// the flusher may insert an entry twice (a crash between insert and the
// deletion from the Redis buffer), and every read uses FINAL so that the
// copies count once.
package clickhouse

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/qyai/qyai/admin/internal/audit"
)

// ConnSource hands out a connection once the schema is applied.
type ConnSource interface {
	Conn() (driver.Conn, error)
}

// Log implements audit.Sink and audit.HistorySource.
type Log struct {
	src     ConnSource
	table   string // <db>.audit_log
	cluster bool
	timeout time.Duration
}

// New returns a Log on db.audit_log; db must be a plain identifier (config
// validates it). cluster makes inserts wait for the shards
// (insert_distributed_sync=1), so that a flushed entry is stored.
func New(src ConnSource, db string, cluster bool, timeout time.Duration) *Log {
	return &Log{src: src, table: db + ".audit_log", cluster: cluster, timeout: timeout}
}

var (
	_ audit.Sink          = (*Log)(nil)
	_ audit.HistorySource = (*Log)(nil)
)

// Insert writes entries in one batch.
func (l *Log) Insert(ctx context.Context, entries []audit.Entry) error {
	conn, err := l.src.Conn()
	if err != nil {
		return fmt.Errorf("%w: %w", audit.ErrSinkNotReady, err)
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	if l.cluster {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+l.table+
		" (audit_id, at, actor, action, key_id, revision, fields, key_hash, status, before, after)")
	if err != nil {
		return fmt.Errorf("prepare audit insert: %w", err)
	}
	defer func() { _ = batch.Abort() }() // releases the batch; after Send it only says "already sent"
	for _, e := range entries {
		before := ""
		if e.Before != nil {
			b, err := json.Marshal(e.Before)
			if err != nil {
				return fmt.Errorf("encode audit state: %w", err)
			}
			before = string(b)
		}
		after, err := json.Marshal(e.After)
		if err != nil {
			return fmt.Errorf("encode audit state: %w", err)
		}
		if err := batch.Append(e.ID, e.At.UTC(), e.Actor, e.Action, e.KeyID, e.Revision, e.Fields,
			e.After.Hash, e.After.Status, before, string(after)); err != nil {
			return fmt.Errorf("append audit entry %s: %w", e.ID, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert audit entries: %w", err)
	}
	return nil
}

// Histories reads the last state and every hash of each key:
//
//	SELECT key_id, max(revision), argMax(after, revision),
//	       arrayConcat(groupUniqArray(key_hash), groupUniqArray(visitParamExtractString(before, 'hash')))
//	FROM <db>.audit_log FINAL GROUP BY key_id ORDER BY key_id
func (l *Log) Histories(ctx context.Context) (map[string]audit.History, error) {
	conn, err := l.src.Conn()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	rows, err := conn.Query(ctx, "SELECT key_id, max(revision), argMax(after, revision),"+
		" arrayConcat(groupUniqArray(key_hash), groupUniqArray(visitParamExtractString(before, 'hash')))"+
		" FROM "+l.table+" FINAL GROUP BY key_id ORDER BY key_id")
	if err != nil {
		return nil, fmt.Errorf("query audit histories: %w", err)
	}
	defer func() { _ = rows.Close() }() // its error is the query's, which rows.Err() reports
	out := map[string]audit.History{}
	for rows.Next() {
		var (
			keyID, after string
			rev          uint64
			hashes       []string
		)
		if err := rows.Scan(&keyID, &rev, &after, &hashes); err != nil {
			return nil, fmt.Errorf("scan audit history: %w", err)
		}
		var st audit.State
		if err := json.Unmarshal([]byte(after), &st); err != nil {
			return nil, fmt.Errorf("decode last state of key %s: %w", keyID, err)
		}
		if st.ID != keyID || st.Revision != rev {
			return nil, fmt.Errorf("last state of key %s: id %q revision %d, want revision %d", keyID, st.ID, st.Revision, rev)
		}
		out[keyID] = audit.Merge(audit.History{}, audit.History{Last: st, Hashes: hashes})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit histories: %w", err)
	}
	return out, nil
}

// Entries returns a key's audit trail (every key when keyID is empty),
// oldest first: for operators and tests.
func (l *Log) Entries(ctx context.Context, keyID string) ([]audit.Entry, error) {
	conn, err := l.src.Conn()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	q := "SELECT audit_id, at, actor, action, key_id, revision, fields, before, after FROM " + l.table + " FINAL"
	var args []any
	if keyID != "" {
		q += " WHERE key_id = ?"
		args = append(args, keyID)
	}
	q += " ORDER BY at, key_id, revision"
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit entries: %w", err)
	}
	defer func() { _ = rows.Close() }() // its error is the query's, which rows.Err() reports
	var out []audit.Entry
	for rows.Next() {
		var (
			e             audit.Entry
			before, after string
		)
		if err := rows.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.KeyID, &e.Revision, &e.Fields, &before, &after); err != nil {
			return nil, fmt.Errorf("scan audit entry: %w", err)
		}
		e.At = e.At.UTC()
		if before != "" {
			e.Before = new(audit.State)
			if err := json.Unmarshal([]byte(before), e.Before); err != nil {
				return nil, fmt.Errorf("decode audit entry %s: %w", e.ID, err)
			}
		}
		if err := json.Unmarshal([]byte(after), &e.After); err != nil {
			return nil, fmt.Errorf("decode audit entry %s: %w", e.ID, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit entries: %w", err)
	}
	return out, nil
}
