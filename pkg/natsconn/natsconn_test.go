package natsconn_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qyai/qyai/pkg/envconfig"
	"github.com/qyai/qyai/pkg/natsconn"
)

// lookup is a Lookup over a map (a blank value reads as unset, as always).
func lookup(m map[string]string) envconfig.Lookup { return envconfig.Map(m) }

// read returns the Config env describes and every problem, Read's and
// Validate's together, as the services do.
func read(env map[string]string) (natsconn.Config, error) {
	r := envconfig.New(lookup(env))
	c := natsconn.Read(r)
	if err := r.Err(); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestReadValidate(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pwFile := file("password", "s3cret\n")
	tokenFile := file("token", "tok\n")
	seed := file("user.nk", "SUAseed")
	creds := file("user.creds", "creds")
	pem := file("x.pem", "pem")
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name    string
		env     map[string]string
		want    natsconn.Config
		method  string
		wantErr []string
	}{
		{name: "none", env: nil, method: "none"},
		{
			name: "user and password", env: map[string]string{"NATS_USER": "gateway", "NATS_PASSWORD": " pw "},
			want: natsconn.Config{User: "gateway", Password: "pw"}, method: "user",
		},
		{
			name: "password from file", env: map[string]string{"NATS_USER": "gateway", "NATS_PASSWORD_FILE": pwFile},
			want: natsconn.Config{User: "gateway", Password: "s3cret"}, method: "user",
		},
		{
			name: "token from file", env: map[string]string{"NATS_TOKEN_FILE": tokenFile},
			want: natsconn.Config{Token: "tok"}, method: "token",
		},
		{name: "nkey", env: map[string]string{"NATS_NKEY_FILE": seed}, want: natsconn.Config{NKeyFile: seed}, method: "nkey"},
		{name: "creds", env: map[string]string{"NATS_CREDS_FILE": creds}, want: natsconn.Config{CredsFile: creds}, method: "creds"},
		{
			name: "tls with client cert",
			env:  map[string]string{"NATS_TLS_CA_FILE": pem, "NATS_TLS_CERT_FILE": pem, "NATS_TLS_KEY_FILE": pem},
			want: natsconn.Config{TLS: natsconn.TLS{CAFile: pem, CertFile: pem, KeyFile: pem}}, method: "none",
		},
		{
			name: "two methods", env: map[string]string{"NATS_TOKEN": "t", "NATS_CREDS_FILE": creds},
			wantErr: []string{"set one NATS credential method, not 2", "NATS_TOKEN", "NATS_CREDS_FILE"},
		},
		{
			name: "three methods", env: map[string]string{"NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_TOKEN": "t", "NATS_NKEY_FILE": seed},
			wantErr: []string{"not 3"},
		},
		{name: "user without password", env: map[string]string{"NATS_USER": "u"}, wantErr: []string{"NATS_USER is set without NATS_PASSWORD"}},
		{name: "password without user", env: map[string]string{"NATS_PASSWORD": "p"}, wantErr: []string{"NATS_PASSWORD is set without NATS_USER"}},
		{
			name: "password and its file", env: map[string]string{"NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_PASSWORD_FILE": pwFile},
			wantErr: []string{"set NATS_PASSWORD or NATS_PASSWORD_FILE, not both"},
		},
		{name: "cert without key", env: map[string]string{"NATS_TLS_CERT_FILE": pem}, wantErr: []string{"NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together"}},
		{name: "key without cert", env: map[string]string{"NATS_TLS_KEY_FILE": pem}, wantErr: []string{"NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together"}},
		{
			name: "missing files", env: map[string]string{"NATS_NKEY_FILE": missing, "NATS_TLS_CA_FILE": missing},
			wantErr: []string{"NATS_NKEY_FILE: open " + missing, "NATS_TLS_CA_FILE: open " + missing},
		},
		{name: "missing token file", env: map[string]string{"NATS_TOKEN_FILE": missing}, wantErr: []string{"read NATS_TOKEN_FILE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := read(tc.env)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("err = nil, want %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("err = %q, want it to contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if c != tc.want {
				t.Errorf("config = %+v, want %+v", c, tc.want)
			}
			if got := c.Method(); got != tc.method {
				t.Errorf("Method() = %q, want %q", got, tc.method)
			}
		})
	}
}

func TestValidateURLs(t *testing.T) {
	tests := []struct {
		name string
		list string
		want []string // substrings of the error; none: valid
	}{
		{name: "one", list: "nats://127.0.0.1:4222"},
		{name: "cluster", list: "nats://127.0.0.1:4222,nats://127.0.0.1:4223, nats://127.0.0.1:4224"},
		{name: "credentials and tls", list: "tls://u:p@nats-0.nats:4222,tls://u:p@nats-1.nats:4222"},
		{name: "websocket", list: "wss://nats.example.com:443"},
		{name: "empty", list: " ", want: []string{"NATS_URL is empty"}},
		{name: "no scheme", list: "127.0.0.1:4222", want: []string{`NATS_URL "127.0.0.1:4222": want a URL`}},
		{name: "no port", list: "nats://127.0.0.1", want: []string{"want host:port"}},
		{name: "http", list: "http://127.0.0.1:4222", want: []string{"scheme nats, tls, ws or wss"}},
		{name: "stray comma", list: "nats://a:4222,", want: []string{`entry 2 "" is empty`}},
		{
			name: "every bad entry",
			list: "nats://a:4222,nats://b,redis://c:6379",
			want: []string{`entry 2 "nats://b": want host:port`, `entry 3 "redis://c:6379"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := natsconn.ValidateURLs(tt.list)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("ValidateURLs(%q) = %v, want nil", tt.list, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateURLs(%q) = nil, want %q", tt.list, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ValidateURLs(%q) = %q, want it to contain %q", tt.list, err, w)
				}
			}
		})
	}
}

func TestRedactURLs(t *testing.T) {
	got := natsconn.RedactURLs("nats://gw:s3cret@10.0.0.1:4222, nats://t0ken@10.0.0.2:4222,nats://10.0.0.3:4222")
	want := "nats://gw:xxxxx@10.0.0.1:4222,nats://xxxxx@10.0.0.2:4222,nats://10.0.0.3:4222"
	if got != want {
		t.Fatalf("RedactURLs = %q, want %q", got, want)
	}
	if strings.Contains(got, "s3cret") || strings.Contains(got, "t0ken") {
		t.Fatalf("RedactURLs leaked a secret: %q", got)
	}
}
