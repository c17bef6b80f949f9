package httpapi

import (
	"encoding/csv"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/qyai/qyai/admin/internal/billing"
	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/apikey"
)

// dateLayout is the layout of the from and to parameters (UTC days).
const dateLayout = "2006-01-02"

// callerKey authenticates the API key of a public billing request and
// takes one request of the key's billing budget (BILLING_RPM): over it the
// request is refused with 429 and Retry-After before any ClickHouse query.
func (a *api) callerKey(c *gin.Context) (apikey.Record, error) {
	tok, ok := bearer(c.GetHeader("Authorization"))
	if !ok {
		return apikey.Record{}, errAPIKey
	}
	rec, err := a.Keys.Authenticate(c.Request.Context(), tok)
	if err != nil {
		return rec, err
	}
	if err := limitKey(c, a.BillingLimit, rec.ID, "billing requests"); err != nil {
		return apikey.Record{}, err
	}
	return rec, nil
}

// limitKey takes one request of keyID's budget in lim (nil: no limit);
// over it, it sets Retry-After and returns the 429 to answer. what names
// the requests counted, for the message.
func limitKey(c *gin.Context, lim BillingLimiter, keyID, what string) error {
	if lim == nil {
		return nil
	}
	wait, ok, err := lim.Allow(c.Request.Context(), keyID)
	if err != nil {
		return err
	}
	if !ok {
		secs := max(1, int(math.Ceil(wait.Seconds())))
		c.Header("Retry-After", strconv.Itoa(secs))
		return apierr.RateLimited("Rate limit reached for " + what + "; retry after " +
			strconv.Itoa(secs) + " seconds.").WithCode("rate_limit_exceeded")
	}
	return nil
}

// billingUsage answers GET /v1/dashboard/billing/usage for the caller's key.
func (a *api) billingUsage(c *gin.Context) error {
	rec, err := a.callerKey(c)
	if err != nil {
		return err
	}
	sum, err := a.Billing.Summary(c.Request.Context(), rec)
	if err != nil {
		return err
	}
	c.JSON(http.StatusOK, sum)
	return nil
}

// billingDaily answers GET /v1/dashboard/billing/daily for the caller's key:
// this UTC month's metered usage per day, from the first through today.
func (a *api) billingDaily(c *gin.Context) error {
	rec, err := a.callerKey(c)
	if err != nil {
		return err
	}
	days, err := a.Billing.Daily(c.Request.Context(), rec.ID)
	if err != nil {
		return err
	}
	c.JSON(http.StatusOK, list[billing.Day]{Object: "list", Data: days})
	return nil
}

// usageRow is one group of the finance report. Exactly one of Day, Model
// and KeyID is set. Costs are decimal strings: exact, never floats.
type usageRow struct {
	Day              *string `json:"day,omitempty"`
	Model            *string `json:"model,omitempty"`
	KeyID            *string `json:"key_id,omitempty"`
	Requests         uint64  `json:"requests"`
	PromptTokens     uint64  `json:"prompt_tokens"`
	CacheHitTokens   uint64  `json:"cache_hit_tokens"`
	CacheMissTokens  uint64  `json:"cache_miss_tokens"`
	CompletionTokens uint64  `json:"completion_tokens"`
	ReasoningTokens  uint64  `json:"reasoning_tokens"`
	CostUSD          string  `json:"cost_usd"`
}

// groupColumn names the group of each group_by in JSON and CSV.
var groupColumn = map[string]string{
	billing.GroupByDay:   "day",
	billing.GroupByModel: "model",
	billing.GroupByKey:   "key_id",
}

// usageReport answers GET /admin/v1/usage?key_id=&from=&to=&group_by=.
//
// from and to are UTC days (YYYY-MM-DD), both INCLUSIVE: from=2026-05-01
// &to=2026-05-31 is all of May. They default to the first day of the
// current month and today. key_id is optional (all keys when absent);
// group_by is day (default), model or key. The answer is JSON, or CSV when
// the Accept header prefers text/csv.
func (a *api) usageReport(c *gin.Context) error {
	today := a.Now().UTC().Truncate(24 * time.Hour)
	monthStart, _ := billing.MonthBounds(today)
	from, err := parseDay(c.Query("from"), monthStart, "from")
	if err != nil {
		return err
	}
	to, err := parseDay(c.Query("to"), today, "to")
	if err != nil {
		return err
	}
	if to.Before(from) {
		return apierr.InvalidRequest("'to' is before 'from'.").WithParam("to")
	}
	q := billing.Query{KeyID: c.Query("key_id"), From: from, To: to.AddDate(0, 0, 1), GroupBy: c.DefaultQuery("group_by", billing.GroupByDay)}
	column, ok := groupColumn[q.GroupBy]
	if !ok {
		return apierr.InvalidRequest("'group_by' must be 'day', 'model' or 'key'.").WithParam("group_by")
	}
	if len(q.KeyID) > 128 {
		return apierr.InvalidRequest("'key_id' is too long.").WithParam("key_id")
	}
	rows, err := a.Billing.Usage(c.Request.Context(), q)
	if err != nil {
		return err
	}
	c.Header("Vary", "Accept")
	if wantsCSV(c.GetHeader("Accept")) {
		name := "qyai-usage-" + from.Format(dateLayout) + "-" + to.Format(dateLayout) + "-by-" + q.GroupBy + ".csv"
		return writeUsageCSV(c, column, name, rows)
	}
	out := list[usageRow]{Object: "list", Data: make([]usageRow, 0, len(rows))}
	for _, r := range rows {
		u := usageRow{
			Requests: r.Requests, PromptTokens: r.PromptTokens, CacheHitTokens: r.CacheHitTokens,
			CacheMissTokens: r.CacheMissTokens, CompletionTokens: r.CompletionTokens,
			ReasoningTokens: r.ReasoningTokens, CostUSD: r.CostUSD.StringFixed(9),
		}
		g := r.Group
		switch q.GroupBy {
		case billing.GroupByDay:
			u.Day = &g
		case billing.GroupByModel:
			u.Model = &g
		default:
			u.KeyID = &g
		}
		out.Data = append(out.Data, u)
	}
	c.JSON(http.StatusOK, out)
	return nil
}

// csvHeader follows the group column in the CSV report.
var csvHeader = []string{"requests", "prompt_tokens", "cache_hit_tokens", "cache_miss_tokens",
	"completion_tokens", "reasoning_tokens", "cost_usd"}

// writeUsageCSV writes the report as CSV (RFC 4180 quoting, "\n" line
// ends): a header row, then one row per group, costs exact with 9 decimals.
func writeUsageCSV(c *gin.Context, column, filename string, rows []billing.Row) error {
	c.Header("Content-Type", "text/csv; charset=utf-8")
	c.Header("Content-Disposition", `attachment; filename="`+filename+`"`)
	c.Status(http.StatusOK)
	w := csv.NewWriter(c.Writer)
	_ = w.Write(append([]string{column}, csvHeader...))
	u := func(n uint64) string { return strconv.FormatUint(n, 10) }
	for _, r := range rows {
		_ = w.Write([]string{r.Group, u(r.Requests), u(r.PromptTokens), u(r.CacheHitTokens), u(r.CacheMissTokens),
			u(r.CompletionTokens), u(r.ReasoningTokens), r.CostUSD.StringFixed(9)})
	}
	w.Flush()
	// The status is sent: a write error means the client went away.
	return nil
}

// wantsCSV reports whether an Accept header prefers text/csv: it names
// text/csv with a weight above zero and at least that of application/json.
// Wildcards do not count: JSON stays the default.
func wantsCSV(accept string) bool {
	csvQ, jsonQ := -1.0, -1.0
	for part := range strings.SplitSeq(accept, ",") {
		fields := strings.Split(part, ";")
		mt := strings.ToLower(strings.TrimSpace(fields[0]))
		q := 1.0
		for _, p := range fields[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				}
			}
		}
		switch mt {
		case "text/csv":
			csvQ = max(csvQ, q)
		case "application/json":
			jsonQ = max(jsonQ, q)
		}
	}
	return csvQ > 0 && csvQ >= jsonQ
}

func parseDay(s string, def time.Time, param string) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	t, err := time.Parse(dateLayout, s)
	if err != nil {
		return time.Time{}, apierr.InvalidRequest("'" + param + "' must be a date YYYY-MM-DD (UTC).").WithParam(param)
	}
	return t, nil
}
