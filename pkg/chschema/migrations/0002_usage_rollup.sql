-- Exact hourly aggregates of usage_events that stay exact under redelivery.
-- See docs/clickhouse.md ("How exactness is guaranteed") for the proof; in
-- short:
--
--  * usage_inserts counts, per key and UTC hour, every row ever inserted
--    into usage_events (duplicates included), through a materialized view.
--    ClickHouse writes a block to usage_events before it pushes it to the
--    view, so whatever the counter shows is already visible in the raw table.
--  * A rollup (ledger.Rollup, run by the meter) reads that counter for a
--    bucket, then recomputes the bucket from usage_events FINAL into
--    usage_rollup_hourly under a fresh version, and only then records
--    (bucket, version, counter value, row count) in usage_rollup_ledger.
--  * A bucket is clean while its counter still equals the value recorded
--    by its best ledger row (the highest one): no row arrived since, so the
--    aggregate rows of that version are exactly what FINAL would return.
--    Readers take clean buckets from usage_rollup_hourly and every other
--    bucket from usage_events FINAL, deciding each bucket once (the view
--    usage_hourly does exactly that).
--
-- Every table here is keyed by key_id first and, on a cluster, its
-- Distributed table shards by sipHash64(key_id). The counter rows are written
-- by the view on the shard that received the events (usage_events shards by
-- event id), so a bucket's counter is the sum over the shards. On a cluster
-- the meter does not roll up (docs/clickhouse.md, "Cluster form"): every
-- bucket is dirty and read from usage_events FINAL, exactly.

-- usage_inserts: rows inserted into usage_events per key and hour (of
-- started_at), and per hour of insertion (server clock), so that a rollup
-- finds the buckets that changed lately, however old their events. Only
-- inserted_rows is summed; readers sum it over insert_hour. block_nonce
-- makes every block the view writes unique, so that the block
-- deduplication of a Replicated table can never drop a counter block that
-- happens to equal an earlier one.
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "usage_inserts"}}{{.OnCluster}}
(
    key_id        String,
    hour          DateTime('UTC'),
    insert_hour   DateTime('UTC'),
    inserted_rows UInt64,
    block_nonce   UInt64
)
ENGINE = {{engine "SummingMergeTree" "usage_inserts" "(inserted_rows)"}}
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour, insert_hour);
{{if .Cluster}}
CREATE TABLE IF NOT EXISTS {{.DB}}.usage_inserts{{.OnCluster}}
AS {{.DB}}.usage_inserts_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, usage_inserts_local, sipHash64(key_id));
{{end}}
-- The counter is fed by every insert into usage_events, whoever the writer.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{.DB}}.usage_inserts_mv{{.OnCluster}}
TO {{.DB}}.{{local "usage_inserts"}}
AS SELECT
    key_id,
    toStartOfHour(started_at, 'UTC') AS hour,
    toStartOfHour(now(), 'UTC') AS insert_hour,
    count() AS inserted_rows,
    max(rand64()) AS block_nonce
FROM {{.DB}}.{{local "usage_events"}}
GROUP BY key_id, hour;

-- Rows stored before the view existed. Counting a row twice (a concurrent
-- applier, or an insert racing this statement) is harmless: a counter that
-- is too high only makes a bucket look changed, and it is rolled up again.
INSERT INTO {{.DB}}.usage_inserts (key_id, hour, insert_hour, inserted_rows, block_nonce)
SELECT key_id, toStartOfHour(started_at, 'UTC') AS hour, toStartOfHour(now(), 'UTC'), count(), 0
FROM {{.DB}}.usage_events
GROUP BY key_id, hour;

-- usage_rollup_hourly: the sums of usage_events FINAL per key, UTC hour,
-- model, upstream model and price version, as computed by one rollup run
-- (version). Rows of a version that is not the bucket's ledger version are
-- ignored by every reader (a run that failed half-way, or a superseded one).
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "usage_rollup_hourly"}}{{.OnCluster}}
(
    key_id            String,
    hour              DateTime('UTC'),
    model             String,
    upstream_model    String,
    price_version     String,
    version           UInt64,
    requests          UInt64,
    prompt_tokens     UInt64,
    cache_hit_tokens  UInt64,
    cache_miss_tokens UInt64,
    completion_tokens UInt64,
    reasoning_tokens  UInt64,
    cost_usd          Decimal(38, 9)
)
ENGINE = {{engine "MergeTree" "usage_rollup_hourly"}}
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour, version, model, upstream_model, price_version);
{{if .Cluster}}
CREATE TABLE IF NOT EXISTS {{.DB}}.usage_rollup_hourly{{.OnCluster}}
AS {{.DB}}.usage_rollup_hourly_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, usage_rollup_hourly_local, sipHash64(key_id));
{{end}}
-- usage_rollup_ledger: one row per bucket and completed rollup run, written
-- after that run's aggregate rows were stored. inserted_rows is the counter
-- value the run read before it read usage_events, agg_rows the number of
-- usage_rollup_hourly rows it stored for the bucket (a reader uses a version
-- only when it sees all of them). Of several runs of one bucket, the one
-- with the highest inserted_rows saw the most: merges keep that one.
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "usage_rollup_ledger"}}{{.OnCluster}}
(
    key_id        String,
    hour          DateTime('UTC'),
    version       UInt64,
    inserted_rows UInt64,
    agg_rows      UInt64,
    rolled_at     DateTime('UTC')
)
ENGINE = {{engine "ReplacingMergeTree" "usage_rollup_ledger" "inserted_rows"}}
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour);
{{if .Cluster}}
CREATE TABLE IF NOT EXISTS {{.DB}}.usage_rollup_ledger{{.OnCluster}}
AS {{.DB}}.usage_rollup_ledger_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, usage_rollup_ledger_local, sipHash64(key_id));
{{end}}
-- usage_rollup_state: per key and hour, the counter, the best ledger row
-- (highest inserted_rows) and whether the bucket is clean: no row was
-- inserted since that run read the counter.
CREATE VIEW IF NOT EXISTS {{.DB}}.usage_rollup_state{{.OnCluster}}
AS SELECT
    key_id,
    hour,
    sumIf(rows, source = 0) AS inserted_rows,
    maxIf(rows, source = 1) AS rolled_rows,
    argMaxIf(version, rows, source = 1) AS rolled_version,
    toUInt8(rolled_rows > 0 AND rolled_rows = inserted_rows) AS clean
FROM
(
    SELECT 0 AS source, key_id, hour, inserted_rows AS rows, toUInt64(0) AS version
    FROM {{.DB}}.usage_inserts
    UNION ALL
    SELECT 1 AS source, key_id, hour, inserted_rows AS rows, version
    FROM {{.DB}}.usage_rollup_ledger
)
GROUP BY key_id, hour;

-- usage_hourly: exact usage per key, UTC hour, model, upstream model and
-- price version. This is what finance reads. All sources of a bucket are
-- read in ONE pass and the bucket decides once, from what this read saw:
--   * its best complete ledger run (highest counter value among the runs
--     whose aggregate rows are all visible) still matches the counter:
--     that run's aggregate rows;
--   * otherwise usage_events FINAL, read for every bucket at or after the
--     oldest bucket that was not clean when the query started;
--   * a bucket older than that (clean when the query started, changed by an
--     insert since) keeps its best complete run: its usage at query start.
-- So every bucket is exactly its usage at some instant during the query,
-- and no bucket is counted from both sources or from none. Costs travel as
-- UInt64 nano-USD inside the arrays: 18.16 crashes on groupArray of tuples
-- holding a Decimal128.
CREATE VIEW IF NOT EXISTS {{.DB}}.usage_hourly{{.OnCluster}}
AS SELECT
    key_id,
    hour,
    r.1 AS model,
    r.2 AS upstream_model,
    if(r.2 != '', r.2, r.1) AS priced_model,
    r.3 AS price_version,
    r.4 AS requests,
    r.5 AS prompt_tokens,
    r.6 AS cache_hit_tokens,
    r.7 AS cache_miss_tokens,
    r.8 AS completion_tokens,
    r.9 AS reasoning_tokens,
    toDecimal128(r.10, 9) / 1000000000 AS cost_usd
FROM
(
    SELECT
        key_id,
        hour,
        sumIf(n, source = 0) AS counted,
        groupArrayIf((version, n, agg_rows), source = 1) AS runs,
        groupArrayIf((version, model, upstream_model, price_version, requests, prompt_tokens, cache_hit_tokens,
            cache_miss_tokens, completion_tokens, reasoning_tokens, cost_nano), source = 2) AS agg,
        groupArrayIf((model, upstream_model, price_version, requests, prompt_tokens, cache_hit_tokens,
            cache_miss_tokens, completion_tokens, reasoning_tokens, cost_nano), source = 3) AS raw,
        arraySort(x -> -toInt64(x.2),
            arrayFilter(x -> countEqual(arrayMap(a -> a.1, agg), x.1) = x.3, runs))[1] AS best,
        if(best.1 > 0 AND (best.2 = counted OR empty(raw)),
            arrayMap(a -> (a.2, a.3, a.4, a.5, a.6, a.7, a.8, a.9, a.10, a.11), arrayFilter(a -> a.1 = best.1, agg)),
            raw) AS chosen
    FROM
    (
        SELECT 0 AS source, key_id, hour, inserted_rows AS n, toUInt64(0) AS version, toUInt64(0) AS agg_rows,
            '' AS model, '' AS upstream_model, '' AS price_version, toUInt64(0) AS requests,
            toUInt64(0) AS prompt_tokens, toUInt64(0) AS cache_hit_tokens, toUInt64(0) AS cache_miss_tokens,
            toUInt64(0) AS completion_tokens, toUInt64(0) AS reasoning_tokens, toUInt64(0) AS cost_nano
        FROM {{.DB}}.usage_inserts
        UNION ALL
        SELECT 1, key_id, hour, inserted_rows, version, agg_rows, '', '', '',
            toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0)
        FROM {{.DB}}.usage_rollup_ledger
        UNION ALL
        SELECT 2, key_id, hour, toUInt64(0), version, toUInt64(0), model, upstream_model, price_version,
            requests, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens,
            toUInt64(cost_usd * 1000000000)
        FROM {{.DB}}.usage_rollup_hourly
        UNION ALL
        SELECT 3, key_id, toStartOfHour(started_at, 'UTC') AS hour, toUInt64(0), toUInt64(0), toUInt64(0),
            model, upstream_model, price_version, count(), sum(prompt_tokens), sum(cache_hit_tokens),
            sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), toUInt64(sum(cost_usd) * 1000000000)
        FROM {{.DB}}.usage_events FINAL
        WHERE started_at >= (
            SELECT if(count() = 0, toDateTime('2105-12-31 00:00:00', 'UTC'), min(hour))
            FROM {{.DB}}.usage_rollup_state WHERE clean = 0)
        GROUP BY key_id, hour, model, upstream_model, price_version
    )
    GROUP BY key_id, hour
)
ARRAY JOIN chosen AS r;
