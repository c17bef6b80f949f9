package publish

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestTraceContextTravelsWithEachEvent: an event's trace context reaches
// JetStream whether it was published live or spooled while NATS was down
// and replayed by a later run. A message of one event carries it as its
// traceparent and tracestate headers (an event without one gets none); a
// batch carries none, and each of its events keeps its own in its fields.
func TestTraceContextTravelsWithEachEvent(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traced := func(prefix string, i int) *usage.Event {
		ev := event(prefix, i)
		ev.TraceParent, ev.TraceState = tp, "qyai=1"
		return ev
	}
	env := startNATS(t, true)
	dir := filepath.Join(t.TempDir(), "spool")

	live := newPublisher(t, env.js, dir, nil)
	r := startRun(t, live)
	live.Publish(traced("live", 0))
	eventually(t, "live event published", func() bool { return env.count(t) == 1 })
	live.Publish(event("untraced", 0))
	eventually(t, "untraced event published", func() bool { return env.count(t) == 2 })
	for i := range 3 { // together: most likely one batch
		live.Publish(traced("together", i))
	}
	live.Publish(event("together-untraced", 0))
	eventually(t, "events published together", func() bool { return env.count(t) == 6 })
	r.stop(t, 5*time.Second)

	env.stop(t)
	down := newPublisher(t, env.js, dir, nil)
	r = startRun(t, down)
	down.Publish(traced("spooled", 0))
	r.stop(t, 5*time.Second)
	if st := down.Stats(); st.SpoolEvents != 1 {
		t.Fatalf("stats %+v, want the event in the spool", st)
	}
	env.start(t)
	replay := newPublisher(t, env.js, dir, nil)
	r = startRun(t, replay)
	eventually(t, "spool replayed", func() bool { return env.count(t) == 7 })
	r.stop(t, 5*time.Second)

	seen := map[string]bool{}
	for _, m := range env.messages(t) {
		gotTP, gotTS := m.Header.Get(usagejs.TraceParentHeader), m.Header.Get(usagejs.TraceStateHeader)
		evs, err := usage.Split(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range evs {
			ev, err := usage.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			seen[ev.ID] = true
			wantTP, wantTS := "", ""
			if ev.ID != "untraced-00000" && ev.ID != "together-untraced-00000" {
				wantTP, wantTS = tp, "qyai=1"
			}
			if ev.TraceParent != wantTP || ev.TraceState != wantTS {
				t.Errorf("%s: event carries traceparent %q tracestate %q, want %q %q", ev.ID, ev.TraceParent, ev.TraceState, wantTP, wantTS)
			}
			if usage.IsBatch(m.Data) {
				wantTP, wantTS = "", ""
			}
			if gotTP != wantTP || gotTS != wantTS {
				t.Errorf("%s (message %d, %s): headers traceparent %q tracestate %q, want %q %q",
					ev.ID, m.Sequence, m.Header.Get(jetstream.MsgIDHeader), gotTP, gotTS, wantTP, wantTS)
			}
		}
	}
	if len(seen) != 7 {
		t.Errorf("stream holds %d distinct events, want 7: %v", len(seen), seen)
	}
}
