package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// keyJSON is a key as the admin API shows it (Key only after create and
// rotate, Status not after them).
type keyJSON struct {
	ID           string    `json:"id"`
	Key          string    `json:"key"`
	KeyPrefix    string    `json:"key_prefix"`
	Name         string    `json:"name"`
	Tier         string    `json:"tier"`
	RPM          int64     `json:"rpm"`
	MonthlyLimit int64     `json:"monthly_limit"`
	Models       []string  `json:"models"`
	Status       string    `json:"status"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// keyFields registers the settable fields of a key.
type keyFields struct {
	name, tier, models *string
	rpm, monthly       *int64
}

func addKeyFields(f flags) keyFields {
	return keyFields{
		name:    f.String("name", "", "key name"),
		tier:    f.String("tier", "", "basic, pro or enterprise"),
		models:  f.String("models", "", "allowed models, comma-separated (empty: all)"),
		rpm:     f.Int64("rpm", 0, "requests per minute (default: the tier's)"),
		monthly: f.Int64("monthly-limit", 0, "requests per UTC month (default: the tier's)"),
	}
}

// body is the JSON request with the fields that were given.
func (k keyFields) body(f flags) map[string]any {
	b := map[string]any{}
	if f.set("name") {
		b["name"] = *k.name
	}
	if f.set("tier") {
		b["tier"] = *k.tier
	}
	if f.set("rpm") {
		b["rpm"] = *k.rpm
	}
	if f.set("monthly-limit") {
		b["monthly_limit"] = *k.monthly
	}
	if f.set("models") {
		models := []string{}
		for m := range strings.SplitSeq(*k.models, ",") {
			if m = strings.TrimSpace(m); m != "" {
				models = append(models, m)
			}
		}
		b["models"] = models
	}
	return b
}

func (r *runner) create(ctx context.Context, args []string) error {
	f := newFlags("keys create", r.errw)
	fields := addKeyFields(f)
	if _, err := f.parse(args, 0); err != nil {
		return err
	}
	b, err := r.call(ctx, http.MethodPost, "/admin/v1/keys", fields.body(f), "")
	if err != nil {
		return err
	}
	return r.showKey(b, *f.json)
}

func (r *runner) update(ctx context.Context, args []string) error {
	f := newFlags("keys update", r.errw)
	fields := addKeyFields(f)
	pos, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	b, err := r.call(ctx, http.MethodPatch, keyPath(pos[0]), fields.body(f), "")
	if err != nil {
		return err
	}
	return r.showKey(b, *f.json)
}

// simple runs a command on one key id without a body (get, disable,
// enable, rotate) and shows the key it answers.
func (r *runner) simple(ctx context.Context, name string, args []string, method, suffix string) error {
	f := newFlags(name, r.errw)
	pos, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	b, err := r.call(ctx, method, keyPath(pos[0])+suffix, nil, "")
	if err != nil {
		return err
	}
	return r.showKey(b, *f.json)
}

// revoke answers 204: the key is then read back, so that --json prints the
// record like the other commands.
func (r *runner) revoke(ctx context.Context, args []string) error {
	f := newFlags("keys revoke", r.errw)
	pos, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if _, err := r.call(ctx, http.MethodDelete, keyPath(pos[0]), nil, ""); err != nil {
		return err
	}
	b, err := r.call(ctx, http.MethodGet, keyPath(pos[0]), nil, "")
	if err != nil {
		return err
	}
	if *f.json {
		return r.printJSON(b)
	}
	_, err = fmt.Fprintf(r.out, "Revoked %s: the key no longer works.\n", pos[0])
	return err
}

func (r *runner) list(ctx context.Context, args []string) error {
	f := newFlags("keys list", r.errw)
	if _, err := f.parse(args, 0); err != nil {
		return err
	}
	b, err := r.call(ctx, http.MethodGet, "/admin/v1/keys", nil, "")
	if err != nil {
		return err
	}
	if *f.json {
		return r.printJSON(b)
	}
	var l struct {
		Data []keyJSON `json:"data"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("decode key list: %w", err)
	}
	tw := newTable(r.out, 0)
	tw.printf("ID\tPREFIX\tNAME\tTIER\tRPM\tMONTHLY LIMIT\tMODELS\tSTATUS\tCREATED\n")
	for _, k := range l.Data {
		tw.printf("%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", k.ID, k.KeyPrefix, k.Name, k.Tier, k.RPM,
			k.MonthlyLimit, models(k.Models), k.Status, k.CreatedAt.UTC().Format(time.RFC3339))
	}
	return tw.flush()
}

// showKey prints one key: its fields, and the key itself, once, after
// create and rotate.
func (r *runner) showKey(b []byte, asJSON bool) error {
	if asJSON {
		return r.printJSON(b)
	}
	var k keyJSON
	if err := json.Unmarshal(b, &k); err != nil {
		return fmt.Errorf("decode key: %w", err)
	}
	tw := newTable(r.out, 0)
	if k.Key != "" {
		tw.printf("key\t%s\t(shown once: store it now)\n", k.Key)
	}
	tw.printf("id\t%s\n", k.ID)
	tw.printf("prefix\t%s\n", k.KeyPrefix)
	tw.printf("name\t%s\n", k.Name)
	tw.printf("tier\t%s\n", k.Tier)
	tw.printf("rpm\t%s\n", strconv.FormatInt(k.RPM, 10))
	tw.printf("monthly limit\t%s\n", strconv.FormatInt(k.MonthlyLimit, 10))
	tw.printf("models\t%s\n", models(k.Models))
	if k.Status != "" {
		tw.printf("status\t%s\n", k.Status)
	}
	tw.printf("created\t%s\n", k.CreatedAt.UTC().Format(time.RFC3339))
	if !k.UpdatedAt.IsZero() {
		tw.printf("updated\t%s\n", k.UpdatedAt.UTC().Format(time.RFC3339))
	}
	return tw.flush()
}

func models(m []string) string {
	if len(m) == 0 {
		return "all"
	}
	return strings.Join(m, ",")
}
