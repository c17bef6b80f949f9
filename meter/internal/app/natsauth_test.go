package app

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/meter/internal/config"
	"github.com/qyai/qyai/pkg/natsconn"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// TestAuthenticatedNATS runs the meter against a nats-server with
// authorization: the documented minimal permissions (docs/nats-permissions.conf),
// a gateway user that may only publish events and a meter user that may only
// consume its durable consumer. The meter connects with its real connect code
// (NATS_USER and NATS_PASSWORD_FILE through config.Load) and every event
// reaches ClickHouse.
func TestAuthenticatedNATS(t *testing.T) {
	dir := t.TempDir()
	perms, err := os.ReadFile("../../../docs/nats-permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("nats-permissions.conf", string(perms))
	conf := write("server.conf", `include ./nats-permissions.conf
authorization {
  users: [
    {user: gateway, password: "gateway-secret", permissions: $QYAI_GATEWAY_PERMISSIONS}
    {user: meter, password: "meter-secret", permissions: $QYAI_METER_PERMISSIONS}
  ]
}
`)
	e := &env{nats: scripts.NATSProcessConfig(t, conf), ch: scripts.ClickHouse(t)}

	// The gateway's side, with the gateway's user.
	gw := natsconn.Config{User: "gateway", Password: "gateway-secret"}
	opts, err := gw.Options(slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if e.nc, err = nats.Connect(e.nats.URL, opts...); err != nil {
		t.Fatalf("connect as the gateway: %v", err)
	}
	t.Cleanup(e.nc.Close)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(t.Context(), e.js, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("ensure stream as the gateway: %v", err)
	}
	evs := makeEvents("auth", 200)
	e.publish(t, evs[:100]...)

	base := e.config()
	cfg, err := config.Load(func(name string) string {
		return map[string]string{
			"NATS_URL":           base.NATS.URL,
			"NATS_USER":          "meter",
			"NATS_PASSWORD_FILE": write("meter-password", "meter-secret\n"),
			"CLICKHOUSE_ADDR":    base.ClickHouse.Addr,
		}[name]
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.NATS.AckWait, cfg.Batch, cfg.Rollup = base.NATS.AckWait, base.Batch, base.Rollup
	m := startMeter(t, cfg, Options{})
	m.waitReady(t)
	e.publish(t, evs[100:]...)
	e.waitTotals(t, expected(t, evs...), 30*time.Second)
}
