package testenv_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/shopspring/decimal"

	"github.com/qyai/qyai/testkit/embednats"
	"github.com/qyai/qyai/testkit/testenv"
)

func TestRedis(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		start     func(testing.TB) *testenv.Server
		persisted bool // the value written before Stop is there after Start
	}{
		{name: "ephemeral", start: scripts.Redis, persisted: false},
		{name: "persistent", start: scripts.RedisPersistent, persisted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := tt.start(t)
			ctx := t.Context()
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
			t.Cleanup(func() { _ = rdb.Close() })

			if err := rdb.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING: %v", err)
			}
			if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
				t.Fatalf("GET k = %q, %v; want v", got, err)
			}

			addr := srv.Addr
			srv.Stop(t)
			if err := rdb.Ping(ctx).Err(); err == nil {
				t.Fatal("PING succeeded after Stop")
			}
			srv.Start(t)
			if srv.Addr != addr {
				t.Fatalf("Addr after restart = %s, want %s", srv.Addr, addr)
			}
			if err := rdb.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING after restart: %v", err)
			}
			got, err := rdb.Get(ctx, "k").Result()
			switch {
			case tt.persisted && (err != nil || got != "v"):
				t.Fatalf("GET k after restart = %q, %v; want v", got, err)
			case !tt.persisted && !errors.Is(err, redis.Nil):
				t.Fatalf("GET k after restart = %q, %v; want redis.Nil", got, err)
			}
		})
	}
}

func TestClickHouse(t *testing.T) {
	t.Parallel()
	srv := scripts.ClickHouse(t)
	ctx := t.Context()
	if srv.HTTPAddr == "" || srv.HTTPAddr == srv.Addr {
		t.Fatalf("HTTPAddr = %q, Addr = %q: want two ports", srv.HTTPAddr, srv.Addr)
	}
	httpGet(t, "http://"+srv.HTTPAddr+"/ping")
	conn := openClickHouse(t, srv.Addr)

	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		t.Fatalf("SELECT version(): %v", err)
	}
	t.Logf("ClickHouse %s", version)

	if err := conn.Exec(ctx, `CREATE TABLE events (
		id String, at DateTime, tokens UInt64, cost Decimal(18, 9), model LowCardinality(String)
	) ENGINE = MergeTree ORDER BY (at, id)`); err != nil {
		t.Fatalf("CREATE TABLE: %v", err)
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO events")
	if err != nil {
		t.Fatalf("PrepareBatch: %v", err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, id := range []string{"a", "b", "c"} {
		if err := batch.Append(id, at, uint64(10*i), decimal.RequireFromString("0.000000123"), "deepseek-chat"); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("Send: %v", err)
	}
	wantRows := func(when string) {
		t.Helper()
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM events").Scan(&n); err != nil {
			t.Fatalf("SELECT count() %s: %v", when, err)
		}
		if n != 3 {
			t.Fatalf("count() %s = %d, want 3", when, n)
		}
	}
	wantRows("after insert")

	addr, httpAddr := srv.Addr, srv.HTTPAddr
	srv.Stop(t)
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded after Stop")
	}
	srv.Start(t)
	if srv.Addr != addr || srv.HTTPAddr != httpAddr {
		t.Fatalf("after restart Addr, HTTPAddr = %s, %s; want %s, %s", srv.Addr, srv.HTTPAddr, addr, httpAddr)
	}
	httpGet(t, "http://"+srv.HTTPAddr+"/ping")
	conn = openClickHouse(t, srv.Addr)
	wantRows("after restart")
}

func openClickHouse(t *testing.T, addr string) clickhouse.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:     []string{addr},
		Protocol: clickhouse.Native,
		Auth:     clickhouse.Auth{Database: "default", Username: "default"},
	})
	if err != nil {
		t.Fatalf("open clickhouse: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := conn.Ping(t.Context()); err != nil {
		t.Fatalf("ping clickhouse: %v", err)
	}
	return conn
}

func TestNATS(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		start func(testing.TB) *testenv.Server
	}{
		{name: "embedded", start: embednats.Start},
		{name: "process", start: scripts.NATSProcess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := tt.start(t)
			ctx := t.Context()
			// The client keeps reconnecting while the server is down, as the
			// services do.
			nc, err := nats.Connect(srv.URL, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
			if err != nil {
				t.Fatalf("connect %s: %v", srv.URL, err)
			}
			t.Cleanup(nc.Close)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatalf("jetstream: %v", err)
			}
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name: "USAGE", Subjects: []string{"usage.>"}, Storage: jetstream.FileStorage,
			}); err != nil {
				t.Fatalf("create stream: %v", err)
			}
			if _, err := js.Publish(ctx, "usage.test", []byte("event-1")); err != nil {
				t.Fatalf("publish: %v", err)
			}

			url := srv.URL
			srv.Stop(t)
			if srv.Running() {
				t.Fatal("Running() after Stop")
			}
			srv.Start(t)
			if srv.URL != url {
				t.Fatalf("URL after restart = %s, want %s", srv.URL, url)
			}
			if srv.HTTPAddr != "" {
				httpGet(t, "http://"+srv.HTTPAddr+"/healthz?js-enabled-only=true")
			}

			waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			stream, err := streamAfterReconnect(waitCtx, js, "USAGE")
			if err != nil {
				t.Fatalf("stream after restart: %v", err)
			}
			msg, err := stream.GetMsg(waitCtx, 1)
			if err != nil {
				t.Fatalf("get message 1 after restart: %v", err)
			}
			if string(msg.Data) != "event-1" {
				t.Fatalf("message 1 after restart = %q, want event-1", msg.Data)
			}
		})
	}
}

// streamAfterReconnect looks the stream up until the client has reconnected and
// JetStream answers, or ctx ends.
func streamAfterReconnect(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	for {
		reqCtx, cancel := context.WithTimeout(ctx, time.Second)
		stream, err := js.Stream(reqCtx, name)
		cancel()
		if err == nil {
			return stream, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func httpGet(t *testing.T, url string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
}

// TestRedisStartWaitsForLoading restarts a persistent Redis over an append-only
// file large enough that loading it takes a noticeable time, and checks that Start
// returns only once the server has loaded it: the first command is served, not
// refused with LOADING.
func TestRedisStartWaitsForLoading(t *testing.T) {
	t.Parallel()
	srv := scripts.RedisPersistent(t)
	ctx := t.Context()
	// MaxRetries -1: go-redis would otherwise retry LOADING by itself.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })

	const keys, batch = 400_000, 10_000
	value := strings.Repeat("v", 100)
	for i := 0; i < keys; i += batch {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < i+batch; j++ {
				p.Set(ctx, "key:"+strconv.Itoa(j), value, 0)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("write keys %d..%d: %v", i, i+batch, err)
		}
	}
	srv.Stop(t)
	srv.Start(t)

	info, err := rdb.Info(ctx, "persistence").Result()
	if err != nil {
		t.Fatalf("INFO persistence: %v", err)
	}
	if !strings.Contains(info, "\r\nloading:0\r\n") {
		t.Fatalf("INFO persistence right after Start:\n%s\nwant loading:0", info)
	}
	n, err := rdb.DBSize(ctx).Result()
	if err != nil || n != keys {
		t.Fatalf("DBSIZE right after Start = %d, %v; want %d", n, err, keys)
	}
	if got, err := rdb.Get(ctx, "key:0").Result(); err != nil || got != value {
		t.Fatalf("GET key:0 right after Start = %q, %v", got, err)
	}
}
