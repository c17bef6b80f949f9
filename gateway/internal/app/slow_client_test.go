package app

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/pkg/usage"
)

// patience is how long a test waits for the gateway to give up on a slow
// client whose bound is a few hundred milliseconds: generous, so that a
// loaded machine never fails it, and far below the minutes a client could
// hold the gateway before.
const patience = 10 * time.Second

// dialGateway opens a raw TCP connection to the gateway. With small, its
// receive buffer is as small as the kernel allows, so that a client that
// does not read fills the buffers between it and the gateway quickly; such
// a connection is also slow to drain later (the kernel reopens a window
// below one segment only on its persist timer), so a test that reads the
// end of the connection uses the default buffers and a larger answer.
func dialGateway(t *testing.T, h *harness, small bool) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", h.cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	tc := c.(*net.TCPConn)
	if !small {
		return tc
	}
	if err := tc.SetReadBuffer(1024); err != nil {
		t.Fatal(err)
	}
	return tc
}

// chatHeaders is the head of a chat request announcing a body of length bytes.
func chatHeaders(key string, length int) string {
	auth := ""
	if key != "" {
		auth = "Authorization: Bearer " + key + "\r\n"
	}
	return "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" + auth +
		fmt.Sprintf("Content-Length: %d\r\n\r\n", length)
}

// TestStalledRequestBody sends a body shorter than its Content-Length and
// waits: the gateway answers within patience (BODY_READ_TIMEOUT is 300ms
// here) and closes the connection, whether the route reads the body (chat:
// 408 request_timeout) or refuses the request before reading it (no key:
// 401). Nothing reaches the upstream and nothing is metered.
func TestStalledRequestBody(t *testing.T) {
	h := startGateway(t, func(c *config.Config) { c.BodyReadTimeout = 300 * time.Millisecond })
	key := h.addKey(t, "key_stall_body")
	partial := `{"model":"deepseek-chat","messages":[{"role":"user","content":"a longer hello"}]}`[:70]
	for _, tc := range []struct {
		name, key string
		status    int
		typ, code string
	}{
		{"valid key: 408", key, http.StatusRequestTimeout, "invalid_request_error", "request_timeout"},
		{"no key: 401", "", http.StatusUnauthorized, "authentication_error", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialGateway(t, h, true)
			if _, err := io.WriteString(c, chatHeaders(tc.key, 500)+partial); err != nil {
				t.Fatal(err)
			}
			if err := c.SetReadDeadline(time.Now().Add(patience)); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer to a stalled body within %s: %v", patience, err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			typ, _, msg := errorOf(t, string(b))
			if typ != tc.typ {
				t.Errorf("type %q, want %q (%s)", typ, tc.typ, msg)
			}
			if tc.code != "" && !strings.Contains(string(b), `"code":"`+tc.code+`"`) {
				t.Errorf("body %s lacks code %s", b, tc.code)
			}
			// The rest of the body is still owed: the connection cannot be
			// reused, and the gateway closes it.
			if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
				t.Errorf("connection not closed after the answer: %v", err)
			}
		})
	}
	if got := h.sim.Stats().Requests; got != 0 {
		t.Errorf("%d requests reached the upstream", got)
	}
	// A complete request still works, on the same gateway.
	if r := h.post(t, key, `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`); r.status != http.StatusOK {
		t.Fatalf("complete request after the stalled ones: %d %s", r.status, r.body)
	}
	h.events(t, 1)
}

// TestKeptAliveConnectionOutlivesWriteBound: the deadlines a request sets
// on its connection do not fail the next requests on it, each sent after an
// idle gap longer than CLIENT_WRITE_TIMEOUT and BODY_READ_TIMEOUT: a
// stream, an answer, an error, and a request whose first write is
// net/http's own (the 100 Continue of a client that waits for it). The
// gateway relies on net/http clearing the write deadline between requests.
func TestKeptAliveConnectionOutlivesWriteBound(t *testing.T) {
	h := startGateway(t, func(c *config.Config) {
		c.ClientWriteTimeout = 200 * time.Millisecond
		c.BodyReadTimeout = 200 * time.Millisecond
	})
	key := h.addKey(t, "key_keepalive")
	c := dialGateway(t, h, true)
	br := bufio.NewReader(c)
	const expectContinue = 3
	for i, body := range []string{
		`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"one"}]}`,
		`{"model":"deepseek-chat","messages":[{"role":"user","content":"two"}]}`,
		`{"model":"nope","messages":[]}`,
		`{"model":"deepseek-chat","messages":[{"role":"user","content":"four"}]}`,
	} {
		if i > 0 {
			time.Sleep(500 * time.Millisecond) // an idle gap, not a wait for something
		}
		if err := c.SetReadDeadline(time.Now().Add(patience)); err != nil {
			t.Fatal(err)
		}
		head := chatHeaders(key, len(body))
		if i == expectContinue {
			head = strings.Replace(head, "\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n", 1)
			if _, err := io.WriteString(c, head); err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("request %d: want 100 Continue: %v", i, err)
			}
			_ = resp.Body.Close() // a 1xx answer has no body
			if resp.StatusCode != http.StatusContinue {
				t.Fatalf("request %d: status %d, want 100 Continue", i, resp.StatusCode)
			}
			head = ""
		}
		if _, err := io.WriteString(c, head+body); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the kept-alive connection: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatalf("request %d: answer broke off: %v", i, err)
		}
		want := http.StatusOK
		if i == 2 {
			want = http.StatusNotFound
		}
		if resp.StatusCode != want || resp.Close {
			t.Fatalf("request %d: status %d (close %v), want %d on a kept-alive connection: %s", i, resp.StatusCode, resp.Close, want, b)
		}
	}
}

// TestStalledStreamReader asks for a long stream and never reads it: once
// the buffers between the gateway and the client are full, a write cannot
// complete within CLIENT_WRITE_TIMEOUT (300ms here), the gateway cuts the
// client off, cancels the upstream request and meters what it relayed as
// client_cancelled.
func TestStalledStreamReader(t *testing.T) {
	h := startGateway(t, slowUpstreamOK(func(c *config.Config) { c.ClientWriteTimeout = 300 * time.Millisecond }))
	key := h.addKey(t, "key_stall_stream")
	c := dialGateway(t, h, false)
	// Some 80 MB of events, far more than the socket buffers hold.
	const tokens = 500000
	body := fmt.Sprintf(`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"#sim tokens=%d"}]}`, tokens)
	if _, err := io.WriteString(c, chatHeaders(key, len(body))+body); err != nil {
		t.Fatal(err)
	}

	// h.events waits up to 10s (patience) for the event.
	ev := h.events(t, 1)[0]
	if ev.KeyID != "key_stall_stream" || !ev.Stream || ev.Outcome != usage.OutcomeClientCancelled || ev.Status != 499 {
		t.Fatalf("event %+v, want a client_cancelled stream with status 499", ev)
	}
	if ev.UsageSource != usage.SourceEstimated || ev.CompletionTokens < 1 || ev.CompletionTokens >= tokens {
		t.Errorf("event source %s, %d completion tokens; want an estimate of what was relayed, short of %d",
			ev.UsageSource, ev.CompletionTokens, tokens)
	}
	deadline := time.Now().Add(patience)
	for h.sim.Stats().InFlight != 0 {
		if time.Now().After(deadline) {
			t.Fatal("upstream request still running after the client was cut off")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The gateway closed the connection: reading what was buffered ends.
	if err := c.SetReadDeadline(time.Now().Add(patience)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Errorf("connection not closed by the gateway: %v", err)
	}
}

// TestStalledAnswerReader asks for a large non-streaming answer and never
// reads it: the gateway gives up within CLIENT_WRITE_TIMEOUT of the last
// write that went through, and meters the answer as client_cancelled with
// the usage the upstream reported.
func TestStalledAnswerReader(t *testing.T) {
	h := startGateway(t, slowUpstreamOK(func(c *config.Config) { c.ClientWriteTimeout = 300 * time.Millisecond }))
	key := h.addKey(t, "key_stall_answer")
	c := dialGateway(t, h, true)
	// Some 13 MB of JSON, several times what the socket buffers hold (the
	// kernel grows a send buffer to 4 MB at most by default).
	const tokens = 2000000
	body := fmt.Sprintf(`{"model":"deepseek-chat","messages":[{"role":"user","content":"#sim tokens=%d"}]}`, tokens)
	if _, err := io.WriteString(c, chatHeaders(key, len(body))+body); err != nil {
		t.Fatal(err)
	}
	ev := h.events(t, 1)[0]
	if ev.KeyID != "key_stall_answer" || ev.Stream || ev.Outcome != usage.OutcomeClientCancelled || ev.Status != 499 {
		t.Fatalf("event %+v, want a client_cancelled answer with status 499", ev)
	}
	if ev.UsageSource != usage.SourceReported || ev.CompletionTokens != tokens {
		t.Errorf("event source %s, %d completion tokens; want the %d reported", ev.UsageSource, ev.CompletionTokens, tokens)
	}
}

// slowUpstreamOK wraps mutate with upstream timeouts long enough for the
// simulator to generate a huge answer on a loaded machine: these tests are
// about the client side.
func slowUpstreamOK(mutate func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		mutate(c)
		c.Upstream.FirstByteTimeout = time.Minute
		c.Upstream.IdleTimeout = time.Minute
	}
}

// isReset reports a connection the peer reset (closed with unread data).
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
