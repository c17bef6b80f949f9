// Package keys manages QYAI API keys for the admin API: it validates
// requests, issues keys (shown once, stored only as an HMAC hash), lists,
// rotates and revokes them, and authenticates a presented key for the public
// billing endpoint. Storage is behind Store; keys/redis implements it with the
// layout of pkg/apikey, which the gateway reads.
package keys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qyai/qyai/pkg/apikey"
	"github.com/qyai/qyai/pkg/tier"
)

// Errors of the key service. Handlers map them to HTTP statuses.
var (
	// ErrNotFound means no key has that id.
	ErrNotFound = errors.New("key not found")
	// ErrRevoked means the key was revoked and cannot change any more.
	ErrRevoked = errors.New("key is revoked")
	// ErrConflict means the record kept changing under a concurrent writer.
	ErrConflict = errors.New("key changed concurrently")
	// ErrUnauthenticated means a presented key is malformed, unknown or not active.
	ErrUnauthenticated = errors.New("invalid api key")
)

// ValidationError is a rejected request field.
type ValidationError struct {
	Param   string // the JSON field at fault
	Message string
}

func (e *ValidationError) Error() string { return e.Param + ": " + e.Message }

// Limits on what a key may carry.
const (
	maxNameLen   = 128
	maxModels    = 32
	maxModelLen  = 64
	maxRPM       = 1_000_000
	maxMonthly   = 1_000_000_000
	idRandomSize = 8 // bytes: "key_" + 16 hex characters
)

var (
	idPattern    = regexp.MustCompile(`^key_[0-9a-f]{16}$`)
	modelPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]*$`)
)

// Store keeps key records. Implementations publish every change so that
// gateways drop their cached copy.
type Store interface {
	// Create stores a new record and its auth entry.
	Create(ctx context.Context, rec apikey.Record) error
	// Get returns the record with that id, or ErrNotFound.
	Get(ctx context.Context, id string) (apikey.Record, error)
	// List returns every record, revoked ones included.
	List(ctx context.Context) ([]apikey.Record, error)
	// Update applies change to the current record atomically with respect to
	// other updates, retrying on concurrent writes, and keeps the auth entry
	// in step: the entry of the old hash is removed when the hash changes or
	// the key is revoked. It returns ErrNotFound, ErrConflict or change's error.
	Update(ctx context.Context, id string, change func(*apikey.Record) error) (apikey.Record, error)
	// ByHash returns the record an auth entry points to, or ErrNotFound.
	ByHash(ctx context.Context, hash string) (apikey.Record, error)
}

// CreateRequest is what an operator asks for. Nil limits take the tier's.
type CreateRequest struct {
	Name         string   `json:"name"`
	Tier         string   `json:"tier"`
	RPM          *int64   `json:"rpm"`
	MonthlyLimit *int64   `json:"monthly_limit"`
	Models       []string `json:"models"`
}

// Issued is a record together with its clear-text key, which exists only in
// the answer to create and rotate.
type Issued struct {
	Record apikey.Record
	Key    string
}

// Service is the key lifecycle.
type Service struct {
	store  Store
	pepper []byte
	tiers  tier.Table
	now    func() time.Time
}

// NewService returns a Service. pepper is the HMAC secret shared with the
// gateway; now is the clock.
func NewService(store Store, pepper []byte, tiers tier.Table, now func() time.Time) *Service {
	return &Service{store: store, pepper: pepper, tiers: tiers, now: now}
}

// Create validates req and issues a new key.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Issued, error) {
	rec, err := s.validate(req)
	if err != nil {
		return Issued{}, err
	}
	id, err := newID()
	if err != nil {
		return Issued{}, err
	}
	key, err := apikey.Generate()
	if err != nil {
		return Issued{}, fmt.Errorf("generate key: %w", err)
	}
	now := s.now().UTC().Truncate(time.Second)
	rec.ID = id
	rec.Hash = apikey.Hash(s.pepper, key)
	rec.KeyPrefix = apikey.DisplayPrefix(key)
	rec.Status = apikey.StatusActive
	rec.CreatedAt, rec.UpdatedAt = now, now
	if err := s.store.Create(ctx, rec); err != nil {
		return Issued{}, fmt.Errorf("store key %s: %w", id, err)
	}
	return Issued{Record: rec, Key: key}, nil
}

// Get returns one key's record.
func (s *Service) Get(ctx context.Context, id string) (apikey.Record, error) {
	if !idPattern.MatchString(id) {
		return apikey.Record{}, ErrNotFound
	}
	return s.store.Get(ctx, id)
}

// List returns every key, oldest first.
func (s *Service) List(ctx context.Context) ([]apikey.Record, error) {
	recs, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(recs, func(a, b apikey.Record) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return recs, nil
}

// Rotate replaces a key's secret: the old key stops working, the new one is
// returned. Id, name, limits and billing history stay.
func (s *Service) Rotate(ctx context.Context, id string) (Issued, error) {
	if !idPattern.MatchString(id) {
		return Issued{}, ErrNotFound
	}
	var key string
	rec, err := s.store.Update(ctx, id, func(r *apikey.Record) error {
		if r.Status == apikey.StatusRevoked {
			return ErrRevoked
		}
		k, err := apikey.Generate()
		if err != nil {
			return fmt.Errorf("generate key: %w", err)
		}
		// Update may call this again after a concurrent write: the key
		// returned is the one of the attempt that committed.
		key = k
		r.Hash = apikey.Hash(s.pepper, k)
		r.KeyPrefix = apikey.DisplayPrefix(k)
		r.UpdatedAt = s.now().UTC().Truncate(time.Second)
		return nil
	})
	if err != nil {
		return Issued{}, err
	}
	return Issued{Record: rec, Key: key}, nil
}

// Revoke makes a key stop working for good. The record stays, marked
// revoked, so that billing history keeps its name. Revoking twice is fine.
func (s *Service) Revoke(ctx context.Context, id string) error {
	if !idPattern.MatchString(id) {
		return ErrNotFound
	}
	_, err := s.store.Update(ctx, id, func(r *apikey.Record) error {
		if r.Status != apikey.StatusRevoked {
			r.Status = apikey.StatusRevoked
			r.UpdatedAt = s.now().UTC().Truncate(time.Second)
		}
		return nil
	})
	return err
}

// Authenticate returns the record of an active key presented by a client.
func (s *Service) Authenticate(ctx context.Context, presented string) (apikey.Record, error) {
	if apikey.CheckFormat(presented) != nil {
		return apikey.Record{}, ErrUnauthenticated
	}
	rec, err := s.store.ByHash(ctx, apikey.Hash(s.pepper, presented))
	switch {
	case errors.Is(err, ErrNotFound):
		return apikey.Record{}, ErrUnauthenticated
	case err != nil:
		return apikey.Record{}, err
	case !rec.Active():
		return apikey.Record{}, ErrUnauthenticated
	}
	return rec, nil
}

// validate checks req field by field, in body order, and returns the record
// it describes (without id, hash or dates).
func (s *Service) validate(req CreateRequest) (apikey.Record, error) {
	invalid := func(param, format string, a ...any) (apikey.Record, error) {
		return apikey.Record{}, &ValidationError{Param: param, Message: fmt.Sprintf(format, a...)}
	}
	name := strings.TrimSpace(req.Name)
	switch {
	case name == "":
		return invalid("name", "name is required")
	case utf8.RuneCountInString(name) > maxNameLen:
		return invalid("name", "name is longer than %d characters", maxNameLen)
	case strings.ContainsFunc(name, unicode.IsControl):
		return invalid("name", "name contains control characters")
	}
	if req.Tier == "" {
		return invalid("tier", "tier is required (one of %s)", strings.Join(s.tiers.Names(), ", "))
	}
	t, err := s.tiers.Lookup(req.Tier)
	if err != nil {
		return invalid("tier", "tier %q is not one of %s", req.Tier, strings.Join(s.tiers.Names(), ", "))
	}
	rec := apikey.Record{Name: name, Tier: t.Name, RPM: t.RPM, MonthlyLimit: t.MonthlyLimit, Models: []string{}}
	if req.RPM != nil {
		if *req.RPM < 1 || *req.RPM > maxRPM {
			return invalid("rpm", "rpm must be between 1 and %d", maxRPM)
		}
		rec.RPM = *req.RPM
	}
	if req.MonthlyLimit != nil {
		if *req.MonthlyLimit < 1 || *req.MonthlyLimit > maxMonthly {
			return invalid("monthly_limit", "monthly_limit must be between 1 and %d", maxMonthly)
		}
		rec.MonthlyLimit = *req.MonthlyLimit
	}
	if len(req.Models) > maxModels {
		return invalid("models", "at most %d models", maxModels)
	}
	for _, m := range req.Models {
		switch {
		case len(m) > maxModelLen || !modelPattern.MatchString(m):
			return invalid("models", "model %q is not a model id", m)
		case slices.Contains(rec.Models, m):
			return invalid("models", "model %q is listed twice", m)
		}
		rec.Models = append(rec.Models, m)
	}
	return rec, nil
}

func newID() (string, error) {
	b := make([]byte, idRandomSize)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate key id: %w", err)
	}
	return "key_" + hex.EncodeToString(b), nil
}
