package benchmeter

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
	"github.com/qyai/qyai/testkit/testenv"
)

// scripts is deploy/local, relative to this package's directory.
const scripts testenv.Scripts = "../../local"

// TestEnsureStreamKeepsReplicas: against a clustered stack whose gateways made the
// usage streams R3, the bench (given the cluster's URL list) leaves them R3.
func TestEnsureStreamKeepsReplicas(t *testing.T) {
	c := scripts.NATSCluster(t)
	nc, err := nats.Connect(c.URLs("nats"))
	if err != nil {
		t.Fatalf("connect %s: %v", c.URLs("nats"), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: 3}); err != nil {
		t.Fatalf("ensure R3 streams as the gateways do: %v", err)
	}
	if err := ensureStream(ctx, js, 0); err != nil {
		t.Fatalf("bench ensureStream: %v", err)
	}
	s, err := js.Stream(ctx, usage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Replicas; got != 3 {
		t.Fatalf("USAGE replicas after the bench's ensure = %d, want 3", got)
	}
}
