package natsconn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

// permissionsFile is the documented minimal permission set of the services.
const permissionsFile = "../../docs/nats-permissions.conf"

// durable is METER_CONSUMER's default, which permissionsFile names.
const durable = "meter"

// connect connects to url the way the services do: env read with envconfig,
// validated, turned into options by natsconn; extra options come last.
func connect(t *testing.T, url string, env map[string]string, extra ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	c, err := read(env)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	opts, err := c.Options(slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatalf("options: %v", err)
	}
	// Generous: the TLS handshake runs on a shared, loaded machine.
	opts = append(opts, nats.Timeout(5*time.Second), nats.Name("natsconn-test"))
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

func mustConnect(t *testing.T, url string, env map[string]string, extra ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := connect(t, url, env, extra...)
	if err != nil {
		t.Fatalf("connect as %v: %v", env, err)
	}
	return nc
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// authServer starts nats-server with the documented permissions: users
// gateway and meter (passwords) and an nkey user with the gateway's
// permissions. It returns the server's URL and the nkey user's seed file.
func authServer(t *testing.T) (url, seedFile string) {
	t.Helper()
	dir := t.TempDir()
	perms, err := os.ReadFile(permissionsFile)
	if err != nil {
		t.Fatal(err)
	}
	// include resolves paths relative to the including file.
	writeFile(t, dir, "nats-permissions.conf", string(perms))
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	conf := writeFile(t, dir, "server.conf", fmt.Sprintf(`include ./nats-permissions.conf
authorization {
  users: [
    {user: gateway, password: "gateway-secret", permissions: $QYAI_GATEWAY_PERMISSIONS}
    {user: meter, password: "meter-secret", permissions: $QYAI_METER_PERMISSIONS}
    {nkey: %s, permissions: $QYAI_GATEWAY_PERMISSIONS}
  ]
}
`, pub))
	srv := scripts.NATSProcessConfig(t, conf)
	return srv.URL, writeFile(t, dir, "gateway.nk", string(seed)+"\n")
}

// meterConsumer is the meter's consumer configuration (meter/internal/app's
// ConsumerConfig) in the parts permissions depend on.
var meterConsumer = jetstream.ConsumerConfig{
	Durable:       durable,
	FilterSubject: usage.SubjectFilter,
	DeliverPolicy: jetstream.DeliverAllPolicy,
	AckPolicy:     jetstream.AckExplicitPolicy,
	AckWait:       30 * time.Second,
	MaxDeliver:    -1,
}

func TestAuthorizationGatewayPublishesMeterConsumes(t *testing.T) {
	url, seedFile := authServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	gatewayEnv := map[string]string{"NATS_USER": "gateway", "NATS_PASSWORD": "gateway-secret"}
	meterEnv := map[string]string{
		"NATS_USER":          "meter",
		"NATS_PASSWORD_FILE": writeFile(t, t.TempDir(), "password", "meter-secret\n"),
	}

	// The gateway: ensure the streams, publish events (asynchronously, as
	// gateway/internal/publish does).
	gjs, err := jetstream.New(mustConnect(t, url, gatewayEnv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(ctx, gjs, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("gateway: %v", err)
	}
	const events = 5
	for i := range events {
		if _, err := gjs.PublishAsync(usage.Subject, []byte(fmt.Sprintf(`{"n":%d}`, i)), jetstream.WithMsgID(fmt.Sprint("ev-", i))); err != nil {
			t.Fatalf("gateway publish: %v", err)
		}
	}
	select {
	case <-gjs.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("gateway: publish acks did not arrive")
	}

	// The nkey user has the gateway's permissions too.
	njs, err := jetstream.New(mustConnect(t, url, map[string]string{"NATS_NKEY_FILE": seedFile}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := njs.Publish(ctx, usage.Subject, []byte(`{"n":"nkey"}`)); err != nil {
		t.Fatalf("nkey user publish: %v", err)
	}

	// The meter: ensure the streams and its consumer, read the lag, fetch,
	// dead-letter one, ack the rest.
	mjs, err := jetstream.New(mustConnect(t, url, meterEnv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(ctx, mjs, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("meter: %v", err)
	}
	cons, err := mjs.CreateOrUpdateConsumer(ctx, usage.StreamName, meterConsumer)
	if err != nil {
		t.Fatalf("meter: ensure consumer: %v", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("meter: consumer info: %v", err)
	}
	if info.NumPending != events+1 {
		t.Fatalf("meter: %d pending, want %d", info.NumPending, events+1)
	}
	var got []jetstream.Msg
	for len(got) < events+1 && ctx.Err() == nil {
		mb, err := cons.FetchNoWait(events + 1)
		if err != nil {
			t.Fatalf("meter: fetch: %v", err)
		}
		for m := range mb.Messages() {
			got = append(got, m)
		}
		if err := mb.Error(); err != nil {
			t.Fatalf("meter: fetch: %v", err)
		}
	}
	if len(got) != events+1 {
		t.Fatalf("meter: fetched %d messages, want %d", len(got), events+1)
	}
	if err := got[0].InProgress(); err != nil {
		t.Fatalf("meter: in progress: %v", err)
	}
	if _, err := mjs.Publish(ctx, usage.DeadLetterSubject, got[0].Data()); err != nil {
		t.Fatalf("meter: dead letter: %v", err)
	}
	if err := got[0].Term(); err != nil {
		t.Fatalf("meter: term: %v", err)
	}
	for _, m := range got[1 : len(got)-1] {
		if err := m.Ack(); err != nil {
			t.Fatalf("meter: ack: %v", err)
		}
	}
	if err := got[len(got)-1].DoubleAck(ctx); err != nil {
		t.Fatalf("meter: double ack: %v", err)
	}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatalf("meter: consumer info: %v", err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("meter: %d unacked, %d pending after the acks", info.NumAckPending, info.NumPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAuthorizationWrongPasswordRefused(t *testing.T) {
	url, _ := authServer(t)
	_, err := connect(t, url, map[string]string{"NATS_USER": "gateway", "NATS_PASSWORD": "wrong"})
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a wrong password: err = %v, want %v", err, nats.ErrAuthorization)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Errorf("err = %q, want it to say authorization violation", err)
	}
	if _, err := connect(t, url, nil); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect without credentials: err = %v, want %v", err, nats.ErrAuthorization)
	}
}

func TestAuthorizationGatewayCannotConsume(t *testing.T) {
	url, _ := authServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// The meter sets up its consumer, and there is an event to steal.
	mjs, err := jetstream.New(mustConnect(t, url, map[string]string{"NATS_USER": "meter", "NATS_PASSWORD": "meter-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(ctx, mjs, usagejs.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cons, err := mjs.CreateOrUpdateConsumer(ctx, usage.StreamName, meterConsumer)
	if err != nil {
		t.Fatal(err)
	}

	asyncErrs := make(chan error, 16)
	nc := mustConnect(t, url, map[string]string{"NATS_USER": "gateway", "NATS_PASSWORD": "gateway-secret"},
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { asyncErrs <- err }))
	gjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gjs.Publish(ctx, usage.Subject, []byte(`{}`)); err != nil {
		t.Fatalf("gateway publish: %v", err)
	}
	wantViolation := func(what, subject string) {
		t.Helper()
		for {
			select {
			case err := <-asyncErrs:
				if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
					return
				}
				t.Logf("gateway: other async error: %v", err)
			case <-ctx.Done():
				t.Fatalf("gateway: %s: no permission violation for %q", what, subject)
			}
		}
	}

	// A core subscription to the events.
	if _, err := nc.SubscribeSync(usage.SubjectFilter); err != nil {
		t.Fatal(err)
	}
	wantViolation("subscribe", usage.SubjectFilter)

	// The meter's consumer: look it up, fetch from it directly.
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if _, err := gjs.Consumer(short, usage.StreamName, durable); err == nil {
		t.Fatal("gateway: consumer lookup succeeded, want it denied")
	}
	wantViolation("consumer info", "$JS.API.CONSUMER.INFO.USAGE."+durable)
	next := "$JS.API.CONSUMER.MSG.NEXT.USAGE." + durable
	if _, err := nc.Request(next, []byte(`{"batch":1,"no_wait":true}`), time.Second); err == nil {
		t.Fatal("gateway: fetch succeeded, want it denied")
	}
	wantViolation("fetch", next)
	// Its own consumer.
	short2, cancelShort2 := context.WithTimeout(ctx, time.Second)
	defer cancelShort2()
	if _, err := gjs.CreateOrUpdateConsumer(short2, usage.StreamName, jetstream.ConsumerConfig{Durable: "thief"}); err == nil {
		t.Fatal("gateway: created a consumer, want it denied")
	}
	wantViolation("create consumer", "$JS.API.CONSUMER.CREATE.USAGE.thief")

	// Nothing was taken: the event waits for the meter.
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 1 || info.NumAckPending != 0 {
		t.Fatalf("meter consumer: %d pending, %d unacked; want 1, 0", info.NumPending, info.NumAckPending)
	}
}

// tlsFiles are PEM files of a throwaway CA, a server certificate for
// 127.0.0.1 and a client certificate, all signed by the CA.
type tlsFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

func newTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	writePEM := func(name, typ string, der []byte) string {
		return writeFile(t, dir, name, string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})))
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(name, "EC PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "qyai test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := leaf(2, "nats", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := leaf(3, "gateway", x509.ExtKeyUsageClientAuth)
	return tlsFiles{
		CA:         writePEM("ca.pem", "CERTIFICATE", caDER),
		ServerCert: writePEM("server.pem", "CERTIFICATE", srvDER),
		ServerKey:  writeKey("server-key.pem", srvKey),
		ClientCert: writePEM("client.pem", "CERTIFICATE", cliDER),
		ClientKey:  writeKey("client-key.pem", cliKey),
	}
}

func TestTLSClientCertificate(t *testing.T) {
	f := newTLSFiles(t)
	conf := writeFile(t, t.TempDir(), "server.conf", fmt.Sprintf(`tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
}
`, f.ServerCert, f.ServerKey, f.CA))
	url := scripts.NATSProcessConfig(t, conf).URL

	nc := mustConnect(t, url, map[string]string{
		"NATS_TLS_CA_FILE": f.CA, "NATS_TLS_CERT_FILE": f.ClientCert, "NATS_TLS_KEY_FILE": f.ClientKey,
	})
	if !nc.TLSRequired() {
		t.Error("connected, but the server did not require TLS")
	}
	state, err := nc.TLSConnectionState()
	if err != nil {
		t.Fatalf("connection state: %v", err)
	}
	if !state.HandshakeComplete || len(state.PeerCertificates) == 0 || state.PeerCertificates[0].Subject.CommonName != "nats" {
		t.Fatalf("TLS state: handshake %v, peer %v", state.HandshakeComplete, state.PeerCertificates)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagejs.EnsureStream(t.Context(), js, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("jetstream over TLS: %v", err)
	}

	refused := []struct {
		name string
		env  map[string]string
		want []string // the error mentions one of these
	}{
		// The server's certificate is not signed by a system root.
		{name: "no TLS options", env: nil, want: []string{"certificate signed by unknown authority"}},
		// In TLS 1.3 the client finishes its side of the handshake before the
		// server checks for a certificate: the server's alert may arrive, or
		// only the closed connection.
		{name: "CA but no client certificate", env: map[string]string{"NATS_TLS_CA_FILE": f.CA},
			want: []string{"certificate required", "closed by remote", "broken pipe", "EOF", "connection reset"}},
		// The client certificate alone: the server's is still unknown.
		{name: "client certificate but no CA", env: map[string]string{
			"NATS_TLS_CERT_FILE": f.ClientCert, "NATS_TLS_KEY_FILE": f.ClientKey,
		}, want: []string{"certificate signed by unknown authority"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := connect(t, url, tc.env)
			if err == nil {
				t.Fatal("connected, want the TLS handshake refused")
			}
			if !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Errorf("err = %q, want it to mention one of %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
}
