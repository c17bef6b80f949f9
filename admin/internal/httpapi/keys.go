package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/qyai/qyai/admin/internal/keys"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
)

// maxBodyBytes bounds an admin request body.
const maxBodyBytes = 64 << 10

// issuedKey is the answer to create and rotate: the only place the key appears.
type issuedKey struct {
	ID           string    `json:"id"`
	Key          string    `json:"key"`
	KeyPrefix    string    `json:"key_prefix"`
	Name         string    `json:"name"`
	Tier         string    `json:"tier"`
	RPM          int64     `json:"rpm"`
	MonthlyLimit int64     `json:"monthly_limit"`
	TPM          int64     `json:"tpm,omitempty"`
	Models       []string  `json:"models"`
	CreatedAt    time.Time `json:"created_at"`
}

// keyView is a key as listed: never the key, never its hash.
type keyView struct {
	ID           string    `json:"id"`
	KeyPrefix    string    `json:"key_prefix"`
	Name         string    `json:"name"`
	Tier         string    `json:"tier"`
	RPM          int64     `json:"rpm"`
	MonthlyLimit int64     `json:"monthly_limit"`
	TPM          int64     `json:"tpm,omitempty"`
	Models       []string  `json:"models"`
	Status       string    `json:"status"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

type list[T any] struct {
	Object string `json:"object"`
	Data   []T    `json:"data"`
}

func newIssued(is keys.Issued) issuedKey {
	r := is.Record
	return issuedKey{
		ID: r.ID, Key: is.Key, KeyPrefix: r.KeyPrefix, Name: r.Name, Tier: r.Tier,
		RPM: r.RPM, MonthlyLimit: r.MonthlyLimit, TPM: r.TPM, Models: nonNil(r.Models), CreatedAt: r.CreatedAt,
	}
}

func newView(r apikey.Record) keyView {
	return keyView{
		ID: r.ID, KeyPrefix: r.KeyPrefix, Name: r.Name, Tier: r.Tier, RPM: r.RPM,
		MonthlyLimit: r.MonthlyLimit, TPM: r.TPM, Models: nonNil(r.Models), Status: r.Status,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (a *api) createKey(c *gin.Context) error {
	var req keys.CreateRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	is, err := a.Keys.Create(c.Request.Context(), actor(c), req)
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key created", "key_id", is.Record.ID, "tier", is.Record.Tier, "actor", actor(c))
	c.JSON(http.StatusCreated, newIssued(is))
	return nil
}

func (a *api) listKeys(c *gin.Context) error {
	recs, err := a.Keys.List(c.Request.Context())
	if err != nil {
		return err
	}
	out := list[keyView]{Object: "list", Data: make([]keyView, 0, len(recs))}
	for _, r := range recs {
		out.Data = append(out.Data, newView(r))
	}
	c.JSON(http.StatusOK, out)
	return nil
}

func (a *api) getKey(c *gin.Context) error {
	rec, err := a.Keys.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		return err
	}
	c.JSON(http.StatusOK, newView(rec))
	return nil
}

// updateKey answers PATCH /admin/v1/keys/{id}: name, tier, rpm,
// monthly_limit and models may be set; anything else is refused.
func (a *api) updateKey(c *gin.Context) error {
	var req keys.UpdateRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	rec, err := a.Keys.Update(c.Request.Context(), actor(c), c.Param("id"), req)
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key updated", "key_id", rec.ID, "actor", actor(c))
	c.JSON(http.StatusOK, newView(rec))
	return nil
}

func (a *api) disableKey(c *gin.Context) error {
	rec, err := a.Keys.Disable(c.Request.Context(), actor(c), c.Param("id"))
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key disabled", "key_id", rec.ID, "actor", actor(c))
	c.JSON(http.StatusOK, newView(rec))
	return nil
}

func (a *api) enableKey(c *gin.Context) error {
	rec, err := a.Keys.Enable(c.Request.Context(), actor(c), c.Param("id"))
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key enabled", "key_id", rec.ID, "actor", actor(c))
	c.JSON(http.StatusOK, newView(rec))
	return nil
}

func (a *api) rotateKey(c *gin.Context) error {
	is, err := a.Keys.Rotate(c.Request.Context(), actor(c), c.Param("id"))
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key rotated", "key_id", is.Record.ID, "actor", actor(c))
	c.JSON(http.StatusOK, newIssued(is))
	return nil
}

// regeneratedKey is the answer to a key holder's regenerate: the new key,
// shown this once, and its display prefix.
type regeneratedKey struct {
	Key       string `json:"key"`
	KeyPrefix string `json:"key_prefix"`
}

// regenerateKey answers POST /v1/dashboard/key/regenerate: the holder of a
// key, authenticated by that key, replaces it. The key id, and with it the
// billing history and limits, stay; the presented key stops working. The
// key is authenticated before the per-key limit (REGENERATE_RPM) is taken,
// so that an unknown key costs no budget (the gateway limits failed
// authentications per address). Any body is ignored.
func (a *api) regenerateKey(c *gin.Context) error {
	tok, ok := bearer(c.GetHeader("Authorization"))
	if !ok {
		return errAPIKey
	}
	rec, err := a.Keys.Authenticate(c.Request.Context(), tok)
	if err != nil {
		return err
	}
	if err := limitKey(c, a.RegenerateLimit, rec.ID, "key regenerations"); err != nil {
		return err
	}
	is, err := a.Keys.Regenerate(c.Request.Context(), tok)
	if err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key regenerated", "key_id", is.Record.ID, "actor", keys.HolderActor(is.Record.ID))
	// The answer holds a secret: no cache may keep it.
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, regeneratedKey{Key: is.Key, KeyPrefix: is.Record.KeyPrefix})
	return nil
}

func (a *api) revokeKey(c *gin.Context) error {
	if err := a.Keys.Revoke(c.Request.Context(), actor(c), c.Param("id")); err != nil {
		return err
	}
	a.Log.InfoContext(c.Request.Context(), "key revoked", "key_id", c.Param("id"), "actor", actor(c))
	c.Status(http.StatusNoContent)
	return nil
}

// decodeJSON reads one JSON object into dst, rejecting unknown fields (a
// typo such as "monthlyLimit" must not silently fall back to the default).
func decodeJSON(c *gin.Context, dst any) error {
	dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil && dec.More() {
		err = errors.New("trailing data")
	}
	var (
		typeErr *json.UnmarshalTypeError
		sizeErr *http.MaxBytesError
	)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF):
		return apierr.InvalidRequest("The request body is empty; send a JSON object.")
	case errors.As(err, &sizeErr):
		return apierr.InvalidRequest(fmt.Sprintf("The request body is larger than %d bytes.", maxBodyBytes))
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return apierr.InvalidRequest(fmt.Sprintf("'%s' must be of type %s.", typeErr.Field, jsonType(typeErr.Type.Kind().String()))).
			WithParam(typeErr.Field)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		f = strings.Trim(f, `"`)
		return apierr.InvalidRequest(fmt.Sprintf("Unrecognized request argument supplied: %s.", f)).WithParam(f)
	}
	return apierr.InvalidRequest("We could not parse the JSON body of your request: send a JSON object.")
}

func jsonType(kind string) string {
	switch kind {
	case "int64", "int", "uint64":
		return "integer"
	case "slice":
		return "array of strings"
	}
	return kind
}
