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
	fmt.Fprintf(w, "# HELP qyai_usage_events_queued Usage events waiting to be acknowledged by JetStream.\n# TYPE qyai_usage_events_queued gauge\nqyai_usage_events_queued %d\n", st.Queued)
	fmt.Fprintf(w, "# HELP qyai_usage_events_published_total Usage events acknowledged by JetStream.\n# TYPE qyai_usage_events_published_total counter\nqyai_usage_events_published_total %d\n", st.Published)
	fmt.Fprintf(w, "# HELP qyai_usage_events_retried_total Usage publish attempts that failed and were retried.\n# TYPE qyai_usage_events_retried_total counter\nqyai_usage_events_retried_total %d\n", st.Retried)
	fmt.Fprintf(w, "# HELP qyai_usage_events_dropped_total Usage events lost.\n# TYPE qyai_usage_events_dropped_total counter\nqyai_usage_events_dropped_total %d\n", st.Dropped)
	fmt.Fprintf(w, "# HELP qyai_upstream_credential_failures_total Upstream 401/402/403 answers (our upstream key or balance).\n# TYPE qyai_upstream_credential_failures_total counter\nqyai_upstream_credential_failures_total %d\n", m.credentialFail.Load())
}
