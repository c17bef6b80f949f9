-- usage_events: one row per request that reached the upstream (pkg/usage.Event),
-- dedup layer 3 (pkg/ledger): ReplacingMergeTree + FINAL.
-- written by the meter. A redelivered event has the same sorting key
-- (key_id, started_at, event_id), so ReplacingMergeTree collapses it and
-- exact reads use FINAL. started_at decides the billing month (UTC).
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "usage_events"}}{{.OnCluster}}
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
ENGINE = {{engine "ReplacingMergeTree" "usage_events"}}
PARTITION BY toYYYYMM(started_at)
ORDER BY (key_id, started_at, event_id);
{{if .Cluster}}
-- Cluster form: the Distributed table carries the public name and shards by
-- a hash of the event id: one key's rows spread over every shard (no hot
-- shard for a big key), and every copy of one event (a redelivery) lands on
-- the shard of its first copy, where FINAL collapses it.
CREATE TABLE IF NOT EXISTS {{.DB}}.usage_events{{.OnCluster}}
AS {{.DB}}.usage_events_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, usage_events_local, sipHash64(event_id));
{{end}}
