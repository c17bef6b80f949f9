//go:build !linux

package podrun

import "testing"

// TestChartPodsUnderPodman needs Linux (rootful podman, runc, Pdeathsig);
// elsewhere it fails rather than vanish from the suite.
func TestChartPodsUnderPodman(t *testing.T) {
	t.Fatal("the podman test of the chart's pods runs on Linux only")
}
