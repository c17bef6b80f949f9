-- 0001_usage_events statement 1
CREATE TABLE IF NOT EXISTS qyai.usage_events_local
(
    event_id          String,
    request_id        String,
    started_at        DateTime,
    finished_at       DateTime,
    key_id            String,
    key_prefix        String,
    tier              String,
    model             String,
    upstream_model    String,
    thinking          UInt8,
    stream            UInt8,
    status            UInt16,
    error_type        String,
    outcome           String,
    prompt_tokens     UInt64,
    cache_hit_tokens  UInt64,
    cache_miss_tokens UInt64,
    completion_tokens UInt64,
    reasoning_tokens  UInt64,
    usage_source      String,
    latency_ms        UInt32,
    ttft_ms           UInt32,
    gateway           String,
    trace_id          String,
    price_version     String,
    cost_usd          Decimal(18, 9),
    schema_version    UInt8,
    inserted_at       DateTime DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/qyai/usage_events', '{replica}')
PARTITION BY toYYYYMM(started_at)
ORDER BY (key_id, started_at, event_id);

-- 0001_usage_events statement 2
CREATE TABLE IF NOT EXISTS qyai.usage_events
AS qyai.usage_events_local
ENGINE = Distributed(qyai_cluster, qyai, usage_events_local, sipHash64(event_id));

-- 0002_usage_rollup statement 1
CREATE TABLE IF NOT EXISTS qyai.usage_inserts_local
(
    key_id        String,
    hour          DateTime('UTC'),
    insert_hour   DateTime('UTC'),
    inserted_rows UInt64,
    block_nonce   UInt64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/qyai/usage_inserts', '{replica}', (inserted_rows))
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour, insert_hour);

-- 0002_usage_rollup statement 2
CREATE TABLE IF NOT EXISTS qyai.usage_inserts
AS qyai.usage_inserts_local
ENGINE = Distributed(qyai_cluster, qyai, usage_inserts_local, sipHash64(key_id));

-- 0002_usage_rollup statement 3
CREATE MATERIALIZED VIEW IF NOT EXISTS qyai.usage_inserts_mv
TO qyai.usage_inserts_local
AS SELECT
    key_id,
    toStartOfHour(started_at, 'UTC') AS hour,
    toStartOfHour(now(), 'UTC') AS insert_hour,
    count() AS inserted_rows,
    max(rand64()) AS block_nonce
FROM qyai.usage_events_local
GROUP BY key_id, hour;

-- 0002_usage_rollup statement 4
INSERT INTO qyai.usage_inserts (key_id, hour, insert_hour, inserted_rows, block_nonce)
SELECT key_id, toStartOfHour(started_at, 'UTC') AS hour, toStartOfHour(now(), 'UTC'), count(), 0
FROM qyai.usage_events
GROUP BY key_id, hour;

-- 0002_usage_rollup statement 5
CREATE TABLE IF NOT EXISTS qyai.usage_rollup_hourly_local
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/qyai/usage_rollup_hourly', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour, version, model, upstream_model, price_version);

-- 0002_usage_rollup statement 6
CREATE TABLE IF NOT EXISTS qyai.usage_rollup_hourly
AS qyai.usage_rollup_hourly_local
ENGINE = Distributed(qyai_cluster, qyai, usage_rollup_hourly_local, sipHash64(key_id));

-- 0002_usage_rollup statement 7
CREATE TABLE IF NOT EXISTS qyai.usage_rollup_ledger_local
(
    key_id        String,
    hour          DateTime('UTC'),
    version       UInt64,
    inserted_rows UInt64,
    agg_rows      UInt64,
    rolled_at     DateTime('UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/qyai/usage_rollup_ledger', '{replica}', inserted_rows)
PARTITION BY toYYYYMM(hour)
ORDER BY (key_id, hour);

-- 0002_usage_rollup statement 8
CREATE TABLE IF NOT EXISTS qyai.usage_rollup_ledger
AS qyai.usage_rollup_ledger_local
ENGINE = Distributed(qyai_cluster, qyai, usage_rollup_ledger_local, sipHash64(key_id));

-- 0002_usage_rollup statement 9
CREATE VIEW IF NOT EXISTS qyai.usage_rollup_state
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
    FROM qyai.usage_inserts
    UNION ALL
    SELECT 1 AS source, key_id, hour, inserted_rows AS rows, version
    FROM qyai.usage_rollup_ledger
)
GROUP BY key_id, hour;

-- 0002_usage_rollup statement 10
CREATE VIEW IF NOT EXISTS qyai.usage_hourly
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
        FROM qyai.usage_inserts
        UNION ALL
        SELECT 1, key_id, hour, inserted_rows, version, agg_rows, '', '', '',
            toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0)
        FROM qyai.usage_rollup_ledger
        UNION ALL
        SELECT 2, key_id, hour, toUInt64(0), version, toUInt64(0), model, upstream_model, price_version,
            requests, prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, reasoning_tokens,
            toUInt64(cost_usd * 1000000000)
        FROM qyai.usage_rollup_hourly
        UNION ALL
        SELECT 3, key_id, toStartOfHour(started_at, 'UTC') AS hour, toUInt64(0), toUInt64(0), toUInt64(0),
            model, upstream_model, price_version, count(), sum(prompt_tokens), sum(cache_hit_tokens),
            sum(cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), toUInt64(sum(cost_usd) * 1000000000)
        FROM qyai.usage_events FINAL
        WHERE started_at >= (
            SELECT if(count() = 0, toDateTime('2105-12-31 00:00:00', 'UTC'), min(hour))
            FROM qyai.usage_rollup_state WHERE clean = 0)
        GROUP BY key_id, hour, model, upstream_model, price_version
    )
    GROUP BY key_id, hour
)
ARRAY JOIN chosen AS r;

-- 0003_prices statement 1
CREATE TABLE IF NOT EXISTS qyai.prices_local
(
    price_version    String,
    effective_from   DateTime('UTC'),
    model            String,
    input_cache_miss Decimal(18, 9),
    input_cache_hit  Decimal(18, 9),
    output           Decimal(18, 9),
    loaded_at        DateTime('UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/qyai/prices', '{replica}')
ORDER BY (price_version, model);

-- 0003_prices statement 2
CREATE TABLE IF NOT EXISTS qyai.prices
AS qyai.prices_local
ENGINE = Distributed(qyai_cluster, qyai, prices_local, sipHash64(price_version, model));

-- 0010_audit_log statement 1
CREATE TABLE IF NOT EXISTS qyai.audit_log_local
(
    audit_id    String,
    at          DateTime,
    actor       String,
    action      String,
    key_id      String,
    revision    UInt64,
    fields      Array(String),
    key_hash    String,
    status      String,
    before      String,
    after       String,
    inserted_at DateTime DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/qyai/audit_log', '{replica}')
PARTITION BY toYYYYMM(at)
ORDER BY (key_id, revision, audit_id);

-- 0010_audit_log statement 2
CREATE TABLE IF NOT EXISTS qyai.audit_log
AS qyai.audit_log_local
ENGINE = Distributed(qyai_cluster, qyai, audit_log_local, sipHash64(key_id));

