package testenv_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/testkit/testenv"
)

// TestNATSCluster kills the leader of an R3 stream while publishing with Msg-Id,
// restarts it, and checks that the stream holds every message exactly once and
// that the restarted node caught up.
func TestNATSCluster(t *testing.T) {
	t.Parallel()
	c := scripts.NATSCluster(t)
	if len(c.Nodes) != 3 {
		t.Fatalf("nodes = %d, want 3", len(c.Nodes))
	}
	ctx := t.Context()
	nc, err := nats.Connect(c.URLs("nats"), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", c.URLs("nats"), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "USAGE", Subjects: []string{"usage.>"}, Storage: jetstream.FileStorage,
		Replicas: 3, Duplicates: time.Minute,
	})
	if err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}

	const perPhase = 200
	next := 0
	publish := func(n int) (retries int) {
		for range n {
			id := "event-" + strconv.Itoa(next)
			retries += publishRetry(t, ctx, js, id)
			next++
		}
		return retries
	}
	publish(perPhase)

	leader := streamLeader(t, ctx, stream, c)
	t.Logf("stream leader %s (node %d): kill -9", leader.Addr, leader.Index)
	leader.Kill(t)
	retries := publish(perPhase)
	// A second copy of every message of the first phase: JetStream must drop it.
	saved := next
	next = 0
	publish(perPhase)
	next = saved
	leader.Start(t)
	retries += publish(perPhase)
	t.Logf("publish retries across the leader election: %d", retries)

	want := uint64(3 * perPhase)
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Msgs != want {
		t.Fatalf("stream holds %d messages, want %d (none lost, none twice)", info.State.Msgs, want)
	}
	if info.Config.Replicas != 3 {
		t.Fatalf("replicas = %d, want 3", info.Config.Replicas)
	}
	// The restarted node catches up: its own copy of the stream reaches the count.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := nodeStreamMsgs(ctx, leader.HTTPAddr, "USAGE")
		if err == nil && got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node %d holds %d messages (err %v), want %d", leader.Index, got, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publishRetry publishes one message with Msg-Id id, retrying with the same id (so
// that JetStream deduplicates a retry of a publish that did land) until it is
// acknowledged or 20 s pass. It returns the number of retries.
func publishRetry(t *testing.T, ctx context.Context, js jetstream.JetStream, id string) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for retries := 0; ; retries++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pctx, "usage.test", []byte(id), jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return retries
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish %s: %v (after %d retries)", id, err, retries)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamLeader returns the node that leads stream, by the server name (n<i>) that
// JetStream reports.
func streamLeader(t *testing.T, ctx context.Context, stream jetstream.Stream, c *testenv.Cluster) *testenv.Node {
	t.Helper()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.Cluster == nil {
		t.Fatal("stream info has no cluster information")
	}
	n := c.NodeNamed(info.Cluster.Leader)
	if n == nil {
		t.Fatalf("stream leader %q is no node of the cluster", info.Cluster.Leader)
	}
	return n
}

// nodeStreamMsgs reads the message count of a stream as one node holds it, from the
// node's monitoring endpoint /jsz.
func nodeStreamMsgs(ctx context.Context, httpAddr, name string) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/jsz?streams=true", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }() // a read-only GET: nothing to do on error
	var jsz struct {
		AccountDetails []struct {
			Streams []struct {
				Name  string `json:"name"`
				State struct {
					Msgs uint64 `json:"messages"`
				} `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		return 0, fmt.Errorf("decode /jsz: %w", err)
	}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			if s.Name == name {
				return s.State.Msgs, nil
			}
		}
	}
	return 0, errors.New("stream not on this node")
}
