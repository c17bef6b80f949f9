-- 0001_usage_events statement 1
CREATE TABLE IF NOT EXISTS qyai.usage_events_local ON CLUSTER qyai_cluster
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
CREATE TABLE IF NOT EXISTS qyai.usage_events ON CLUSTER qyai_cluster
AS qyai.usage_events_local
ENGINE = Distributed(qyai_cluster, qyai, usage_events_local, sipHash64(key_id));

