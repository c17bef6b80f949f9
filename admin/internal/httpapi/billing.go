package httpapi

import (
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/qyai/qyai/admin/internal/billing"
	"github.com/qyai/qyai/pkg/apierr"
)

// dateLayout is the layout of the from and to parameters (UTC days).
const dateLayout = "2006-01-02"

// billingUsage answers GET /v1/dashboard/billing/usage for the caller's key.
func (a *api) billingUsage(c *gin.Context) error {
	tok, ok := bearer(c.GetHeader("Authorization"))
	if !ok {
		return errAPIKey
	}
	rec, err := a.Keys.Authenticate(c.Request.Context(), tok)
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

// usageRow is one group of the finance report. Exactly one of Day and
// Model is set. Costs are decimal strings: exact, never floats.
type usageRow struct {
	Day              *string `json:"day,omitempty"`
	Model            *string `json:"model,omitempty"`
	Requests         uint64  `json:"requests"`
	PromptTokens     uint64  `json:"prompt_tokens"`
	CacheHitTokens   uint64  `json:"cache_hit_tokens"`
	CacheMissTokens  uint64  `json:"cache_miss_tokens"`
	CompletionTokens uint64  `json:"completion_tokens"`
	ReasoningTokens  uint64  `json:"reasoning_tokens"`
	CostUSD          string  `json:"cost_usd"`
}

// usageReport answers GET /admin/v1/usage?key_id=&from=&to=&group_by=.
//
// from and to are UTC days (YYYY-MM-DD), both INCLUSIVE: from=2026-05-01
// &to=2026-05-31 is all of May. They default to the first day of the
// current month and today. key_id is optional (all keys when absent);
// group_by is day (default) or model.
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
	if q.GroupBy != billing.GroupByDay && q.GroupBy != billing.GroupByModel {
		return apierr.InvalidRequest("'group_by' must be 'day' or 'model'.").WithParam("group_by")
	}
	if len(q.KeyID) > 128 {
		return apierr.InvalidRequest("'key_id' is too long.").WithParam("key_id")
	}
	rows, err := a.Billing.Usage(c.Request.Context(), q)
	if err != nil {
		return err
	}
	out := list[usageRow]{Object: "list", Data: make([]usageRow, 0, len(rows))}
	for _, r := range rows {
		u := usageRow{
			Requests: r.Requests, PromptTokens: r.PromptTokens, CacheHitTokens: r.CacheHitTokens,
			CacheMissTokens: r.CacheMissTokens, CompletionTokens: r.CompletionTokens,
			ReasoningTokens: r.ReasoningTokens, CostUSD: r.CostUSD.StringFixed(9),
		}
		g := r.Group
		if q.GroupBy == billing.GroupByDay {
			u.Day = &g
		} else {
			u.Model = &g
		}
		out.Data = append(out.Data, u)
	}
	c.JSON(http.StatusOK, out)
	return nil
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
