package app

import (
	"context"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/qyai/qyai/pkg/chschema"
)

// faults injects failures into the meter's ClickHouse connection, at the
// two places where a crash matters for exactness.
type faults struct {
	// afterInsert runs after an insert into usage_events was stored, before
	// the meter hears about it; an error is what the meter then sees (the
	// insert's answer lost).
	afterInsert func(rows int) error
	// beforeLedger runs before a rollup run writes its ledger rows (its
	// aggregate rows are stored by then); an error fails that write.
	beforeLedger func() error
}

// open is an Options.OpenClickHouse that wraps the connection with f.
func (f *faults) open(ctx context.Context, opts chschema.Options) (driver.Conn, error) {
	conn, err := chschema.Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	return faultConn{Conn: conn, f: f}, nil
}

type faultConn struct {
	driver.Conn
	f *faults
}

func (c faultConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	if strings.Contains(query, ".usage_rollup_ledger") && c.f.beforeLedger != nil {
		if err := c.f.beforeLedger(); err != nil {
			return nil, err
		}
	}
	b, err := c.Conn.PrepareBatch(ctx, query, opts...)
	if err != nil || !strings.Contains(query, ".usage_events") || c.f.afterInsert == nil {
		return b, err
	}
	return &faultBatch{Batch: b, f: c.f}, nil
}

type faultBatch struct {
	driver.Batch
	f *faults
}

func (b *faultBatch) Send() error {
	rows := b.Rows()
	if err := b.Batch.Send(); err != nil {
		return err
	}
	return b.f.afterInsert(rows)
}
