package publish

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestTraceContextTravelsAsHeaders: an event's trace context reaches
// JetStream as the message's traceparent and tracestate headers, whether
// it was published live or spooled while NATS was down and replayed by a
// later run; an event without one gets no trace headers.
func TestTraceContextTravelsAsHeaders(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traced := func(prefix string) *usage.Event {
		ev := event(prefix, 0)
		ev.TraceParent, ev.TraceState = tp, "qyai=1"
		return ev
	}
	env := startNATS(t, true)
	dir := filepath.Join(t.TempDir(), "spool")

	live := newPublisher(t, env.js, dir, nil)
	r := startRun(t, live)
	live.Publish(traced("live"))
	live.Publish(event("untraced", 0))
	eventually(t, "live events published", func() bool { return env.count(t) == 2 })
	r.stop(t, 5*time.Second)

	env.stop(t)
	down := newPublisher(t, env.js, dir, nil)
	r = startRun(t, down)
	down.Publish(traced("spooled"))
	r.stop(t, 5*time.Second)
	if st := down.Stats(); st.SpoolEvents != 1 {
		t.Fatalf("stats %+v, want the event in the spool", st)
	}
	env.start(t)
	replay := newPublisher(t, env.js, dir, nil)
	r = startRun(t, replay)
	eventually(t, "spool replayed", func() bool { return env.count(t) == 3 })
	r.stop(t, 5*time.Second)

	s, err := env.obs.Stream(t.Context(), usage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		gotTP, gotTS := m.Header.Get(usagejs.TraceParentHeader), m.Header.Get(usagejs.TraceStateHeader)
		switch id {
		case "live-00000", "spooled-00000":
			if gotTP != tp || gotTS != "qyai=1" {
				t.Errorf("%s: traceparent %q tracestate %q, want %q and qyai=1", id, gotTP, gotTS, tp)
			}
		case "untraced-00000":
			if gotTP != "" || gotTS != "" {
				t.Errorf("%s: trace headers %q %q on an event without trace context", id, gotTP, gotTS)
			}
		default:
			t.Errorf("unexpected message %q", id)
		}
	}
}
