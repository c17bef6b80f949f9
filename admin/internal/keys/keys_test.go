package keys

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/tier"
)

func ptr[T any](v T) *T { return &v }

func TestValidate(t *testing.T) {
	s := NewService(nil, []byte("pepper"), tier.Default(), time.Now)
	tests := []struct {
		name      string
		req       CreateRequest
		wantParam string // "" means valid
		wantRPM   int64
		wantLimit int64
	}{
		{name: "basic defaults", req: CreateRequest{Name: "a", Tier: "basic"}, wantRPM: 10, wantLimit: 1000},
		{name: "pro defaults", req: CreateRequest{Name: "a", Tier: "pro"}, wantRPM: 30, wantLimit: 3000},
		{name: "enterprise defaults", req: CreateRequest{Name: "a", Tier: "enterprise"}, wantRPM: 100, wantLimit: 10000},
		{name: "custom limits", req: CreateRequest{Name: "a", Tier: "basic", RPM: ptr(int64(5)), MonthlyLimit: ptr(int64(50)), Models: []string{"deepseek-v4-pro"}}, wantRPM: 5, wantLimit: 50},
		{name: "name missing", req: CreateRequest{Tier: "basic"}, wantParam: "name"},
		{name: "name blank", req: CreateRequest{Name: "  ", Tier: "basic"}, wantParam: "name"},
		{name: "name too long", req: CreateRequest{Name: strings.Repeat("x", 129), Tier: "basic"}, wantParam: "name"},
		{name: "name control char", req: CreateRequest{Name: "a\nb", Tier: "basic"}, wantParam: "name"},
		{name: "tier missing", req: CreateRequest{Name: "a"}, wantParam: "tier"},
		{name: "tier unknown", req: CreateRequest{Name: "a", Tier: "gold"}, wantParam: "tier"},
		{name: "rpm zero", req: CreateRequest{Name: "a", Tier: "pro", RPM: ptr(int64(0))}, wantParam: "rpm"},
		{name: "rpm negative", req: CreateRequest{Name: "a", Tier: "pro", RPM: ptr(int64(-1))}, wantParam: "rpm"},
		{name: "rpm huge", req: CreateRequest{Name: "a", Tier: "pro", RPM: ptr(int64(1) << 40)}, wantParam: "rpm"},
		{name: "monthly zero", req: CreateRequest{Name: "a", Tier: "pro", MonthlyLimit: ptr(int64(0))}, wantParam: "monthly_limit"},
		{name: "model empty", req: CreateRequest{Name: "a", Tier: "pro", Models: []string{""}}, wantParam: "models"},
		{name: "model odd chars", req: CreateRequest{Name: "a", Tier: "pro", Models: []string{"gpt 4o"}}, wantParam: "models"},
		{name: "model twice", req: CreateRequest{Name: "a", Tier: "pro", Models: []string{"gpt-4o", "gpt-4o"}}, wantParam: "models"},
		{name: "too many models", req: CreateRequest{Name: "a", Tier: "pro", Models: make([]string, 33)}, wantParam: "models"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := s.validate(tt.req)
			if tt.wantParam == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if rec.RPM != tt.wantRPM || rec.MonthlyLimit != tt.wantLimit || rec.Models == nil {
					t.Errorf("record %+v, want rpm %d limit %d and non-nil models", rec, tt.wantRPM, tt.wantLimit)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Param != tt.wantParam {
				t.Fatalf("validate: %v, want a ValidationError on %q", err, tt.wantParam)
			}
		})
	}
}

func TestMalformedIDsAreNotFound(t *testing.T) {
	// No store: a malformed id must be refused before any Redis call, so
	// that ids with braces or colons never reach a Redis key name.
	s := NewService(nil, []byte("pepper"), tier.Default(), time.Now)
	for _, id := range []string{"", "key_", "key_XYZ", "key_0123456789abcdef}", "../x", "key_0123456789abcdef0"} {
		t.Run(id, func(t *testing.T) {
			if _, err := s.Get(t.Context(), id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
			}
			if _, err := s.Rotate(t.Context(), "op", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Rotate(%q) = %v, want ErrNotFound", id, err)
			}
			if err := s.Revoke(t.Context(), "op", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Revoke(%q) = %v, want ErrNotFound", id, err)
			}
			if _, err := s.Disable(t.Context(), "op", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Disable(%q) = %v, want ErrNotFound", id, err)
			}
			if _, err := s.Enable(t.Context(), "op", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Enable(%q) = %v, want ErrNotFound", id, err)
			}
			name := "x"
			if _, err := s.Update(t.Context(), "op", id, UpdateRequest{Name: &name}); !errors.Is(err, ErrNotFound) {
				t.Errorf("Update(%q) = %v, want ErrNotFound", id, err)
			}
		})
	}
}

func TestValidateUpdate(t *testing.T) {
	s := NewService(nil, []byte("pepper"), tier.Default(), time.Now)
	str := func(v string) *string { return &v }
	tests := []struct {
		name      string
		req       UpdateRequest
		wantParam string // "-" means valid
	}{
		{name: "nothing", req: UpdateRequest{}, wantParam: ""},
		{name: "name", req: UpdateRequest{Name: str("new name")}, wantParam: "-"},
		{name: "blank name", req: UpdateRequest{Name: str(" ")}, wantParam: "name"},
		{name: "tier", req: UpdateRequest{Tier: str("pro")}, wantParam: "-"},
		{name: "unknown tier", req: UpdateRequest{Tier: str("gold")}, wantParam: "tier"},
		{name: "rpm zero", req: UpdateRequest{RPM: ptr(int64(0))}, wantParam: "rpm"},
		{name: "monthly huge", req: UpdateRequest{MonthlyLimit: ptr(int64(1) << 40)}, wantParam: "monthly_limit"},
		{name: "models emptied", req: UpdateRequest{Models: &[]string{}}, wantParam: "-"},
		{name: "model twice", req: UpdateRequest{Models: &[]string{"a", "a"}}, wantParam: "models"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.validateUpdate(tt.req)
			if tt.wantParam == "-" {
				if err != nil {
					t.Fatalf("validateUpdate: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Param != tt.wantParam {
				t.Fatalf("validateUpdate: %v, want a ValidationError on %q", err, tt.wantParam)
			}
		})
	}
}

func TestNoActorNoChange(t *testing.T) {
	s := NewService(nil, []byte("pepper"), tier.Default(), time.Now)
	if _, err := s.Create(t.Context(), "", CreateRequest{Name: "a", Tier: "basic"}); !errors.Is(err, ErrNoActor) {
		t.Errorf("Create without actor = %v", err)
	}
	if err := s.Revoke(t.Context(), "", "key_0123456789abcdef"); !errors.Is(err, ErrNoActor) {
		t.Errorf("Revoke without actor = %v", err)
	}
}

func TestAuthenticateRejectsMalformedWithoutStore(t *testing.T) {
	s := NewService(nil, []byte("pepper"), tier.Default(), time.Now)
	for _, k := range []string{"", "sk-short", "Bearer sk-x", "pk-" + strings.Repeat("a", 48)} {
		if _, err := s.Authenticate(t.Context(), k); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) = %v", k, err)
		}
	}
}
