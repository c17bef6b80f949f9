// Package keys manages QYAI API keys for the admin API: it validates
// requests, issues keys (shown once, stored only as an HMAC hash), lists,
// updates, disables, enables, rotates and revokes them, authenticates a
// presented key for the public billing endpoints, and lets a key holder
// regenerate their own key with it. Every change is made on
// behalf of an actor (the admin token's name) and the store records it in
// the audit trail (package audit) together with the change. Storage is
// behind Store; keys/redis implements it with the layout of pkg/apikey,
// which the gateway reads.
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

	"github.com/qyai/qyai/admin/internal/audit"
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
	// ErrNoActor means a change was asked for without saying who asks.
	ErrNoActor = errors.New("no actor for an audited change")
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
	maxTPM       = 1_000_000_000_000
	maxMonthly   = 1_000_000_000
	idRandomSize = 8 // bytes: "key_" + 16 hex characters
)

var (
	idPattern    = regexp.MustCompile(`^key_[0-9a-f]{16}$`)
	modelPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]*$`)
)

// Store keeps key records. Implementations publish every change so that
// gateways drop their cached copy, and record every change in the audit
// trail in the same write as the change.
type Store interface {
	// Create stores a new record, its auth entry and its audit entry
	// (action create, by actor, at rec.CreatedAt).
	Create(ctx context.Context, rec apikey.Record, actor string) error
	// Get returns the record with that id, or ErrNotFound.
	Get(ctx context.Context, id string) (apikey.Record, error)
	// List returns every record, revoked ones included.
	List(ctx context.Context) ([]apikey.Record, error)
	// Update applies ch to the current record atomically with respect to
	// other updates, retrying on concurrent writes, writes its audit entry
	// with it, and keeps the auth entry in step (a revoked key's entry and
	// the entry of a replaced hash stop authenticating). When ch.Apply
	// changes nothing, nothing is written or audited, but the auth entry is
	// asserted again and the change published (so that retrying a call whose
	// answer was lost repairs what it left half-done). It returns
	// ErrNotFound, ErrConflict or Apply's error.
	Update(ctx context.Context, id string, ch Change) (apikey.Record, error)
	// ByHash returns the record an auth entry points to, or ErrNotFound.
	ByHash(ctx context.Context, hash string) (apikey.Record, error)
}

// Change is one audited modification of a key.
type Change struct {
	Action string // audit.Action*
	Actor  string // who asks: the admin token's name
	At     time.Time
	// Apply computes the next record from a copy of the current one; the
	// store may call it again after a concurrent write. The store sets
	// UpdatedAt (to At) when Apply changed anything.
	Apply func(*apikey.Record) error
}

// CreateRequest is what an operator asks for. Nil limits take the tier's.
type CreateRequest struct {
	Name         string `json:"name"`
	Tier         string `json:"tier"`
	RPM          *int64 `json:"rpm"`
	MonthlyLimit *int64 `json:"monthly_limit"`
	// TPM is tokens per minute (prompt + completion); 0 means no limit.
	TPM    *int64   `json:"tpm"`
	Models []string `json:"models"`
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

// UpdateRequest changes some of a key's settings; nil fields stay. A tier
// change resets rpm and monthly_limit to the new tier's values unless they
// are given too. Models replaces the list (empty: every model).
type UpdateRequest struct {
	Name         *string   `json:"name"`
	Tier         *string   `json:"tier"`
	RPM          *int64    `json:"rpm"`
	MonthlyLimit *int64    `json:"monthly_limit"`
	TPM          *int64    `json:"tpm"`
	Models       *[]string `json:"models"`
}

// Create validates req and issues a new key on behalf of actor.
func (s *Service) Create(ctx context.Context, actor string, req CreateRequest) (Issued, error) {
	if actor == "" {
		return Issued{}, ErrNoActor
	}
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
	if err := s.store.Create(ctx, rec, actor); err != nil {
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
// returned. Id, name, limits, status and billing history stay.
func (s *Service) Rotate(ctx context.Context, actor, id string) (Issued, error) {
	return s.replaceSecret(ctx, actor, id, audit.ActionRotate, func(r *apikey.Record) error {
		if r.Status == apikey.StatusRevoked {
			return ErrRevoked
		}
		return nil
	})
}

// replaceSecret gives key id a new secret in one atomic change, once check
// accepts the current record, and returns the new key (Rotate, Regenerate).
func (s *Service) replaceSecret(ctx context.Context, actor, id, action string, check func(*apikey.Record) error) (Issued, error) {
	var key string
	rec, err := s.change(ctx, actor, id, action, func(r *apikey.Record) error {
		if err := check(r); err != nil {
			return err
		}
		k, err := apikey.Generate()
		if err != nil {
			return fmt.Errorf("generate key: %w", err)
		}
		// The store may call this again after a concurrent write: the key
		// returned is the one of the attempt that committed.
		key = k
		r.Hash = apikey.Hash(s.pepper, k)
		r.KeyPrefix = apikey.DisplayPrefix(k)
		return nil
	})
	if err != nil {
		return Issued{}, err
	}
	return Issued{Record: rec, Key: key}, nil
}

// HolderActor is the audit actor of a change the holder of key id made
// with the key itself. Admin token names cannot contain a colon, so it
// never collides with an operator's name.
func HolderActor(id string) string { return "key:" + id }

// Regenerate is Rotate asked for by the key holder, who proves it by
// presenting the current key: the presented key stops working, the new one
// is returned. Id, name, limits and billing history stay, as with Rotate.
// The audit entry has action regenerate and actor HolderActor(id).
//
// The presented key is checked again inside the store's atomic update: if
// an operator rotated, disabled or revoked the key between the lookup and
// the write, the holder's old key no longer proves anything and the call
// fails with ErrUnauthenticated instead of issuing a key.
func (s *Service) Regenerate(ctx context.Context, presented string) (Issued, error) {
	cur, err := s.Authenticate(ctx, presented)
	if err != nil {
		return Issued{}, err
	}
	hash := apikey.Hash(s.pepper, presented)
	return s.replaceSecret(ctx, HolderActor(cur.ID), cur.ID, audit.ActionRegenerate, func(r *apikey.Record) error {
		if r.Hash != hash || !r.Active() {
			return ErrUnauthenticated
		}
		return nil
	})
}

// Revoke makes a key stop working for good. The record stays, marked
// revoked, so that billing history keeps its name. Revoking twice is fine.
func (s *Service) Revoke(ctx context.Context, actor, id string) error {
	_, err := s.change(ctx, actor, id, audit.ActionRevoke, func(r *apikey.Record) error {
		r.Status = apikey.StatusRevoked
		return nil
	})
	return err
}

// Disable makes a key stop working until it is enabled again. Disabling a
// disabled key changes nothing; a revoked key cannot be disabled.
func (s *Service) Disable(ctx context.Context, actor, id string) (apikey.Record, error) {
	return s.change(ctx, actor, id, audit.ActionDisable, func(r *apikey.Record) error {
		if r.Status == apikey.StatusRevoked {
			return ErrRevoked
		}
		r.Status = apikey.StatusDisabled
		return nil
	})
}

// Enable makes a disabled key work again. Enabling an active key changes
// nothing; a revoked key stays revoked.
func (s *Service) Enable(ctx context.Context, actor, id string) (apikey.Record, error) {
	return s.change(ctx, actor, id, audit.ActionEnable, func(r *apikey.Record) error {
		if r.Status == apikey.StatusRevoked {
			return ErrRevoked
		}
		r.Status = apikey.StatusActive
		return nil
	})
}

// Update changes a key's name, tier, limits or models. A tier change resets
// rpm and monthly_limit to the new tier's values unless req gives them.
func (s *Service) Update(ctx context.Context, actor, id string, req UpdateRequest) (apikey.Record, error) {
	if err := s.validateUpdate(req); err != nil {
		return apikey.Record{}, err
	}
	return s.change(ctx, actor, id, audit.ActionUpdate, func(r *apikey.Record) error {
		if r.Status == apikey.StatusRevoked {
			return ErrRevoked
		}
		if req.Name != nil {
			r.Name = strings.TrimSpace(*req.Name)
		}
		if req.Tier != nil {
			t, _ := s.tiers.Lookup(*req.Tier) // validated
			if t.Name != r.Tier {
				r.Tier, r.RPM, r.MonthlyLimit, r.TPM = t.Name, t.RPM, t.MonthlyLimit, t.TPM
			}
		}
		if req.RPM != nil {
			r.RPM = *req.RPM
		}
		if req.MonthlyLimit != nil {
			r.MonthlyLimit = *req.MonthlyLimit
		}
		if req.TPM != nil {
			r.TPM = *req.TPM
		}
		if req.Models != nil {
			r.Models = append([]string{}, (*req.Models)...)
		}
		return nil
	})
}

// change runs one audited update of key id.
func (s *Service) change(ctx context.Context, actor, id, action string, apply func(*apikey.Record) error) (apikey.Record, error) {
	if !idPattern.MatchString(id) {
		return apikey.Record{}, ErrNotFound
	}
	if actor == "" {
		return apikey.Record{}, ErrNoActor
	}
	return s.store.Update(ctx, id, Change{
		Action: action, Actor: actor, At: s.now().UTC().Truncate(time.Second), Apply: apply,
	})
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
	if err := validName(req.Name); err != nil {
		return apikey.Record{}, err
	}
	if req.Tier == "" {
		return apikey.Record{}, invalid("tier", "tier is required (one of %s)", strings.Join(s.tiers.Names(), ", "))
	}
	t, err := s.tier(req.Tier)
	if err != nil {
		return apikey.Record{}, err
	}
	rec := apikey.Record{Name: strings.TrimSpace(req.Name), Tier: t.Name, RPM: t.RPM, MonthlyLimit: t.MonthlyLimit, TPM: t.TPM, Models: []string{}}
	if err := validLimits(req.RPM, req.MonthlyLimit, req.TPM); err != nil {
		return apikey.Record{}, err
	}
	if req.TPM != nil {
		rec.TPM = *req.TPM
	}
	if req.RPM != nil {
		rec.RPM = *req.RPM
	}
	if req.MonthlyLimit != nil {
		rec.MonthlyLimit = *req.MonthlyLimit
	}
	if err := validModels(req.Models); err != nil {
		return apikey.Record{}, err
	}
	rec.Models = append(rec.Models, req.Models...)
	return rec, nil
}

// validateUpdate checks the fields req sets, in body order.
func (s *Service) validateUpdate(req UpdateRequest) error {
	if req == (UpdateRequest{}) {
		return invalid("", "nothing to update: send at least one of name, tier, rpm, monthly_limit, tpm, models")
	}
	if req.Name != nil {
		if err := validName(*req.Name); err != nil {
			return err
		}
	}
	if req.Tier != nil {
		if _, err := s.tier(*req.Tier); err != nil {
			return err
		}
	}
	if err := validLimits(req.RPM, req.MonthlyLimit, req.TPM); err != nil {
		return err
	}
	if req.Models != nil {
		return validModels(*req.Models)
	}
	return nil
}

func invalid(param, format string, a ...any) error {
	return &ValidationError{Param: param, Message: fmt.Sprintf(format, a...)}
}

func (s *Service) tier(name string) (tier.Tier, error) {
	t, err := s.tiers.Lookup(name)
	if err != nil {
		return tier.Tier{}, invalid("tier", "tier %q is not one of %s", name, strings.Join(s.tiers.Names(), ", "))
	}
	return t, nil
}

func validName(raw string) error {
	name := strings.TrimSpace(raw)
	switch {
	case name == "":
		return invalid("name", "name is required")
	case utf8.RuneCountInString(name) > maxNameLen:
		return invalid("name", "name is longer than %d characters", maxNameLen)
	case strings.ContainsFunc(name, unicode.IsControl):
		return invalid("name", "name contains control characters")
	}
	return nil
}

func validLimits(rpm, monthly, tpm *int64) error {
	if tpm != nil && (*tpm < 0 || *tpm > maxTPM) {
		return invalid("tpm", "tpm must be between 0 (no token limit) and %d", maxTPM)
	}
	if rpm != nil && (*rpm < 1 || *rpm > maxRPM) {
		return invalid("rpm", "rpm must be between 1 and %d", maxRPM)
	}
	if monthly != nil && (*monthly < 1 || *monthly > maxMonthly) {
		return invalid("monthly_limit", "monthly_limit must be between 1 and %d", maxMonthly)
	}
	return nil
}

func validModels(models []string) error {
	if len(models) > maxModels {
		return invalid("models", "at most %d models", maxModels)
	}
	for i, m := range models {
		switch {
		case len(m) > maxModelLen || !modelPattern.MatchString(m):
			return invalid("models", "model %q is not a model id", m)
		case slices.Contains(models[:i], m):
			return invalid("models", "model %q is listed twice", m)
		}
	}
	return nil
}

func newID() (string, error) {
	b := make([]byte, idRandomSize)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate key id: %w", err)
	}
	return "key_" + hex.EncodeToString(b), nil
}
