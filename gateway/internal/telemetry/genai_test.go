package telemetry

import (
	"context"
	"testing"
	"time"
)

// TestGenAIMetricsAllocateNothing: once an attribute set is cached, the
// GenAI metrics of a request allocate nothing, and a request span is
// neither recorded nor sampled when no OTLP endpoint is configured, so the
// hot path pays nothing for them with tracing off.
func TestGenAIMetricsAllocateNothing(t *testing.T) {
	tel, err := New(t.Context(), Config{Service: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.WithoutCancel(t.Context())) })
	ctx := t.Context()
	chat := Chat{RequestModel: "deepseek-chat", ResponseModel: "deepseek-v4-flash", InputTokens: 12, OutputTokens: 40,
		Duration: 900 * time.Millisecond, TTFT: 120 * time.Millisecond}
	tel.ObserveChat(ctx, chat)
	if n := testing.AllocsPerRun(200, func() { tel.ObserveChat(ctx, chat) }); n != 0 {
		t.Errorf("ObserveChat: %v allocations per request, want 0", n)
	}
	_, span := tel.Tracer.Start(ctx, "POST /v1/chat/completions")
	defer span.End()
	if span.IsRecording() || span.SpanContext().IsSampled() {
		t.Error("span recorded or sampled without an OTLP endpoint")
	}
}
