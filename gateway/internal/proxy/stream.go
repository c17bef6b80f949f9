package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/qyai/qyai/pkg/apierr"
	"github.com/qyai/qyai/pkg/usage"
)

// readers recycles stream read buffers (one per stream would dominate
// allocation otherwise).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

var (
	dataPrefix   = []byte("data:")
	doneMarker   = []byte("[DONE]")
	usageMarker  = []byte(`"usage":{`)
	emptyChoice  = []byte(`"choices":[]`)
	nullUsage    = []byte(`,"usage":null`)
	eventEnd     = []byte("\n\n")
	eventEndCRLF = []byte("\r\n\r\n")
)

// stream relays an SSE response event by event. Each event is flushed as
// soon as its terminating blank line arrives, comments (keep-alives)
// included. Usage is always requested upstream; the usage chunk reaches the
// client only when it asked for it (stream_options.include_usage).
func (h *Handler) stream(ctx context.Context, w http.ResponseWriter, r *http.Request, req *chatRequest, body io.Reader, ev *usage.Event) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Connection", "keep-alive")
	hdr.Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)

	br := readers.Get().(*bufio.Reader)
	br.Reset(body)
	defer func() { br.Reset(nil); readers.Put(br) }()
	var (
		line     []byte
		skipping bool // dropping the current event (a usage chunk the client did not ask for)
		started  bool
		chunks   int64 // content-bearing chunks, for estimates
		sawDone  bool
		writeErr error
	)
	write := func(b []byte) {
		if writeErr != nil {
			return
		}
		// Every write may reach the connection (when the response buffer
		// fills): each gets its own deadline, so a client that stops
		// reading ends the stream within WriteTimeout.
		h.extendWrite(rc)
		if !started {
			started = true
			ev.TTFTMs = h.Now().Sub(ev.StartedAt).Milliseconds()
			w.WriteHeader(http.StatusOK)
		}
		_, writeErr = w.Write(b)
	}
	flush := func() {
		if writeErr == nil && started {
			h.extendWrite(rc)
			writeErr = rc.Flush()
		}
	}

	var readErr error
	maxLine := h.maxEventLine()
	for {
		line, readErr = readLine(br, line[:0], maxLine)
		if errors.Is(readErr, errLineTooLong) || len(line) == 0 && readErr != nil {
			break
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		switch {
		case len(trimmed) == 0: // end of event
			if skipping {
				skipping = false
				continue
			}
			write(line)
			if !eventBuffered(br) {
				flush()
			}
		case trimmed[0] == ':': // comment, e.g. keep-alive
			write(line)
			if !eventBuffered(br) {
				flush()
			}
		case bytes.HasPrefix(trimmed, dataPrefix):
			payload := bytes.TrimSpace(trimmed[len(dataPrefix):])
			if bytes.Equal(payload, doneMarker) {
				sawDone = true
				write(line)
				continue
			}
			if bytes.Contains(payload, usageMarker) {
				var u struct {
					Usage *upstreamUsage `json:"usage"`
				}
				if json.Unmarshal(payload, &u) == nil && u.Usage != nil {
					u.Usage.apply(ev)
					if !req.includeUsage {
						if bytes.Contains(payload, emptyChoice) {
							skipping = true
							continue
						}
						line = stripUsage(payload)
					}
				}
			} else {
				if hasDelta(payload) {
					chunks++
				}
				// Asking upstream for usage makes it add "usage":null to
				// every chunk; a client that did not ask never sees it.
				if !req.includeUsage && bytes.Contains(line, nullUsage) {
					line = bytes.Replace(line, nullUsage, nil, 1)
				}
			}
			write(line)
		default: // event:, id:, retry: fields pass through
			write(line)
		}
		if writeErr != nil {
			break
		}
	}
	flush()

	// failure is what the client is told when the stream did not complete
	// (nil when it completed, or when the client is gone).
	var failure *apierr.Error
	switch {
	case writeErr != nil || r.Context().Err() != nil:
		// The client hung up, or stopped reading until a write ran past
		// its deadline: stop the upstream at once.
		ev.Outcome = usage.OutcomeClientCancelled
		ev.Status = 499
	case errors.Is(readErr, errLineTooLong):
		ev.Outcome = usage.OutcomeUpstreamError
		failure = apierr.Upstream("the upstream model provider sent an event line longer than the gateway's limit of " +
			strconv.Itoa(maxLine) + " bytes").WithCode("upstream_line_too_long")
	case readErr != nil && !errors.Is(readErr, io.EOF):
		ev.Outcome = outcomeOf(ctx)
		if ev.Outcome == usage.OutcomeClientCancelled {
			ev.Status = 499
		} else {
			failure = readFailure(ctx)
		}
	case !sawDone && ev.UsageSource == usage.SourceNone:
		ev.Outcome = usage.OutcomeUpstreamError
		failure = apierr.Upstream("the connection to the upstream model provider broke")
	default:
		ev.Outcome = usage.OutcomeCompleted
		ev.Status = http.StatusOK
	}
	if failure != nil {
		ev.Status, ev.ErrorType = failure.Status, failure.Type
	}
	if failure != nil && writeErr == nil && !sawDone {
		if started {
			// Tell an SDK that the stream failed rather than ending silently.
			write([]byte("data: " + string(failure.JSON()) + "\n\n"))
			flush()
		} else {
			// Nothing reached the client: it gets a plain error answer.
			for _, k := range []string{"Content-Type", "Cache-Control", "Connection", "X-Accel-Buffering"} {
				hdr.Del(k)
			}
			failure.Write(w)
		}
	}
	switch {
	case ev.Outcome == usage.OutcomeClientCancelled:
		// Before the first content chunk too: the prompt was read.
		billHangUp(ev, req, chunks)
	case ev.UsageSource == usage.SourceNone && chunks > 0:
		estimate(ev, req.promptBytes, chunks)
	}
}

// eventBuffered reports whether a whole further event has already arrived
// from the upstream. Events that arrived together then go out in one write;
// an event is never held back waiting for one that has not fully arrived.
func eventBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := br.Peek(n)
	return bytes.Contains(b, eventEnd) || bytes.Contains(b, eventEndCRLF)
}

// errLineTooLong ends a stream whose upstream sent a line over the limit:
// without a bound, one endless line would grow the buffer until the
// process runs out of memory.
var errLineTooLong = errors.New("upstream event line too long")

// readLine appends one line (with its newline) to buf, or returns
// errLineTooLong once the line would exceed limit bytes.
func readLine(br *bufio.Reader, buf []byte, limit int) ([]byte, error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > limit {
			return buf, errLineTooLong
		}
		buf = append(buf, frag...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return buf, err
	}
}

// hasDelta reports whether a chunk carries generated text (content,
// reasoning or tool-call arguments), so that a cut stream can be estimated.
func hasDelta(payload []byte) bool {
	for _, k := range [][]byte{[]byte(`"content":"`), []byte(`"reasoning_content":"`), []byte(`"arguments":"`)} {
		if i := bytes.Index(payload, k); i >= 0 && i+len(k) < len(payload) && payload[i+len(k)] != '"' {
			return true
		}
	}
	return false
}

// stripUsage removes the usage object from a chunk that also carries
// choices (DeepSeek may attach usage to the finish chunk), in place and
// without re-encoding: usage holds only numeric fields and nested objects
// of them (no string values that could contain braces), so the matching
// brace is found by counting.
func stripUsage(payload []byte) []byte {
	line := append([]byte("data: "), payload...)
	i := bytes.Index(line, []byte(`,"usage":{`))
	if i < 0 {
		return append(line, '\n')
	}
	depth := 0
	for j := i + len(`,"usage":`); j < len(line); j++ {
		switch line[j] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				line = append(line[:i], line[j+1:]...)
				return append(line, '\n')
			}
		}
	}
	return append(line, '\n')
}
