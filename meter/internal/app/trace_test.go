package app

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestInsertSpanLinksToTheGatewaySpans: the meter exports one
// "INSERT usage_events" span per batch over OTLP/HTTP, linked to the span
// each event names: a single event by its message's traceparent header, an
// event of a batch by its own traceparent field. An event without either
// adds no link.
func TestInsertSpanLinksToTheGatewaySpans(t *testing.T) {
	var mu sync.Mutex
	var spans []*tracepb.Span
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil {
			t.Errorf("decode OTLP traces: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				spans = append(spans, ss.GetSpans()...)
			}
		}
		mu.Unlock()
		b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(b)
	}))
	t.Cleanup(recv.Close)

	e := newEnv(t)
	cfg := e.config()
	cfg.OTLPTraces = recv.URL + "/v1/traces"
	evs := makeEvents("traced", 3)
	gatewaySpans := []string{"00f067aa0ba902b7", "00f067aa0ba902b8"}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for i, ev := range evs {
		b, err := ev.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: usage.Subject, Data: b, Header: nats.Header{}}
		if i < len(gatewaySpans) {
			msg.Header = usagejs.TraceHeader("00-"+traceID+"-"+gatewaySpans[i]+"-01", "")
		}
		if _, err := e.js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(ev.ID)); err != nil {
			t.Fatalf("publish %s: %v", ev.ID, err)
		}
	}
	// A batch carries no trace header: each event has its own context.
	batched := makeEvents("traced-batch", 3)
	batchSpans := []string{"00f067aa0ba902b9", "00f067aa0ba902ba"}
	for i, span := range batchSpans {
		batched[i].TraceParent = "00-" + traceID + "-" + span + "-01"
	}
	e.publishBatch(t, batched...)
	evs = append(evs, batched...)
	gatewaySpans = append(gatewaySpans, batchSpans...)
	m := startMeter(t, cfg, Options{})
	m.waitReady(t)
	e.waitTotals(t, expected(t, evs...), 20*time.Second)
	if err := m.stop(); err != nil { // flushes the span exporter
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	linked := map[string]bool{}
	rows := int64(0)
	for _, sp := range spans {
		if sp.GetName() != "INSERT usage_events" {
			continue
		}
		if sp.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || len(sp.GetParentSpanId()) != 0 {
			t.Errorf("insert span kind %v parent %x, want a client root span", sp.GetKind(), sp.GetParentSpanId())
		}
		for _, kv := range sp.GetAttributes() {
			if kv.GetKey() == "db.operation.batch.size" {
				rows += kv.GetValue().GetIntValue()
			}
		}
		for _, l := range sp.GetLinks() {
			if hex.EncodeToString(l.GetTraceId()) != traceID || bytes.Equal(l.GetTraceId(), sp.GetTraceId()) {
				t.Errorf("link to trace %x from span of trace %x, want %s", l.GetTraceId(), sp.GetTraceId(), traceID)
			}
			linked[hex.EncodeToString(l.GetSpanId())] = true
		}
	}
	if rows != int64(len(evs)) {
		t.Errorf("insert spans report %d rows, want %d (spans: %d)", rows, len(evs), len(spans))
	}
	ok := len(linked) == len(gatewaySpans)
	for _, id := range gatewaySpans {
		ok = ok && linked[id]
	}
	if !ok {
		t.Errorf("insert spans link to %v, want exactly %v", linked, gatewaySpans)
	}
}
