package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// target is one side of the comparison: the simulator, the gateway or the
// reference proxy.
type target struct {
	name string
	url  string // the chat completions URL
	key  string
	pid  int // 0: no process counters
}

// newClient returns the one client of a run: keep-alive connections for
// every worker (a connection set up per request would measure the TCP
// handshake instead of the gateway), no compression (the gateway and the
// simulator send identity bodies; gzip would cost the client CPU the
// servers need on a small machine), HTTP/1.1 as the upstream speaks it.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          4 * conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: 0, // the request's context bounds it
		WriteBufferSize:       8 << 10,
		ReadBufferSize:        16 << 10,
	}}
}

// workload builds and sends the benchmark's requests.
type workload struct {
	client  *http.Client
	timeout time.Duration
	tokens  int
	// chatBody and streamBody are built once; every request reads them
	// through its own bytes.Reader.
	chatBody, streamBody []byte
}

// Bodies of the requests: the example request of the API reference, a
// system and a user message at temperature 0.7. The streaming one asks for
// its token count with the simulator's directive, which the gateway passes
// through like any other text.
func newWorkload(c *http.Client, timeout time.Duration, tokens int) *workload {
	msg := func(user string) []any {
		return []any{
			map[string]string{"role": "system", "content": "You are a helpful assistant."},
			map[string]string{"role": "user", "content": user},
		}
	}
	chat, _ := json.Marshal(map[string]any{
		"model":       "deepseek-v4-flash",
		"messages":    msg("Write a haiku about programming."),
		"temperature": 0.7,
	})
	stream, _ := json.Marshal(map[string]any{
		"model":          "deepseek-v4-flash",
		"messages":       msg("Write a haiku about programming.\n#sim tokens=" + strconv.Itoa(tokens)),
		"temperature":    0.7,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
	})
	return &workload{client: c, timeout: timeout, tokens: tokens, chatBody: chat, streamBody: stream}
}

// sample is the outcome of one request. lat and ttft count from start,
// the time the request was due (closed loop: sent; open loop: scheduled).
type sample struct {
	lat, ttft time.Duration
	// err is empty for a success, else a short class ("HTTP 429", "EOF",
	// "47 content chunks") used to group errors in the report.
	err string
	// badStream marks a 200 stream that failed verification.
	badStream bool
}

func (w *workload) post(ctx context.Context, t *target, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.key != "" {
		req.Header.Set("Authorization", "Bearer "+t.key)
	}
	return w.client.Do(req)
}

// chat sends one non-stream request and reads the whole answer.
func (w *workload) chat(ctx context.Context, t *target, start time.Time) sample {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	resp, err := w.post(ctx, t, w.chatBody)
	if err != nil {
		return sample{err: errClass(err)}
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close() // read-only: closing it loses nothing
	switch {
	case resp.StatusCode != http.StatusOK:
		return sample{err: "HTTP " + strconv.Itoa(resp.StatusCode)}
	case err != nil:
		return sample{err: "read body: " + errClass(err)}
	}
	return sample{lat: time.Since(start)}
}

// chunk is the part of a chat.completion.chunk that the check reads.
type chunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

var (
	dataPrefix = []byte("data:")
	doneEvent  = []byte("[DONE]")
)

// stream sends one streaming request and reads it to the end. Time to first
// token is when the first non-empty content delta arrives (the role delta
// that opens a stream carries no token). The stream passes when it has
// exactly w.tokens content chunks, a usage chunk with as many completion
// tokens, and ends with [DONE].
func (w *workload) stream(ctx context.Context, t *target, start time.Time) sample {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	resp, err := w.post(ctx, t, w.streamBody)
	if err != nil {
		return sample{err: errClass(err)}
	}
	defer func() { _ = resp.Body.Close() }() // read-only: closing it loses nothing
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return sample{err: "HTTP " + strconv.Itoa(resp.StatusCode)}
	}
	var (
		s       sample
		content int
		usage   = -1
	)
	br := bufio.NewReaderSize(resp.Body, 8<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return sample{err: "stream: " + errClass(err), badStream: true}
		}
		data, ok := bytes.CutPrefix(line, dataPrefix)
		if !ok {
			continue // blank separator line, comment or other field
		}
		data = bytes.TrimSpace(data)
		if bytes.Equal(data, doneEvent) {
			break
		}
		var c chunk
		if err := json.Unmarshal(data, &c); err != nil {
			return sample{err: "stream: bad chunk JSON", badStream: true}
		}
		if c.Usage != nil {
			usage = c.Usage.CompletionTokens
		}
		if len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
			if content == 0 {
				s.ttft = time.Since(start)
			}
			content++
		}
	}
	switch {
	case content != w.tokens:
		return sample{err: fmt.Sprintf("stream: %d content chunks, want %d", content, w.tokens), badStream: true}
	case usage != w.tokens:
		return sample{err: fmt.Sprintf("stream: usage completion_tokens %d, want %d", usage, w.tokens), badStream: true}
	}
	s.lat = time.Since(start)
	return s
}

// errClass shortens a transport error to a class worth counting.
func errClass(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed early"
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}
