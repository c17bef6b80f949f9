package chschema

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/pkg/pricing"
)

// SyncPrices writes every version of tb into db.prices (migration 3), one
// row per version and model, prices in USD per token. Published versions
// never change, so writing them again at every start is harmless: the
// copies collapse in a ReplacingMergeTree, and readers use FINAL. With
// cluster set the insert goes through the Distributed table synchronously.
func SyncPrices(ctx context.Context, conn driver.Conn, db, cluster string, tb *pricing.Table, now time.Time) error {
	if err := CheckNames(db, cluster); err != nil {
		return err
	}
	if cluster != "" {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+
		".prices (price_version, effective_from, model, input_cache_miss, input_cache_hit, output, loaded_at)")
	if err != nil {
		return fmt.Errorf("prepare prices insert: %w", err)
	}
	nano := func(n pricing.NanoUSD) decimal.Decimal { return decimal.New(int64(n), -9) }
	loaded := now.UTC().Truncate(time.Second)
	for _, v := range tb.Versions() {
		models := make([]string, 0, len(v.Models))
		for m := range v.Models {
			models = append(models, m)
		}
		sort.Strings(models)
		for _, m := range models {
			p := v.Models[m]
			if err := batch.Append(v.Version, v.EffectiveFrom.UTC(), m,
				nano(p.InputCacheMiss), nano(p.InputCacheHit), nano(p.Output), loaded); err != nil {
				_ = batch.Abort()
				return fmt.Errorf("append price %s %s: %w", v.Version, m, err)
			}
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert prices: %w", err)
	}
	return nil
}
