-- audit_log: one row per change of an API key (create, update, disable,
-- enable, rotate, revoke), written by admin. Admin first appends the entry to
-- the Redis stream qyai:audit in the same transaction as the change; a
-- background flusher copies entries here and only then deletes them from the
-- stream, so a flush may be repeated: every copy of an entry has the same
-- sorting key (key_id, revision, audit_id), ReplacingMergeTree collapses them
-- and exact reads use FINAL. before/after are the key's stored state as JSON
-- (pkg/apikey.Record plus revision): the key HASH, never the key itself.
-- `admin keys rebuild-redis` restores Redis from the last state of every key.
CREATE TABLE IF NOT EXISTS {{.DB}}.{{local "audit_log"}}{{.OnCluster}}
(
    -- unique entry id, "aud_" + 32 hex digits; copies of an entry share it
    audit_id    String,
    -- when the change was made (UTC, seconds)
    at          DateTime,
    -- who: the name of the admin token used
    actor       String,
    -- create, update, disable, enable, rotate or revoke
    action      String,
    key_id      String,
    -- the key's revision after the change: 1 at create, +1 per change
    revision    UInt64,
    -- the record fields that changed (JSON names)
    fields      Array(String),
    -- the key's HMAC hash after the change (never the key)
    key_hash    String,
    -- active, disabled or revoked after the change
    status      String,
    -- the stored state before ('' on create) and after, as JSON
    before      String,
    after       String,
    inserted_at DateTime DEFAULT now()
)
ENGINE = {{engine "ReplacingMergeTree" "audit_log"}}
PARTITION BY toYYYYMM(at)
ORDER BY (key_id, revision, audit_id);
{{if .Cluster}}
-- Cluster form: sharded by key_id, so every copy of an entry and the whole
-- history of a key meet on one shard.
CREATE TABLE IF NOT EXISTS {{.DB}}.audit_log{{.OnCluster}}
AS {{.DB}}.audit_log_local
ENGINE = Distributed({{.Cluster}}, {{.DB}}, audit_log_local, sipHash64(key_id));
{{end}}
