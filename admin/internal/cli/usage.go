package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"

	"github.com/shopspring/decimal"
)

// usageRowJSON is one row of the finance report.
type usageRowJSON struct {
	Day              string          `json:"day"`
	Model            string          `json:"model"`
	KeyID            string          `json:"key_id"`
	Requests         uint64          `json:"requests"`
	PromptTokens     uint64          `json:"prompt_tokens"`
	CacheHitTokens   uint64          `json:"cache_hit_tokens"`
	CacheMissTokens  uint64          `json:"cache_miss_tokens"`
	CompletionTokens uint64          `json:"completion_tokens"`
	ReasoningTokens  uint64          `json:"reasoning_tokens"`
	CostUSD          decimal.Decimal `json:"cost_usd"`
}

// usage prints the finance report: a table with a TOTAL row (cost summed
// exactly), the API's JSON with --json, or its CSV with --csv.
func (r *runner) usage(ctx context.Context, args []string) error {
	f := newFlags("usage", r.errw)
	key := f.String("key", "", "only this key id")
	from := f.String("from", "", "first UTC day, YYYY-MM-DD (default: first of this month)")
	to := f.String("to", "", "last UTC day, inclusive (default: today)")
	group := f.String("group-by", "day", "day, model or key")
	asCSV := f.Bool("csv", false, "print CSV")
	if _, err := f.parse(args, 0); err != nil {
		return err
	}
	q := url.Values{}
	for name, v := range map[string]string{"key_id": *key, "from": *from, "to": *to, "group_by": *group} {
		if v != "" {
			q.Set(name, v)
		}
	}
	path := "/admin/v1/usage?" + q.Encode()
	if *asCSV {
		b, err := r.call(ctx, http.MethodGet, path, nil, "text/csv")
		if err != nil {
			return err
		}
		_, err = r.out.Write(b)
		return err
	}
	b, err := r.call(ctx, http.MethodGet, path, nil, "application/json")
	if err != nil {
		return err
	}
	if *f.json {
		return r.printJSON(b)
	}
	var l struct {
		Data []usageRowJSON `json:"data"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("decode usage report: %w", err)
	}
	column := map[string]string{"day": "DAY", "model": "MODEL", "key": "KEY"}[*group]
	tw := newTable(r.out, tabwriter.AlignRight)
	tw.printf("%s\tREQUESTS\tPROMPT\tCACHE HIT\tCACHE MISS\tCOMPLETION\tREASONING\tCOST USD\t\n", column)
	var total usageRowJSON
	total.CostUSD = decimal.Zero
	u := func(n uint64) string { return strconv.FormatUint(n, 10) }
	line := func(name string, x usageRowJSON) {
		tw.printf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, u(x.Requests), u(x.PromptTokens), u(x.CacheHitTokens),
			u(x.CacheMissTokens), u(x.CompletionTokens), u(x.ReasoningTokens), x.CostUSD.StringFixed(9))
	}
	for _, x := range l.Data {
		line(x.Day+x.Model+x.KeyID, x)
		total.Requests += x.Requests
		total.PromptTokens += x.PromptTokens
		total.CacheHitTokens += x.CacheHitTokens
		total.CacheMissTokens += x.CacheMissTokens
		total.CompletionTokens += x.CompletionTokens
		total.ReasoningTokens += x.ReasoningTokens
		total.CostUSD = total.CostUSD.Add(x.CostUSD)
	}
	line("TOTAL", total)
	return tw.flush()
}
