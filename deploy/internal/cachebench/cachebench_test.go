package cachebench

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/qyai/qyai/testkit/upstreamsim"
)

// TestRunAgainstOneAccount: straight to the simulator every request is one
// account, so every turn after the first hits the whole previous prompt.
func TestRunAgainstOneAccount(t *testing.T) {
	ts := httptest.NewServer(upstreamsim.New(upstreamsim.Config{}))
	t.Cleanup(ts.Close)
	cfg := Config{
		Targets: []Target{{Name: "direct", URL: ts.URL}}, Key: "sk-x", Sim: ts.URL,
		Model: "deepseek-v4-flash", Conversations: 6, Turns: 3, Concurrency: 2,
	}
	rs, err := Run(t.Context(), cfg, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	if r.Requests != 18 || r.Errors != 0 || r.Hit+r.Miss != r.Prompt || r.Hit == 0 {
		t.Fatalf("result %+v", r)
	}
	if r.Cost <= r.InputCost || r.InputCost >= r.NoCacheCost {
		t.Errorf("costs: total %s input %s without cache %s", r.Cost, r.InputCost, r.NoCacheCost)
	}
	var b strings.Builder
	if err := Print(&b, cfg, rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| direct | 18 | 0 |") {
		t.Errorf("table:\n%s", b.String())
	}
}
