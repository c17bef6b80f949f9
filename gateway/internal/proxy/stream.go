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
	dataPrefix    = []byte("data:")
	doneMarker    = []byte("[DONE]")
	usageKey      = []byte(`"usage"`)
	unicodeEscape = []byte(`\u`)
	nullJSON      = []byte("null")
	emptyArray    = []byte("[]")
	eventEnd      = []byte("\n\n")
	eventEndCRLF  = []byte("\r\n\r\n")
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
			rest := trimmed[len(dataPrefix):]
			lead := bytes.TrimLeft(rest, " \t")
			payload := bytes.TrimRight(lead, " \t")
			if bytes.Equal(payload, doneMarker) {
				sawDone = true
				write(line)
				continue
			}
			if hasDelta(payload) {
				chunks++
			}
			// A null usage is left as it is for a client that asked.
			if found, set := usageHint(payload); set || found && !req.includeUsage {
				var drop bool
				off := len(dataPrefix) + len(rest) - len(lead)
				if line, drop = showUsage(line, off, len(payload), req.includeUsage, ev); drop {
					skipping = true
					continue
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

// usageHint tells, from the bytes alone, what a chunk's top-level usage
// member can be, so that most chunks pass without being parsed: found is
// false when there can be none (no JSON text names one without `"usage"`
// or an escape such as \u0075sage), set false when it can only be null
// (every `"usage"` is followed by `: null`). Both are only ever wrong in
// the safe direction; showUsage decides with the object scanner.
func usageHint(payload []byte) (found, set bool) {
	if bytes.Contains(payload, unicodeEscape) {
		return true, true
	}
	for i := 0; ; {
		j := bytes.Index(payload[i:], usageKey)
		if j < 0 {
			return found, false
		}
		found = true
		i += j + len(usageKey)
		k := skipSpace(payload, i)
		if k >= len(payload) || payload[k] != ':' {
			return true, true
		}
		k = skipSpace(payload, k+1)
		if !bytes.HasPrefix(payload[k:], nullJSON) {
			return true, true
		}
		if k += len(nullJSON); k < len(payload) && payload[k] != ',' && payload[k] != '}' && skipSpace(payload, k) == k {
			return true, true // null0, nullx: not null
		}
	}
}

// showUsage meters the usage member of the chunk line[off:off+n], if any,
// and returns what the client is shown in its place, in OpenAI's shape
// whatever the upstream's: with include_usage, the usage comes last, in a
// chunk of its own with "choices":[] (DeepSeek's usage on the finish chunk
// is split off into one, the finish chunk keeping "usage":null); without
// it, no chunk has a usage member at all, and a usage-only chunk is
// dropped (drop: the whole event). Members other than usage and choices
// keep their bytes; choices is never re-encoded. Cutting a usage member
// happens in place, without allocating.
func showUsage(line []byte, off, n int, include bool, ev *usage.Event) (out []byte, drop bool) {
	payload := line[off : off+n]
	val, from, to, count, err := memberSpan(payload, "usage")
	switch {
	case err != nil || count == 0:
		return line, false // not an object (the client sees what came), or a false alarm
	case count == 1 && isNull(val):
		if include {
			return line, false
		}
		return append(line[:off+from], line[off+to:]...), false
	}

	var u upstreamUsage
	metered := !isNull(val) && (u.parse(val) || json.Unmarshal(val, &u) == nil)
	if metered {
		u.apply(ev)
	}
	choices, _, _, _, _ := memberSpan(payload, "choices")
	noChoices := choices == nil || isNull(choices)
	usageOnly := noChoices || isEmptyArray(choices)
	switch {
	case include && (usageOnly && !noChoices || !metered || count > 1):
		// Repeated usage members are never split: no two client parsers
		// agree on which one wins.
		return line, false
	case !include && usageOnly:
		return nil, true
	case !include:
		return cutAll(line, off, n, from, to, count), false
	}
	o, err := parseObject(payload)
	if err != nil {
		return line, false // other repeated members: as it came
	}
	eol := line[len(bytes.TrimRight(line, "\r\n")):]
	if len(eol) == 0 {
		eol = []byte("\n") // the last line of a stream cut short
	}
	if noChoices {
		// A usage chunk without choices: SDKs read "choices":[].
		o.set("choices", emptyArray)
		return frame(nil, o.encode(), eol), false
	}
	// DeepSeek's shape: usage on the finish chunk. The client gets the
	// finish chunk with "usage":null, then a usage chunk made of the same
	// members with "choices":[].
	o.set("usage", nullJSON)
	out = frame(nil, o.encode(), eol)
	out = append(out, eol...)
	o.set("choices", emptyArray)
	o.set("usage", val)
	return frame(out, o.encode(), eol), false
}

// cutAll deletes every usage member from the chunk line[off:off+n], in
// place; the first is at payload[from:to] and there are count of them.
func cutAll(line []byte, off, n, from, to, count int) []byte {
	for count > 0 {
		line = append(line[:off+from], line[off+to:]...)
		n -= to - from
		_, from, to, count, _ = memberSpan(line[off:off+n], "usage")
	}
	return line
}

// frame appends the data line of one chunk to out.
func frame(out, chunk, eol []byte) []byte {
	out = append(out, "data: "...)
	out = append(out, chunk...)
	return append(out, eol...)
}

// isEmptyArray reports whether a JSON value is [] (spaces allowed).
func isEmptyArray(v []byte) bool {
	v = bytes.TrimSpace(v)
	return len(v) >= 2 && v[0] == '[' && len(bytes.TrimSpace(v[1:len(v)-1])) == 0 && v[len(v)-1] == ']'
}
