// Package e2e tests the whole system as an operator runs it: Redis,
// ClickHouse and NATS servers and the simulator, meter, admin and gateway
// binaries, each a real process, driven through the official OpenAI Go SDK.
package e2e

import (
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

type billingUsage struct {
	Object                string  `json:"object"`
	KeyPrefix             string  `json:"key_prefix"`
	Tier                  string  `json:"tier"`
	MonthlyRequests       int64   `json:"monthly_requests"`
	MonthlyLimit          int64   `json:"monthly_limit"`
	Remaining             int64   `json:"remaining"`
	UsagePercent          float64 `json:"usage_percent"`
	TotalPromptTokens     int64   `json:"total_prompt_tokens"`
	TotalCompletionTokens int64   `json:"total_completion_tokens"`
}

// TestOneRequestMeteredEndToEnd is the foundation's promise: a key made
// through the admin API, one plain and one streaming request through the
// SDK, and the billing endpoint reports exactly what the upstream served.
func TestOneRequestMeteredEndToEnd(t *testing.T) {
	s := startStack(t, 1)
	key := s.createKey(t, `{"name":"e2e","tier":"pro"}`)
	if len(key.Key) < 35 || key.Key[:3] != "sk-" || key.Tier != "pro" || key.MonthlyLimit != 3000 || key.RPM != 30 {
		t.Fatalf("unexpected key: %+v", key)
	}

	client := openai.NewClient(option.WithBaseURL(s.gatewayURLs[0]+"/v1"), option.WithAPIKey(key.Key), option.WithMaxRetries(0))
	ctx := t.Context()

	resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "deepseek-v4-flash",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You are a helpful assistant."),
			openai.UserMessage("Write a haiku about programming."),
		},
		Temperature: openai.Float(0.7),
	})
	if err != nil {
		t.Fatalf("non-streaming request: %v", err)
	}
	if len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" || resp.Usage.TotalTokens == 0 {
		t.Fatalf("unexpected completion: %+v", resp)
	}

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         "deepseek-chat",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Explain recursion in 3 sentences.")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("streaming request: %v", err)
	}
	if chunks < 3 || acc.Choices[0].Message.Content == "" || acc.Usage.CompletionTokens == 0 {
		t.Fatalf("unexpected stream: %d chunks, %+v", chunks, acc.ChatCompletion)
	}

	served := s.simStats(t)
	if served.Requests != 2 || served.Completed != 2 {
		t.Fatalf("simulator served %+v, want 2 completed requests", served)
	}
	if uint64(resp.Usage.PromptTokens+acc.Usage.PromptTokens) != served.PromptTokens {
		t.Errorf("SDK saw %d prompt tokens, simulator served %d", resp.Usage.PromptTokens+acc.Usage.PromptTokens, served.PromptTokens)
	}

	// The billing endpoint, at the gateway's base URL, catches up within seconds:
	// the request count at once (it is what the limits enforce), the token
	// totals once the meter has written the events.
	want := billingUsage{
		Object: "billing.usage", KeyPrefix: key.KeyPrefix, Tier: "pro",
		MonthlyRequests: 2, MonthlyLimit: 3000, Remaining: 2998, UsagePercent: 0.1,
		TotalPromptTokens:     int64(served.PromptTokens),
		TotalCompletionTokens: int64(served.CompletionTokens),
	}
	var bu billingUsage
	deadline := time.Now().Add(20 * time.Second)
	for {
		status := getJSON(t, s.gatewayURLs[0]+"/v1/dashboard/billing/usage", key.Key, &bu)
		if status != 200 {
			t.Fatalf("billing status %d: %+v", status, bu)
		}
		if bu == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if bu != want {
		t.Errorf("billing usage:\n got %+v\nwant %+v", bu, want)
	}

	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	getJSON(t, s.gatewayURLs[0]+"/v1/models", key.Key, &models)
	if models.Object != "list" || len(models.Data) != 6 {
		t.Errorf("models: %+v", models)
	}
}
