package upstreamsim

import (
	"fmt"
	"sync"
	"testing"
)

// total is what a client adds up from the usage it was given.
type total struct {
	prompt, hit, miss, completion, reasoning uint64
}

func (tt *total) add(u *usageJSON) {
	tt.prompt += uint64(u.PromptTokens)
	tt.hit += uint64(u.PromptCacheHitTokens)
	tt.miss += uint64(u.PromptCacheMissTokens)
	tt.completion += uint64(u.CompletionTokens)
	tt.reasoning += uint64(u.CompletionTokensDetails.ReasoningTokens)
}

func (tt total) check(t *testing.T, st Stats) {
	t.Helper()
	got := total{st.PromptTokens, st.CacheHitTokens, st.CacheMissTokens, st.CompletionTokens, st.ReasoningTokens}
	if got != tt {
		t.Errorf("reported tokens %+v, clients were told %+v", got, tt)
	}
	if st.InFlight == 0 && st.Requests != st.Completed+st.Errors+st.Cancelled+st.Cut {
		t.Errorf("requests %d != completed %d + errors %d + cancelled %d + cut %d",
			st.Requests, st.Completed, st.Errors, st.Cancelled, st.Cut)
	}
}

func TestStatsExact(t *testing.T) {
	s, base := newSim(t, Config{})
	var told total
	add := func(body string) {
		t.Helper()
		status, b := chat(t, base, body)
		if status != 200 {
			t.Fatalf("status %d: %s", status, b)
		}
		if b[0] == '{' {
			told.add(decodeCompletion(t, b).Usage)
			return
		}
		if u := assemble(t, parseSSE(t, b)).usage; u != nil {
			told.add(u)
		}
	}
	const sys = `{"role":"system","content":"Be brief."}` // 6 tokens
	add(`{"model":"deepseek-v4-flash","messages":[` + sys + `,{"role":"user","content":"One"}]}`)
	add(`{"model":"deepseek-v4-flash","messages":[` + sys + `,{"role":"user","content":"One"}]}`) // cache hit
	add(`{"model":"deepseek-reasoner","stream":true,"stream_options":{"include_usage":true},"messages":[` + sys + `,{"role":"user","content":"Two #sim tokens=9"}]}`)
	add(`{"model":"deepseek-v4-pro","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"Three"}]}`)
	add(`{"model":"deepseek-v4-flash","tools":` + weatherTools + `,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Four"}]}`)
	// A stream without include_usage: served in full, never reported.
	add(`{"model":"deepseek-reasoner","stream":true,"messages":[{"role":"user","content":"Five #sim tokens=5"}]}`) // prompt 7
	// Errors.
	chat(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Six #sim status=429"}]}`)
	chat(t, base, `{"model":"nope","messages":[{"role":"user","content":"Seven"}]}`)
	// A cut stream: 3 of 6 tokens sent.
	_, _, _ = readPartial(t, base, `{"model":"deepseek-v4-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Eight #sim tokens=6 cut_after=3"}]}`) // prompt 8; the cut is the point, its read error expected

	waitFor(t, "every handler to finish", func() bool { return s.Stats().InFlight == 0 })
	st := s.Stats()
	told.check(t, st)
	if told.hit == 0 || told.reasoning == 0 {
		t.Errorf("the mix should hit the cache and reason: %+v", told)
	}
	want := Stats{
		Requests: 9, Streams: 4, Completed: 6, Errors: 2, Cut: 1,
		UnreportedRequests: 2, UnreportedPromptTokens: 7 + 8, UnreportedCacheMissTokens: 7 + 8,
		UnreportedCompletionTokens: 5 + 3, UnreportedReasoningTokens: 2,
	}
	if st.Requests != want.Requests || st.Streams != want.Streams || st.Completed != want.Completed || st.Errors != want.Errors ||
		st.Cut != want.Cut || st.Cancelled != 0 || st.UnreportedRequests != want.UnreportedRequests ||
		st.UnreportedPromptTokens != want.UnreportedPromptTokens || st.UnreportedCacheHitTokens != 0 ||
		st.UnreportedCacheMissTokens != want.UnreportedCacheMissTokens ||
		st.UnreportedCompletionTokens != want.UnreportedCompletionTokens || st.UnreportedReasoningTokens != want.UnreportedReasoningTokens {
		t.Errorf("stats %+v\nwant    %+v", st, want)
	}
	if st.ByStatus["200"] != 7 || st.ByStatus["429"] != 1 || st.ByStatus["400"] != 1 {
		t.Errorf("by_status %v", st.ByStatus)
	}
}

// TestConcurrent hammers one simulator from many goroutines (run it with
// -race) and checks that the counters equal what the clients were told.
func TestConcurrent(t *testing.T) {
	const workers, perWorker = 8, 40
	s, base := newSim(t, Config{CacheEntries: 256})
	var (
		mu   sync.Mutex
		told total
	)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var mine total
			for i := range perWorker {
				stream := i%2 == 1
				model := []string{"deepseek-v4-flash", "deepseek-reasoner", "deepseek-v4-pro"}[i%3]
				body := fmt.Sprintf(`{"model":%q,"stream":%t,"stream_options":{"include_usage":true},"messages":[`+
					`{"role":"system","content":"Shared system prompt for every worker."},`+
					`{"role":"user","content":"worker %d question %d #sim tokens=%d"}]}`, model, stream, w, i%5, 1+i%7)
				status, b, err := readPartial(t, base, body)
				if err != nil || status != 200 {
					t.Errorf("worker %d request %d: %d %v %s", w, i, status, err, b)
					return
				}
				var u *usageJSON
				if stream {
					u = assemble(t, parseSSE(t, b)).usage
				} else {
					u = decodeCompletion(t, b).Usage
				}
				checkUsage(t, u)
				if u.CompletionTokens != 1+i%7 {
					t.Errorf("completion %d, want %d", u.CompletionTokens, 1+i%7)
				}
				mine.add(u)
			}
			mu.Lock()
			defer mu.Unlock()
			told.prompt += mine.prompt
			told.hit += mine.hit
			told.miss += mine.miss
			told.completion += mine.completion
			told.reasoning += mine.reasoning
		})
	}
	wg.Wait()
	st := s.Stats()
	told.check(t, st)
	if st.Requests != workers*perWorker || st.Completed != workers*perWorker || st.UnreportedRequests != 0 {
		t.Errorf("stats %+v", st)
	}
	if told.hit == 0 {
		t.Error("no cache hit although every request shares the system prompt")
	}
}
