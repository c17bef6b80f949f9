package upstreamsim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseDirective(t *testing.T) {
	tests := []struct {
		name, text string
		want       knobs
		err        string
	}{
		{name: "none", text: "just a question", want: noKnobs()},
		{name: "not a directive", text: "#simple #simulate", want: noKnobs()},
		{name: "bare prefix", text: "question #sim", want: noKnobs()},
		{
			name: "every key",
			text: "q #sim status=503 delay_ms=10 hang cut_after=2 tokens=9 reasoning=4 chunk_delay_ms=3 keepalive=1",
			want: knobs{status: 503, delay: 10 * time.Millisecond, hang: true, cutAfter: 2, tokens: 9, reasoning: 4,
				chunkDelay: 3 * time.Millisecond, keepalive: 1},
		},
		{
			name: "ends at its line",
			text: "#sim tokens=3\ntokens=4 is not read",
			want: knobs{cutAfter: -1, tokens: 3, reasoning: -1},
		},
		{
			name: "after a near miss",
			text: "#simulate then #sim\ttokens=2",
			want: knobs{cutAfter: -1, tokens: 2, reasoning: -1},
		},
		{name: "hang=false", text: "#sim hang=false", want: noKnobs()},
		{name: "unknown key", text: "#sim colour=red", err: `unknown key "colour"`},
		{name: "negative", text: "#sim delay_ms=-5", err: "non-negative"},
		{name: "not a number", text: "#sim tokens=many", err: "non-negative"},
		{name: "status too low", text: "#sim status=302", err: "400..599"},
		{name: "bad hang", text: "#sim hang=maybe", err: "hang"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := noKnobs()
			err := parseDirective(tt.text, &k)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v", err)
			}
			if k != tt.want {
				t.Errorf("knobs %+v, want %+v", k, tt.want)
			}
		})
	}
}

func TestDelay(t *testing.T) {
	tests := []struct {
		name, body string
		min        time.Duration
	}{
		{"non-stream", `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi #sim delay_ms=60"}]}`, 60 * time.Millisecond},
		{"error after delay", `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi #sim delay_ms=60 status=429"}]}`, 60 * time.Millisecond},
		// role, 2 tokens, finish, [DONE]: four gaps of 20 ms.
		{"chunk delay", `{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"Hi #sim tokens=2 chunk_delay_ms=20"}]}`, 80 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := newSim(t, Config{})
			start := time.Now()
			status, b := chat(t, base, tt.body)
			if elapsed := time.Since(start); elapsed < tt.min {
				t.Errorf("answered after %v, want at least %v", elapsed, tt.min)
			}
			if status != 200 && status != 429 {
				t.Errorf("status %d: %s", status, b)
			}
		})
	}
}

// startAndCancel sends body, waits until the simulator is handling it, checks
// that no answer came, cancels the client and returns the client's error.
func startAndCancel(t *testing.T, s *Server, base, body string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/chat/completions", strings.NewReader(body))
		if err != nil {
			done <- err
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			// A stream has its status line already; it must not end.
			_, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err == nil {
				err = errors.New("got a whole response: " + resp.Status)
			}
		}
		done <- err
	}()
	waitFor(t, "the request to arrive", func() bool { return s.Stats().InFlight == 1 })
	select {
	case err := <-done:
		t.Fatalf("request ended before the client left: %v", err)
	default:
	}
	cancel()
	return <-done
}

func TestClientLeaves(t *testing.T) {
	tests := []struct {
		name, content string
		stream        bool
		unreported    uint64
	}{
		{"hang", "Hi #sim hang", false, 0},
		{"hang stream", "Hi #sim hang", true, 0},
		{"during delay", "Hi #sim delay_ms=600000", false, 0},
		{"mid stream", "Hi #sim tokens=1000 chunk_delay_ms=600000", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, base := newSim(t, Config{})
			body := `{"model":"deepseek-v4-flash","stream":` + map[bool]string{false: "false", true: "true"}[tt.stream] +
				`,"messages":[{"role":"user","content":"` + tt.content + `"}]}`
			if err := startAndCancel(t, s, base, body); !errors.Is(err, context.Canceled) {
				t.Errorf("client error %v, want context.Canceled", err)
			}
			waitFor(t, "the handler to return", func() bool { st := s.Stats(); return st.InFlight == 0 && st.Cancelled == 1 })
			st := s.Stats()
			if st.Requests != 1 || st.Completed != 0 || st.Errors != 0 || st.Cut != 0 || st.UnreportedRequests != tt.unreported || st.PromptTokens != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestFaults(t *testing.T) {
	const body = `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}]}`
	t.Run("count", func(t *testing.T) {
		s, base := newSim(t, Config{})
		status, b := do(t, http.MethodPost, base+"/_sim/faults", `{"status":503,"count":2}`)
		if status != 200 || !strings.Contains(string(b), `"count":2`) {
			t.Fatalf("set fault: %d %s", status, b)
		}
		// Rejected requests do not consume the fault.
		if status, _ := chat(t, base, `{"model":"nope","messages":[{"role":"user","content":"x"}]}`); status != 400 {
			t.Errorf("invalid request: %d", status)
		}
		for i, want := range []int{503, 503, 200} {
			if status, b := chat(t, base, body); status != want {
				t.Errorf("request %d: status %d, want %d: %s", i, status, want, b)
			}
		}
		_, b = do(t, http.MethodGet, base+"/_sim/faults", "")
		var f Fault
		if err := json.Unmarshal(b, &f); err != nil || f.Count != 0 {
			t.Errorf("fault after use: %s %v", b, err)
		}
		if st := s.Stats(); st.ByStatus["503"] != 2 || st.ByStatus["200"] != 1 || st.ByStatus["400"] != 1 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("unlimited until cleared", func(t *testing.T) {
		_, base := newSim(t, Config{})
		do(t, http.MethodPost, base+"/_sim/faults", `{"status":500,"count":-1}`)
		for range 3 {
			if status, _ := chat(t, base, body); status != 500 {
				t.Fatalf("status %d, want 500", status)
			}
		}
		if status, _ := do(t, http.MethodDelete, base+"/_sim/faults", ""); status != http.StatusNoContent {
			t.Fatalf("clear: %d", status)
		}
		if status, _ := chat(t, base, body); status != 200 {
			t.Errorf("after clear: %d", status)
		}
	})
	t.Run("directive overrides", func(t *testing.T) {
		_, base := newSim(t, Config{})
		do(t, http.MethodPost, base+"/_sim/faults", `{"status":503,"tokens":2,"count":-1}`)
		if status, _ := chat(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x #sim status=429"}]}`); status != 429 {
			t.Errorf("status %d, want 429", status)
		}
	})
	t.Run("tokens and cut", func(t *testing.T) {
		s, base := newSim(t, Config{})
		do(t, http.MethodPost, base+"/_sim/faults", `{"tokens":4,"cut_after":1,"count":1}`)
		if _, _, err := readPartial(t, base, `{"model":"deepseek-v4-flash","stream":true,"messages":[{"role":"user","content":"x"}]}`); err == nil {
			t.Error("stream was not cut")
		}
		status, b := chat(t, base, body)
		if c := decodeCompletion(t, b); status != 200 || c.Usage.CompletionTokens != 20 {
			t.Errorf("second request: %d %s", status, b)
		}
		waitFor(t, "the cut handler to finish", func() bool { return s.Stats().InFlight == 0 })
		if st := s.Stats(); st.Cut != 1 || st.UnreportedCompletionTokens != 1 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("hang", func(t *testing.T) {
		s, base := newSim(t, Config{})
		do(t, http.MethodPost, base+"/_sim/faults", `{"hang":true,"count":1}`)
		if err := startAndCancel(t, s, base, body); !errors.Is(err, context.Canceled) {
			t.Errorf("client error %v", err)
		}
	})
	t.Run("reset clears", func(t *testing.T) {
		_, base := newSim(t, Config{})
		do(t, http.MethodPost, base+"/_sim/faults", `{"status":503,"count":-1}`)
		do(t, http.MethodPost, base+"/_sim/reset", "")
		if status, _ := chat(t, base, body); status != 200 {
			t.Errorf("after reset: %d", status)
		}
	})
	for _, bad := range []string{`{"status":200,"count":1}`, `{"colour":1}`, `{"count":-2}`, `{"tokens":-1,"count":1}`, `nope`} {
		t.Run("rejects "+bad, func(t *testing.T) {
			_, base := newSim(t, Config{})
			if status, _ := do(t, http.MethodPost, base+"/_sim/faults", bad); status != 400 {
				t.Errorf("status %d, want 400", status)
			}
		})
	}
}

func TestServe(t *testing.T) {
	s := New(Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()

	if status, b := chat(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hello"}]}`); status != 200 {
		t.Fatalf("status %d: %s", status, b)
	}
	// A hanging request must not hold up the shutdown.
	hung := make(chan error, 1)
	go func() {
		_, _, err := readPartial(t, base, `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"Hi #sim hang"}]}`)
		hung <- err
	}()
	waitFor(t, "the hanging request", func() bool { return s.Stats().InFlight == 1 })
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if err := <-hung; err == nil {
		t.Error("the hanging request got an answer")
	}
	if st := s.Stats(); st.Cancelled != 1 || st.Completed != 1 {
		t.Errorf("stats %+v", st)
	}
}
