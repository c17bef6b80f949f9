package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
	"github.com/qyai/qyai/testkit/testenv"
)

// TestNATSClusterLeaderKilled runs three publishers (in the gateways' place:
// Nats-Msg-Id = event id, a publish that fails or times out retried with the same
// id, as the gateway's spool replays it) and two meters against a real 3-node
// JetStream cluster with R3 usage streams. Mid-load it kills -9 the node that
// leads USAGE, restarts it later, and checks that ClickHouse holds every event
// exactly once.
func TestNATSClusterLeaderKilled(t *testing.T) {
	e := &env{cluster: scripts.NATSCluster(t), ch: scripts.ClickHouse(t)}
	urls := e.cluster.URLs("nats")
	var err error
	if e.nc, err = nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond)); err != nil {
		t.Fatalf("connect to nats cluster %s: %v", urls, err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	if cfg.NATS.StreamReplicas != 3 {
		t.Fatalf("STREAM_REPLICAS = %d, want 3", cfg.NATS.StreamReplicas)
	}
	stream, err := usagejs.EnsureStream(t.Context(), e.js, usagejs.StreamConfig{Replicas: cfg.NATS.StreamReplicas})
	if err != nil {
		t.Fatalf("ensure R3 streams: %v", err)
	}
	m1 := startMeter(t, cfg, Options{})
	m2 := startMeter(t, cfg, Options{})
	m1.waitReady(t)
	m2.waitReady(t)
	if ci := e.consumerInfo(t); ci.Cluster == nil || len(ci.Cluster.Replicas) != 2 {
		t.Fatalf("meter consumer cluster = %+v, want a leader and 2 replicas", ci.Cluster)
	}

	const publishers, perPublisher = 3, 600
	evs := makeEvents("cluster", publishers*perPublisher)
	var published, retries atomic.Int64
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		// Each publisher has its own connection, as each gateway does.
		nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
		if err != nil {
			t.Fatalf("connect publisher %d: %v", p, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for _, ev := range evs[p*perPublisher : (p+1)*perPublisher] {
				n, err := publishRetry(ctx, js, ev, 20*time.Second)
				retries.Add(int64(n))
				if err != nil {
					errs <- err
					cancel()
					return
				}
				published.Add(1)
				// A steady load, so that the kill lands in the middle of it.
				time.Sleep(time.Millisecond)
			}
		})
	}

	total := int64(len(evs))
	waitPublished := func(n int64) {
		waitFor(t, 30*time.Second, fmt.Sprintf("%d events published", n), func() (bool, string) {
			return published.Load() >= n || ctx.Err() != nil, fmt.Sprint(published.Load())
		})
	}
	waitPublished(total / 3)
	leader := usageLeader(t, stream, e.cluster)
	t.Logf("kill -9 node %d (n%d, %s), the USAGE leader, after %d events", leader.Index, leader.Index, leader.Addr, published.Load())
	leader.Kill(t)
	waitPublished(2 * total / 3)
	t.Logf("restart node %d after %d events", leader.Index, published.Load())
	leader.Start(t)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("publish retries across the leader election: %d", retries.Load())
	if newLeader := usageLeader(t, stream, e.cluster); newLeader == leader {
		t.Logf("node %d leads USAGE again", leader.Index)
	}

	want := expected(t, evs...)
	e.waitTotals(t, want, 30*time.Second)
	waitFor(t, 10*time.Second, "consumer drained", func() (bool, string) {
		ci := e.consumerInfo(t)
		return ci.NumPending == 0 && ci.NumAckPending == 0, fmt.Sprintf("pending %d, ack pending %d", ci.NumPending, ci.NumAckPending)
	})
	// Redeliveries (an ack lost with the killed node) may insert a row twice;
	// FINAL above collapses them. Report how many there were.
	t.Logf("raw rows %d for %d events", e.rawRows(t), len(evs))
	m1.waitReady(t)
	m2.waitReady(t)
}

// publishRetry publishes ev with its id as Nats-Msg-Id, retrying with the same id
// until JetStream acknowledges it or budget passes; it returns the retries.
func publishRetry(ctx context.Context, js jetstream.JetStream, ev usage.Event, budget time.Duration) (int, error) {
	b, err := ev.Marshal()
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(budget)
	for retries := 0; ; retries++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pctx, usage.Subject, b, jetstream.WithMsgID(ev.ID))
		cancel()
		if err == nil {
			return retries, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return retries, fmt.Errorf("publish %s: %w (after %d retries)", ev.ID, errors.Join(err, ctx.Err()), retries)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// usageLeader returns the node that leads stream: JetStream reports the leader by
// server name, which nats-cluster.sh sets to n<i>.
func usageLeader(t *testing.T, stream jetstream.Stream, c *testenv.Cluster) *testenv.Node {
	t.Helper()
	var leader *testenv.Node
	waitFor(t, 10*time.Second, "USAGE has a leader", func() (bool, string) {
		info, err := stream.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		if info.Cluster == nil {
			return false, "no cluster info"
		}
		leader = c.NodeNamed(info.Cluster.Leader)
		return leader != nil, fmt.Sprintf("leader %q", info.Cluster.Leader)
	})
	return leader
}
