// Package audit records who changed which API key, when, and how, durably.
//
// Every change of a key produces one Entry: who (the admin token's name),
// when (UTC), the action, and the key's stored State before and after. The
// key store appends the entry to the Redis stream StreamKey in the same
// transaction as the change (see keys/redis), so the change and its entry
// are stored together or not at all; Flusher then copies entries to
// ClickHouse (audit/clickhouse, table audit_log) and only afterwards deletes
// them from the stream. A ClickHouse outage therefore delays entries but
// never loses them, and a flush repeated after a crash stores an entry twice
// with the same id, which audit_log (a ReplacingMergeTree) collapses.
//
// States carry the key's hash, never the key: Rebuild can restore every key
// record and auth entry in Redis from the audit log if Redis data is lost.
package audit

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
)

// StreamKey is the Redis stream buffering entries until they are in
// ClickHouse; each stream entry has one field, EntryField, holding the
// Entry as JSON.
const (
	StreamKey  = "qyai:audit"
	EntryField = "entry"
	// DeadKey receives stream entries that cannot be decoded (they are
	// moved aside so that they do not block the flusher), for an operator.
	DeadKey = "qyai:audit:dead"
)

// Actions recorded.
const (
	ActionCreate  = "create"
	ActionUpdate  = "update"
	ActionDisable = "disable"
	ActionEnable  = "enable"
	ActionRotate  = "rotate"
	ActionRevoke  = "revoke"
	// ActionRegenerate is a rotation asked for by the key holder with the
	// key itself (POST /v1/dashboard/key/regenerate); its actor is
	// "key:<key id>", which no admin token name can be (they have no colon).
	ActionRegenerate = "regenerate"
)

// State is a key as stored in Redis (qyai:key:{<id>} and its auth entry):
// the record the gateway reads plus Revision, which starts at 1 on create and
// grows by one with every committed change. Revisions order a key's history
// whatever the clocks of the admin replicas say, and make stale writes
// detectable. The gateway ignores the extra field.
type State struct {
	apikey.Record
	Revision uint64 `json:"revision"`
}

// Entry is one audited change.
type Entry struct {
	ID       string    `json:"id"`
	At       time.Time `json:"at"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	KeyID    string    `json:"key_id"`
	Revision uint64    `json:"revision"`
	// Fields names what changed (JSON names of the record's fields).
	Fields []string `json:"fields"`
	// Before is nil on create.
	Before *State `json:"before,omitempty"`
	After  State  `json:"after"`
}

// NewEntry returns the entry of a change from before (nil on create) to
// after, with a fresh random id.
func NewEntry(at time.Time, actor, action string, before *State, after State) (Entry, error) {
	id, err := NewID()
	if err != nil {
		return Entry{}, err
	}
	return Entry{
		ID: id, At: at.UTC().Truncate(time.Second), Actor: actor, Action: action,
		KeyID: after.ID, Revision: after.Revision, Fields: Changed(before, after),
		Before: before, After: after,
	}, nil
}

// NewID returns a random audit id: "aud_" and 32 hex digits.
func NewID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate audit id: %w", err)
	}
	return "aud_" + hex.EncodeToString(b), nil
}

// Changed lists the fields that differ between before and after, in record
// order; on create (before nil) every field is listed. updated_at and
// revision change with every entry and are not listed.
func Changed(before *State, after State) []string {
	var b apikey.Record
	if before != nil {
		b = before.Record
	}
	a := after.Record
	out := []string{}
	add := func(name string, differs bool) {
		if before == nil || differs {
			out = append(out, name)
		}
	}
	add("id", b.ID != a.ID)
	add("hash", b.Hash != a.Hash)
	add("key_prefix", b.KeyPrefix != a.KeyPrefix)
	add("name", b.Name != a.Name)
	add("tier", b.Tier != a.Tier)
	add("rpm", b.RPM != a.RPM)
	add("monthly_limit", b.MonthlyLimit != a.MonthlyLimit)
	add("tpm", b.TPM != a.TPM)
	add("models", !slices.Equal(b.Models, a.Models))
	add("status", b.Status != a.Status)
	add("created_at", !b.CreatedAt.Equal(a.CreatedAt))
	return out
}

// Encode returns the stream form of e.
func (e Entry) Encode() (string, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("encode audit entry: %w", err)
	}
	return string(b), nil
}

// Decode parses the stream form of an entry.
func Decode(s string) (Entry, error) {
	var e Entry
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		return Entry{}, fmt.Errorf("decode audit entry: %w", err)
	}
	if e.ID == "" || e.KeyID == "" || e.Revision == 0 || e.After.ID != e.KeyID {
		return Entry{}, fmt.Errorf("decode audit entry: id, key_id, revision or after missing")
	}
	return e, nil
}
