package usagejs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestEnsureStreamReplicasOnCluster: on a 3-node cluster, STREAM_REPLICAS=3 creates
// both streams with 3 copies, and raises an existing R1 stream (a deployment that
// grew from one server) to 3 in place, keeping its backlog.
func TestEnsureStreamReplicasOnCluster(t *testing.T) {
	t.Parallel()
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

	if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: 1}); err != nil {
		t.Fatalf("ensure R1 streams: %v", err)
	}
	// A durable consumer with the stream's replica count (0), as the meter's.
	if _, err := js.CreateOrUpdateConsumer(ctx, usage.StreamName, jetstream.ConsumerConfig{
		Durable: "meter", AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	for i := range 5 {
		if _, err := js.Publish(ctx, usage.Subject, []byte(`{}`), jetstream.WithMsgID(fmt.Sprint("evt-", i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	s, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: 3})
	if err != nil {
		t.Fatalf("raise streams to R3: %v", err)
	}
	for _, name := range []string{usage.StreamName, usagejs.DeadLetterStreamName} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		// nats-server 2.15 moves the stream to a new R3 raft group ("stream
		// remapping"); with a consumer on it that took ~10 s here. Wait until
		// both new copies are current.
		deadline := time.Now().Add(30 * time.Second)
		t0 := time.Now()
		for {
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatalf("stream %s info: %v", name, err)
			}
			if info.Config.Replicas != 3 {
				t.Fatalf("stream %s replicas = %d, want 3", name, info.Config.Replicas)
			}
			if info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2 &&
				info.Cluster.Replicas[0].Current && info.Cluster.Replicas[1].Current {
				t.Logf("stream %s: 3 copies after %v", name, time.Since(t0))
				break
			}
			if time.Now().After(deadline) {
				for _, n := range c.Nodes {
					b, _ := os.ReadFile(filepath.Join(n.Dir(), "server.log"))
					t.Logf("node %d log:\n%s", n.Index, b)
				}
				t.Fatalf("stream %s: 3 current copies not reached in 30 s: %+v (desired %+v)", name, info.Cluster, info.Cluster.Desired)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 5 {
		t.Fatalf("USAGE after the raise holds %+v (err %v), want 5 messages", info, err)
	}
	// The consumer (replicas 0: the stream's) follows the stream to 3 copies.
	deadline := time.Now().Add(30 * time.Second)
	t0 := time.Now()
	for {
		ci, err := js.Consumer(ctx, usage.StreamName, "meter")
		if err != nil {
			t.Fatalf("consumer after the raise: %v", err)
		}
		info := ci.CachedInfo()
		if info.NumPending == 5 && info.Cluster != nil && len(info.Cluster.Replicas) == 2 {
			t.Logf("consumer: 3 copies after %v", time.Since(t0))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer after the raise: pending %d, cluster %+v; want 5 pending on 3 copies", info.NumPending, info.Cluster)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Racing gateways and meters then agree on R3: ensuring it again changes nothing.
	if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Replicas: 3}); err != nil {
		t.Fatalf("ensure R3 again: %v", err)
	}
}

// TestEnsureStreamReplicasOnOneServer: STREAM_REPLICAS=3 against a single server
// (no cluster) fails with JetStream's reason, instead of running unreplicated.
func TestEnsureStreamReplicasOnOneServer(t *testing.T) {
	t.Parallel()
	js := connect(t)
	_, err := usagejs.EnsureStream(t.Context(), js, usagejs.StreamConfig{Replicas: 3})
	if err == nil {
		t.Fatal("EnsureStream(Replicas: 3) on one server succeeded, want an error")
	}
	if !strings.Contains(err.Error(), "set STREAM_REPLICAS=1") {
		t.Fatalf("EnsureStream(Replicas: 3) on one server = %v, want a hint to set STREAM_REPLICAS=1", err)
	}
}
