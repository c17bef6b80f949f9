package publish

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestClusterLeaderKilled runs three publishers, as three gateways would (each
// its own connection to the cluster's URL list and its own spool), against a real
// 3-node JetStream cluster with R3 usage streams. Mid-load the node that leads
// USAGE is killed with SIGKILL and restarted later: the publishes that time out
// during the leader election go to the spool and are replayed with their event ids
// as Nats-Msg-Id, so the stream ends with every event exactly once and nothing is
// dropped.
func TestClusterLeaderKilled(t *testing.T) {
	c := scripts.NATSCluster(t)
	urls := c.URLs("nats")
	env := &natsEnv{obs: gatewayJS(t, urls)}
	if _, err := usagejs.EnsureStream(t.Context(), env.obs, usagejs.StreamConfig{Replicas: 3}); err != nil {
		t.Fatalf("ensure R3 usage streams: %v", err)
	}
	stream, err := env.obs.Stream(t.Context(), usage.StreamName)
	if err != nil {
		t.Fatal(err)
	}

	const gateways, perGateway = 3, 600
	pubs := make([]*Publisher, gateways)
	runs := make([]*run, gateways)
	for g := range pubs {
		pubs[g] = newPublisher(t, gatewayJS(t, urls), t.TempDir(), nil)
		runs[g] = startRun(t, pubs[g])
	}
	want := map[string]bool{}
	for g := range gateways {
		for i := range perGateway {
			want[event(fmt.Sprintf("gw%d", g), i).ID] = true
		}
	}
	var published atomic.Int64
	var wg sync.WaitGroup
	for g, p := range pubs {
		wg.Go(func() {
			for i := range perGateway {
				p.Publish(event(fmt.Sprintf("gw%d", g), i))
				published.Add(1)
				// A steady load, so that the kill lands in the middle of it.
				time.Sleep(5 * time.Millisecond)
			}
		})
	}

	total := int64(gateways * perGateway)
	eventually(t, "a third published", func() bool { return published.Load() >= total/3 })
	name := waitLeader(t, stream)
	leader := c.NodeNamed(name)
	if leader == nil {
		t.Fatalf("USAGE leader %q is no node of the cluster", name)
	}
	t.Logf("kill -9 node %d (%s), the USAGE leader, after %d events", leader.Index, name, published.Load())
	leader.Kill(t)
	killed := time.Now()
	newLeader := waitLeader(t, stream)
	t.Logf("new USAGE leader %s after %v, %d events published", newLeader, time.Since(killed).Round(time.Millisecond), published.Load())
	leader.Start(t)
	t.Logf("node %d restarted after %d events", leader.Index, published.Load())
	wg.Wait()

	waitLeader(t, stream)
	env.wantExactly(t, want)
	var retried, spooled int64
	for g, p := range pubs {
		eventually(t, fmt.Sprintf("gateway %d settles", g), settled(p))
		st := p.Stats()
		if st.Dropped != 0 {
			t.Errorf("gateway %d dropped %d events: %+v", g, st.Dropped, st)
		}
		retried += st.Retried
		spooled += st.Spooled
	}
	t.Logf("across the leader election: %d publishes retried, %d events spooled and replayed", retried, spooled)
	for _, r := range runs {
		r.stop(t, 5*time.Second)
	}
	env.wantExactly(t, want) // nothing more arrived with the drain
	if info, err := stream.Info(t.Context()); err != nil || info.Config.Replicas != 3 {
		t.Fatalf("USAGE after the fault: %+v, %v; want 3 replicas", info, err)
	}
}

// waitLeader waits until the stream answers with a leader (during an election its
// info requests time out) and returns the leader's server name.
func waitLeader(t *testing.T, stream jetstream.Stream) string {
	t.Helper()
	var leader string
	eventually(t, "USAGE has a leader", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		info, err := stream.Info(ctx)
		if err != nil || info.Cluster == nil {
			return false
		}
		leader = info.Cluster.Leader
		return leader != ""
	})
	return leader
}
