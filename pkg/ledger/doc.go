// Package ledger holds both halves of billing's exactness protocol over
// ClickHouse: the write half, Rollup, which the meter runs to keep the
// hourly aggregates (usage_rollup_hourly) and their ledger
// (usage_rollup_ledger) up to date, and the read half, ExactQuery, which the
// admin service's billing endpoints use to read usage that is exact even
// while aggregates are stale, half written or being redone. They share one
// invariant and are tested together (TestWriteThenReadExact); pkg/chschema
// keeps the migrations and opening a connection.
//
// # The protocol
//
// For every (key, UTC hour) bucket, ClickHouse counts the rows ever inserted
// into usage_events (usage_inserts, a materialized view). A rollup run
// recomputes a set of buckets from usage_events FINAL, inserts their
// aggregate rows under a fresh version, and only then writes one ledger row
// per bucket: the version, the insert count the run saw, and how many
// aggregate rows it wrote. A reader uses a bucket's aggregates only when the
// ledger row of some version still matches the bucket's insert count (nothing
// arrived since) and all that version's rows are there; every other bucket,
// and partial hours at the ends of a period, are read from usage_events
// FINAL. A crash between the two inserts leaves rows no reader uses; a
// second rollup of the same bucket only writes another valid version.
// docs/clickhouse.md ("How exactness is guaranteed") has the full argument
// and the SQL.
//
// # The dedup chain
//
// A usage event may be sent more than once anywhere between the gateway and
// ClickHouse (a publish retried, a spool replayed, a batch redelivered
// after a meter crash, an insert retried after a lost answer). Four layers,
// each marked "Dedup layer N" where it is implemented, make every event
// count once:
//
//  1. Nats-Msg-Id: the gateway publishes each event, and replays spooled
//     ones, with its event id as the message id; JetStream drops a repeat
//     within the stream's duplicate window (gateway/internal/publish,
//     pkg/usage/jetstream StreamConfig.Duplicates).
//  2. The meter's in-batch set: events with the same id in one batch are
//     stored once (meter/internal/sink, the seen set in prepare).
//  3. ReplacingMergeTree + FINAL: copies that reach ClickHouse anyway (after
//     the window, or in separate batches) share the sorting key (key_id,
//     started_at, event_id) and collapse; every read of raw events uses FINAL
//     (pkg/chschema migration 0001).
//  4. The ledger: aggregates are computed from FINAL and used only while the
//     insert count matches, so a late copy makes its bucket dirty (read from
//     FINAL again) instead of being counted twice (this package).
package ledger
