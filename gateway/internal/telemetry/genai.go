package telemetry

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// The GenAI semantic conventions (semconv v1.40.0) the gateway follows,
// in one place. Every chat request is a "chat" operation of the
// "deepseek" provider, whichever upstream endpoint served it.
const (
	// OperationChat is gen_ai.operation.name, and the first word of the
	// span name "chat {gen_ai.request.model}".
	OperationChat = "chat"
	// ProviderDeepSeek is gen_ai.provider.name.
	ProviderDeepSeek = "deepseek"

	// ErrorTypeOther is error.type of a failure without a better name, as
	// the conventions spell it.
	ErrorTypeOther = "_OTHER"

	MetricRequestDuration  = "gen_ai.server.request.duration"
	MetricTimeToFirstToken = "gen_ai.server.time_to_first_token"
	MetricTimePerOutput    = "gen_ai.server.time_per_output_token"
	MetricTokenUsage       = "gen_ai.client.token.usage"
)

// Chat is what the gateway knows about one chat request once it ended.
// Models are catalog ids and upstream model names (bounded); nothing here
// comes from the prompt or the completion.
type Chat struct {
	RequestModel  string // the public model the client asked for
	ResponseModel string // the upstream model that answered; empty when none did
	InputTokens   int64  // prompt tokens, reported or estimated
	OutputTokens  int64  // completion tokens, reported or estimated
	// ErrorType is error.type: the API error type of a failed request
	// (e.g. "upstream_error", "invalid_request_error"), empty on success.
	ErrorType string
	Duration  time.Duration // to the end of the response, streams included
	TTFT      time.Duration // to the first byte of the answer; 0 when none
}

// ChatSpanName is the span name the conventions give a chat request.
func ChatSpanName(model string) string { return OperationChat + " " + model }

// ChatSpanAttributes sets c's GenAI attributes on a recording span.
func ChatSpanAttributes(span trace.Span, c Chat) {
	attrs := []attribute.KeyValue{
		semconv.GenAIOperationNameKey.String(OperationChat),
		semconv.GenAIProviderNameKey.String(ProviderDeepSeek),
		semconv.GenAIRequestModelKey.String(c.RequestModel),
		semconv.GenAIUsageInputTokensKey.Int64(c.InputTokens),
		semconv.GenAIUsageOutputTokensKey.Int64(c.OutputTokens),
	}
	if c.ResponseModel != "" {
		attrs = append(attrs, semconv.GenAIResponseModelKey.String(c.ResponseModel))
	}
	if c.ErrorType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(c.ErrorType))
	}
	span.SetAttributes(attrs...)
}

type genaiInstruments struct {
	duration, ttft, tpot metric.Float64Histogram
	tokenCount           metric.Int64Histogram
}

// newGenAIInstruments creates the GenAI metrics with the bucket boundaries
// the conventions advise.
func newGenAIInstruments(m metric.Meter) (genaiInstruments, error) {
	var g genaiInstruments
	var err1, err2, err3, err4 error
	g.duration, err1 = m.Float64Histogram(MetricRequestDuration, metric.WithUnit("s"),
		metric.WithDescription("Generative AI server request duration such as time-to-last byte or last output token."),
		metric.WithExplicitBucketBoundaries(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92))
	g.ttft, err2 = m.Float64Histogram(MetricTimeToFirstToken, metric.WithUnit("s"),
		metric.WithDescription("Time to generate first token for successful responses."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0))
	g.tpot, err3 = m.Float64Histogram(MetricTimePerOutput, metric.WithUnit("s"),
		metric.WithDescription("Time per output token generated after the first token for successful responses."),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5))
	g.tokenCount, err4 = m.Int64Histogram(MetricTokenUsage, metric.WithUnit("{token}"),
		metric.WithDescription("Number of input and output tokens used, by gen_ai.token.type."),
		metric.WithExplicitBucketBoundaries(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864))
	return g, errors.Join(err1, err2, err3, err4)
}

// genaiKey identifies one GenAI attribute set.
type genaiKey struct {
	requestModel, responseModel, errorType string
}

// genaiSets are the cached record options of one genaiKey: the base set,
// and the base set with gen_ai.token.type input and output. They are kept
// as slices, passed as they are to Record: a variadic argument built per
// call would be allocated per request.
type genaiSets struct {
	base, input, output []metric.RecordOption
}

func (t *Telemetry) genaiSet(k genaiKey) *genaiSets {
	t.attrMu.RLock()
	s, ok := t.gattrs[k]
	t.attrMu.RUnlock()
	if ok {
		return s
	}
	attrs := []attribute.KeyValue{
		semconv.GenAIOperationNameKey.String(OperationChat),
		semconv.GenAIProviderNameKey.String(ProviderDeepSeek),
		semconv.GenAIRequestModelKey.String(k.requestModel),
	}
	if k.responseModel != "" {
		attrs = append(attrs, semconv.GenAIResponseModelKey.String(k.responseModel))
	}
	if k.errorType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.errorType))
	}
	with := func(extra ...attribute.KeyValue) []metric.RecordOption {
		return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(attrs[:len(attrs):len(attrs)], extra...)...))}
	}
	s = &genaiSets{
		base:   with(),
		input:  with(semconv.GenAITokenTypeInput),
		output: with(semconv.GenAITokenTypeOutput),
	}
	t.attrMu.Lock()
	if len(t.gattrs) < 10000 { // bounded: models x upstream models x error types
		t.gattrs[k] = s
	}
	t.attrMu.Unlock()
	return s
}

// ObserveChat records one finished chat request in the GenAI metrics.
func (t *Telemetry) ObserveChat(ctx context.Context, c Chat) {
	s := t.genaiSet(genaiKey{requestModel: c.RequestModel, responseModel: c.ResponseModel, errorType: c.ErrorType})
	t.genai.duration.Record(ctx, c.Duration.Seconds(), s.base...)
	if c.ErrorType == "" && c.TTFT > 0 {
		t.genai.ttft.Record(ctx, c.TTFT.Seconds(), s.base...)
		if c.OutputTokens > 1 && c.Duration > c.TTFT {
			t.genai.tpot.Record(ctx, (c.Duration-c.TTFT).Seconds()/float64(c.OutputTokens-1), s.base...)
		}
	}
	if c.InputTokens > 0 || c.OutputTokens > 0 {
		t.genai.tokenCount.Record(ctx, c.InputTokens, s.input...)
		t.genai.tokenCount.Record(ctx, c.OutputTokens, s.output...)
	}
}
