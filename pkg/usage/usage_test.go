package usage

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestMarshalMatchesEncodingJSON: the hand-written encoder writes exactly
// what encoding/json writes, for plain and awkward values alike, so
// consumers decode either the same way.
func TestMarshalMatchesEncodingJSON(t *testing.T) {
	start := time.Date(2026, 11, 26, 3, 4, 5, 123456789, time.UTC)
	plain := Event{
		SchemaVersion: SchemaVersion, ID: "0193a8e2-7c4d-7b1a-9f00-3c2b1a0d9e8f", RequestID: "req_abc",
		StartedAt: start, FinishedAt: start.Add(1500 * time.Millisecond),
		KeyID: "key_1", KeyPrefix: "sk-abc", Tier: "pro", Model: "deepseek-chat", UpstreamModel: "deepseek-v4-flash",
		Thinking: true, Stream: true, Status: 200, Outcome: OutcomeCompleted,
		PromptTokens: 1200, CacheHitTokens: 1000, CacheMissTokens: 200, CompletionTokens: 50, ReasoningTokens: 7,
		UsageSource: SourceReported, LatencyMs: 1500, TTFTMs: 120, Gateway: "gw-1", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "vendor=x",
	}
	awkward := plain
	awkward.RequestID = "quote\" back\\slash <tag> & \u2028 é \x01"
	awkward.Gateway = ""
	awkward.TraceID = ""
	awkward.ErrorType = "upstream_error"
	awkward.Status = 499
	awkward.PromptTokens = -1
	awkward.StartedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 5*3600+30*60))
	awkward.FinishedAt = time.Time{}
	for name, e := range map[string]Event{"plain": plain, "awkward": awkward, "zero": {}} {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.Marshal()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s:\n got  %s (%v)\n want %s", name, got, err, want)
		}
	}
	bad := plain
	bad.StartedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := bad.Marshal(); err == nil {
		t.Error("year 10000: want the error encoding/json gives")
	}
}
