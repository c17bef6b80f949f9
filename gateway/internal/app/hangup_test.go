package app

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/usage"
)

// tpmUsed sums the key's TPM minute buckets in Redis.
func (h *harness) tpmUsed(t *testing.T, keyID string) int64 {
	t.Helper()
	keys, err := h.rdb.Keys(t.Context(), "qyai:tpm:{"+keyID+"}:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, k := range keys {
		n, err := h.rdb.Get(t.Context(), k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

// TestHangUpIsBilledForThePrompt: a client that hangs up after its request
// reached the upstream, before the answer or the first content chunk, is
// billed for its prompt as the gateway estimates it from the messages
// (about four bytes a token), flagged estimated, and the tokens count
// against the key's TPM.
func TestHangUpIsBilledForThePrompt(t *testing.T) {
	tests := []struct {
		name      string
		stream    bool
		directive string
		// afterComment: hang up once the first keep-alive comment arrived
		// (the stream has started, no content yet); otherwise once the
		// simulator is working on the request.
		afterComment bool
	}{
		{name: "stream_before_first_byte", stream: true, directive: "#sim delay_ms=60000"},
		{name: "stream_before_first_content", stream: true, directive: "#sim keepalive=100 chunk_delay_ms=200", afterComment: true},
		{name: "non_stream_before_answer", directive: "#sim delay_ms=60000"},
		{name: "non_stream_kept_alive", directive: "#sim keepalive=100 chunk_delay_ms=200"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startGateway(t, nil)
			keyID := "key_hangup_" + tc.name
			key := h.addKeyWith(t, keyID, func(r *apikey.Record) { r.TPM = 10_000_000 })

			messages := `[{"role":"system","content":"` + strings.Repeat("You answer briefly. ", 100) + `"},` +
				`{"role":"user","content":"` + tc.directive + `"}]`
			wantPrompt := int64(len(messages) / 4)
			body := `{"model":"deepseek-chat","stream":` + strconv.FormatBool(tc.stream) + `,"messages":` + messages + `}`

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			done := make(chan error, 1)
			if tc.afterComment {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				line, err := bufio.NewReader(resp.Body).ReadString('\n')
				if err != nil || !strings.HasPrefix(line, ":") {
					t.Fatalf("first line %q, %v; want a keep-alive comment", line, err)
				}
				cancel()
				_ = resp.Body.Close()
			} else {
				go func() {
					resp, err := http.DefaultClient.Do(req)
					if err == nil {
						_ = resp.Body.Close()
					}
					done <- err
				}()
				deadline := time.Now().Add(10 * time.Second)
				for h.sim.Stats().InFlight == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the request never reached the simulator")
					}
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
				if err := <-done; err == nil {
					t.Fatal("the client got an answer; it should have hung up first")
				}
			}

			ev := h.events(t, 1)[0]
			if ev.KeyID != keyID || ev.Outcome != usage.OutcomeClientCancelled || ev.Status != 499 {
				t.Errorf("event key %s outcome %s status %d, want %s client_cancelled 499", ev.KeyID, ev.Outcome, ev.Status, keyID)
			}
			if ev.UsageSource != usage.SourceEstimated || ev.PromptTokens != wantPrompt || ev.PromptTokens <= 0 ||
				ev.CacheMissTokens != wantPrompt || ev.CompletionTokens != 0 {
				t.Errorf("event source %s prompt %d (miss %d) completion %d; want estimated prompt %d, completion 0",
					ev.UsageSource, ev.PromptTokens, ev.CacheMissTokens, ev.CompletionTokens, wantPrompt)
			}
			// TPM is charged after the request, off its path: wait for it.
			deadline := time.Now().Add(10 * time.Second)
			for {
				got := h.tpmUsed(t, keyID)
				if got == wantPrompt {
					break
				}
				if got > wantPrompt || time.Now().After(deadline) {
					t.Fatalf("TPM counter %d, want %d", got, wantPrompt)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
