package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP receiver: it decodes the real protobuf
// export requests that the services' exporters POST to /v1/traces and
// /v1/metrics (gzip or not), and keeps what they carry by service.name.
type otlpReceiver struct {
	URL string

	mu      sync.Mutex
	spans   []recvSpan
	metrics []recvMetric
}

type recvSpan struct {
	service string
	span    *tracepb.Span
}

type recvMetric struct {
	service string
	metric  *metricspb.Metric
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, req *http.Request) {
		var in coltracepb.ExportTraceServiceRequest
		if !decodeOTLP(t, w, req, &in) {
			return
		}
		r.mu.Lock()
		for _, rs := range in.GetResourceSpans() {
			svc := serviceName(rs.GetResource())
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					r.spans = append(r.spans, recvSpan{service: svc, span: sp})
				}
			}
		}
		r.mu.Unlock()
		writeOTLP(w, &coltracepb.ExportTraceServiceResponse{})
	})
	mux.HandleFunc("POST /v1/metrics", func(w http.ResponseWriter, req *http.Request) {
		var in colmetricspb.ExportMetricsServiceRequest
		if !decodeOTLP(t, w, req, &in) {
			return
		}
		r.mu.Lock()
		for _, rm := range in.GetResourceMetrics() {
			svc := serviceName(rm.GetResource())
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					r.metrics = append(r.metrics, recvMetric{service: svc, metric: m})
				}
			}
		}
		r.mu.Unlock()
		writeOTLP(w, &colmetricspb.ExportMetricsServiceResponse{})
	})
	srv := httptest.NewServer(mux) // a free loopback port
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

func decodeOTLP(t *testing.T, w http.ResponseWriter, req *http.Request, m proto.Message) bool {
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		t.Errorf("OTLP export with Content-Type %q, want application/x-protobuf", ct)
		http.Error(w, "protobuf only", http.StatusUnsupportedMediaType)
		return false
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return false
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err == nil {
		err = proto.Unmarshal(raw, m)
	}
	if err != nil {
		t.Errorf("decode OTLP export to %s: %v", req.URL.Path, err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeOTLP(w http.ResponseWriter, m proto.Message) {
	b, _ := proto.Marshal(m)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(b)
}

func serviceName(r *resourcepb.Resource) string {
	return attrString(r.GetAttributes(), "service.name")
}

func attrString(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

func attrInt(kvs []*commonpb.KeyValue, key string) (int64, bool) {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_IntValue)
			return v.IntValue, ok
		}
	}
	return 0, false
}

// span returns the first span that match accepts.
func (r *otlpReceiver) span(match func(recvSpan) bool) (recvSpan, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if match(s) {
			return s, true
		}
	}
	return recvSpan{}, false
}

// histogramPoints returns the data points of the histogram metric name
// that service exported, from the latest export that has some.
func (r *otlpReceiver) histogramPoints(service, name string) []*metricspb.HistogramDataPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.metrics) - 1; i >= 0; i-- {
		m := r.metrics[i]
		if m.service == service && m.metric.GetName() == name && len(m.metric.GetHistogram().GetDataPoints()) > 0 {
			return m.metric.GetHistogram().GetDataPoints()
		}
	}
	return nil
}

func (r *otlpReceiver) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, s := range r.spans {
		fmt.Fprintf(&b, "span %s %q trace %x span %x links %d\n", s.service, s.span.GetName(), s.span.GetTraceId(), s.span.GetSpanId(), len(s.span.GetLinks()))
	}
	names := map[string]bool{}
	for _, m := range r.metrics {
		names[m.service+" "+m.metric.GetName()] = true
	}
	for n := range names {
		fmt.Fprintf(&b, "metric %s\n", n)
	}
	return b.String()
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t *testing.T, what string, r *otlpReceiver, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not received within 30 s; the receiver has:\n%s", what, r.summary())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTraceFollowsOneRequestThroughNATSToTheMeter exports every service's
// traces and metrics over OTLP/HTTP to a receiver that decodes the
// protobuf, and follows one chat request: the gateway's "chat {model}"
// span (joined to the client's traceparent, with the GenAI attributes)
// travels as the usage message's trace context through NATS, and the
// meter's batch-insert span links to exactly that span. The GenAI metrics
// arrive with their attributes, and admin exports a span of the key
// creation.
func TestTraceFollowsOneRequestThroughNATSToTheMeter(t *testing.T) {
	recv := startOTLPReceiver(t)
	s := startStackEnv(t, 1, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": recv.URL,
		"OTEL_METRIC_EXPORT_INTERVAL": "500", // ms
		"OTEL_BSP_SCHEDULE_DELAY":     "200", // ms
	})
	key := s.createKey(t, `{"name":"otel","tier":"pro"}`)

	traceID := "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan := "00f067aa0ba902b7"
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.gatewayURLs[0]+"/v1/chat/completions",
		strings.NewReader(`{"model":"deepseek-chat","messages":[{"role":"user","content":"Say hi."}]}`))
	req.Header.Set("Authorization", "Bearer "+key.Key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-"+clientSpan+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("chat request: %v", err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat request: status %d: %s", resp.StatusCode, body.String())
	}

	// The gateway's span: in the client's trace, child of its span, named
	// and described per the GenAI conventions.
	var gw recvSpan
	waitFor(t, "gateway span", recv, func() bool {
		var ok bool
		gw, ok = recv.span(func(sp recvSpan) bool {
			return sp.service == "qyai-gateway" && hex.EncodeToString(sp.span.GetTraceId()) == traceID
		})
		return ok
	})
	sp := gw.span
	if sp.GetName() != "chat deepseek-chat" || hex.EncodeToString(sp.GetParentSpanId()) != clientSpan ||
		sp.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("gateway span %q kind %v parent %x, want \"chat deepseek-chat\", server, parent %s",
			sp.GetName(), sp.GetKind(), sp.GetParentSpanId(), clientSpan)
	}
	for k, want := range map[string]string{
		"gen_ai.operation.name": "chat", "gen_ai.provider.name": "deepseek", "gen_ai.request.model": "deepseek-chat",
	} {
		if got := attrString(sp.GetAttributes(), k); got != want {
			t.Errorf("gateway span %s = %q, want %q", k, got, want)
		}
	}
	if attrString(sp.GetAttributes(), "gen_ai.response.model") == "" {
		t.Error("gateway span has no gen_ai.response.model")
	}
	for _, k := range []string{"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"} {
		if n, ok := attrInt(sp.GetAttributes(), k); !ok || n <= 0 {
			t.Errorf("gateway span %s = %d (present %v), want > 0", k, n, ok)
		}
	}
	for _, kv := range sp.GetAttributes() { // nothing of the conversation or the key
		if v := kv.GetValue().GetStringValue(); strings.Contains(v, "Say hi") || strings.Contains(v, key.Key) {
			t.Errorf("gateway span attribute %s carries request content", kv.GetKey())
		}
	}

	// The meter's batch insert links to that very span, through the
	// message headers.
	waitFor(t, "meter insert span linked to the gateway span", recv, func() bool {
		_, ok := recv.span(func(m recvSpan) bool {
			if m.service != "qyai-meter" || m.span.GetName() != "INSERT usage_events" {
				return false
			}
			for _, l := range m.span.GetLinks() {
				if bytes.Equal(l.GetTraceId(), sp.GetTraceId()) && bytes.Equal(l.GetSpanId(), sp.GetSpanId()) {
					return true
				}
			}
			return false
		})
		return ok
	})

	// Admin traced the key creation.
	waitFor(t, "admin span", recv, func() bool {
		_, ok := recv.span(func(a recvSpan) bool {
			return a.service == "qyai-admin" && a.span.GetName() == "POST /admin/v1/keys" &&
				a.span.GetKind() == tracepb.Span_SPAN_KIND_SERVER
		})
		return ok
	})

	// The GenAI metrics, with their attributes.
	for _, name := range []string{"gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
		"gen_ai.server.time_per_output_token", "gen_ai.client.token.usage"} {
		waitFor(t, "metric "+name, recv, func() bool { return recv.histogramPoints("qyai-gateway", name) != nil })
		types := map[string]bool{}
		for _, p := range recv.histogramPoints("qyai-gateway", name) {
			a := p.GetAttributes()
			if attrString(a, "gen_ai.operation.name") != "chat" || attrString(a, "gen_ai.provider.name") != "deepseek" ||
				attrString(a, "gen_ai.request.model") != "deepseek-chat" || attrString(a, "gen_ai.response.model") == "" ||
				attrString(a, "error.type") != "" || p.GetCount() != 1 {
				t.Errorf("%s: point %v count %d, want chat/deepseek/deepseek-chat, a response model, no error, count 1", name, a, p.GetCount())
			}
			types[attrString(a, "gen_ai.token.type")] = true
		}
		if name == "gen_ai.client.token.usage" && (!types["input"] || !types["output"]) {
			t.Errorf("%s: token types %v, want input and output", name, types)
		}
	}
	// Alongside the qyai_* series, which stay as they were.
	waitFor(t, "metric qyai_gateway_request_duration", recv, func() bool {
		return recv.histogramPoints("qyai-gateway", "qyai_gateway_request_duration") != nil
	})
}
