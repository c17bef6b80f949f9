-- prices: the versioned price table (pkg/pricing/prices.yaml) as data, so
-- that finance can reconcile cost_usd and price what-ifs (cache-hit savings)
-- in SQL. The meter writes every version at start (chschema.SyncPrices);
-- published versions never change, so rewriting them is harmless, and
-- ReplacingMergeTree collapses the copies: read it with FINAL.
-- Prices are USD per token (the YAML's USD per 1M tokens / 1e6); every
-- published price is a whole number of nano-USD per token.
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "prices"}}{{.OnCluster}}
(
    price_version    String,
    effective_from   DateTime('UTC'),
    model            String,
    input_cache_miss Decimal(18, 9),
    input_cache_hit  Decimal(18, 9),
    output           Decimal(18, 9),
    loaded_at        DateTime('UTC')
)
ENGINE = {{engine "ReplacingMergeTree" "prices"}}
ORDER BY (price_version, model);
{{if .Cluster}}
-- Sharded by the key, so that the copies of one price meet on one shard and
-- FINAL collapses them.
CREATE TABLE IF NOT EXISTS {{.DB}}.prices{{.OnCluster}}
AS {{.DB}}.prices_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, prices_local, sipHash64(price_version, model));
{{end}}
