package app

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/qyai/qyai/gateway/internal/publish"
)

// metrics exposes the gateway's counters in the Prometheus text format.
type metrics struct {
	pub            *publish.Publisher
	credentialFail atomic.Int64
}

func newMetrics(pub *publish.Publisher) *metrics { return &metrics{pub: pub} }

// UpstreamCredentialFailure counts upstream 401/402/403 answers: the
// gateway's own upstream key or balance is broken, which needs an operator.
func (m *metrics) UpstreamCredentialFailure(int) { m.credentialFail.Add(1) }

func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	st := m.pub.Stats()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP qyai_usage_events_queued Usage events in memory (queue and in flight), waiting for a JetStream ack.\n# TYPE qyai_usage_events_queued gauge\nqyai_usage_events_queued %d\n", st.Queued)
	fmt.Fprintf(w, "# HELP qyai_usage_events_published_total Usage events acknowledged by JetStream (live and replayed from the spool).\n# TYPE qyai_usage_events_published_total counter\nqyai_usage_events_published_total %d\n", st.Published)
	fmt.Fprintf(w, "# HELP qyai_usage_events_retried_total Usage publish attempts that failed or timed out (the event went to the spool).\n# TYPE qyai_usage_events_retried_total counter\nqyai_usage_events_retried_total %d\n", st.Retried)
	fmt.Fprintf(w, "# HELP qyai_usage_events_spooled_total Usage events written to the disk spool.\n# TYPE qyai_usage_events_spooled_total counter\nqyai_usage_events_spooled_total %d\n", st.Spooled)
	fmt.Fprintf(w, "# HELP qyai_usage_events_replayed_total Spooled usage events acknowledged by JetStream.\n# TYPE qyai_usage_events_replayed_total counter\nqyai_usage_events_replayed_total %d\n", st.Replayed)
	fmt.Fprintf(w, "# HELP qyai_usage_spool_events Usage events in the disk spool, not yet replayed.\n# TYPE qyai_usage_spool_events gauge\nqyai_usage_spool_events %d\n", st.SpoolEvents)
	fmt.Fprintf(w, "# HELP qyai_usage_spool_bytes Size of the disk spool's files.\n# TYPE qyai_usage_spool_bytes gauge\nqyai_usage_spool_bytes %d\n", st.SpoolBytes)
	fmt.Fprintf(w, "# HELP qyai_usage_events_dropped_total Usage events lost (spool full, damaged on disk, or published after shutdown).\n# TYPE qyai_usage_events_dropped_total counter\nqyai_usage_events_dropped_total %d\n", st.Dropped)
	fmt.Fprintf(w, "# HELP qyai_upstream_credential_failures_total Upstream 401/402/403 answers (our upstream key or balance).\n# TYPE qyai_upstream_credential_failures_total counter\nqyai_upstream_credential_failures_total %d\n", m.credentialFail.Load())
}
