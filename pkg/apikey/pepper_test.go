package apikey_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/envconfig"
)

func TestReadPepper(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pepper")
	if err := os.WriteFile(file, []byte("from-a-mounted-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr string
	}{
		{name: "value, trimmed", env: map[string]string{"KEY_PEPPER": "  prod-pepper\n"}, want: "prod-pepper"},
		{name: "file, newline trimmed", env: map[string]string{"KEY_PEPPER_FILE": file}, want: "from-a-mounted-secret"},
		{name: "set wins over dev mode", env: map[string]string{"KEY_PEPPER": "prod-pepper", "QYAI_DEV": "1"}, want: "prod-pepper"},
		{name: "dev mode", env: map[string]string{"QYAI_DEV": "true"}, want: apikey.DevPepper},
		{name: "missing", env: map[string]string{}, wantErr: "KEY_PEPPER is required"},
		{name: "missing, dev off", env: map[string]string{"QYAI_DEV": "0"}, wantErr: "KEY_PEPPER is required"},
		{name: "blank", env: map[string]string{"KEY_PEPPER": " \n"}, wantErr: "KEY_PEPPER is required"},
		{name: "both", env: map[string]string{"KEY_PEPPER": "a-secret-value", "KEY_PEPPER_FILE": file}, wantErr: "not both"},
		{name: "unreadable file", env: map[string]string{"KEY_PEPPER_FILE": file + ".missing"}, wantErr: "KEY_PEPPER_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(envconfig.Map(tt.env))
			got := apikey.ReadPepper(r)
			err := r.Err()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ReadPepper error %v, want one about %q", err, tt.wantErr)
				}
				if strings.Count(err.Error(), "\n") != 0 {
					t.Errorf("one problem expected, got %q", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadPepper = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
