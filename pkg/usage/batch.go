package usage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// A usage message (one JetStream message on Subject, or one record of the
// gateway's spool) holds either one event, encoded as a JSON object, or a
// batch of two or more, encoded as a JSON array of those objects. Batches
// exist because what NATS, the publisher and the meter spend is per
// message: a gateway that sends the events of one moment together pays one
// publish, one stored message, one delivery and one ack for all of them.
//
// A batch is formed once, by one gateway, and never re-formed: when its
// publish is not acknowledged it is spooled and replayed as the same bytes
// under the same message id (BatchID), so JetStream's duplicate window
// drops a second copy of a batch exactly as it drops a second copy of an
// event. A single event keeps its event id as the message id.

// MaxBatch is the most events a gateway puts in one message.
const MaxBatch = 64

// ErrEmptyBatch means a usage message is an empty JSON array.
var ErrEmptyBatch = errors.New("usage message is an empty batch")

// Message builds one usage message event by event: the one place that
// frames a batch and names a message. Its bytes are handed over, so build
// each message with a Message of its own.
type Message struct {
	buf         []byte // '[' and the events so far, separated by commas
	n           int
	first, last string
}

// NewMessage returns an empty message with room for about n events.
func NewMessage(n int) *Message {
	m := &Message{buf: make([]byte, 1, 2+n*640)}
	m.buf[0] = '['
	return m
}

// Add appends e; on an error (an event encoding/json refuses) m is as it
// was.
func (m *Message) Add(e *Event) error {
	mark := len(m.buf)
	if m.n > 0 {
		m.buf = append(m.buf, ',')
	}
	b, err := e.AppendJSON(m.buf)
	if err != nil {
		m.buf = m.buf[:mark]
		return err
	}
	m.buf = b
	if m.n == 0 {
		m.first = e.ID
	}
	m.last = e.ID
	m.n++
	return nil
}

// Len is the number of events added.
func (m *Message) Len() int { return m.n }

// Bytes returns the message and its Nats-Msg-Id: one event alone, as its
// object under its event id; more as a batch under BatchID. Call it once,
// when Len is positive.
func (m *Message) Bytes() (data []byte, id string) {
	if m.n == 1 {
		return m.buf[1:], m.first
	}
	return append(m.buf, ']'), BatchID(m.first, m.last, m.n)
}

// BatchID is the message id of a batch of n events whose first and last
// event ids are first and last. Event ids are unique and a batch is never
// re-formed, so no two batches share an id, and every copy of one batch
// has the same id.
func BatchID(first, last string, n int) string {
	return "batch:" + strconv.Itoa(n) + ":" + first + ":" + last
}

// IsBatch reports whether the usage message data is a batch rather than
// one event.
func IsBatch(data []byte) bool {
	data = bytes.TrimLeft(data, " \t\r\n")
	return len(data) > 0 && data[0] == '['
}

// Split returns the encoded events of the usage message data: data itself
// for one event, the elements of the array for a batch (which must not be
// empty). It does not decode the events; Decode does.
func Split(data []byte) ([][]byte, error) {
	if !IsBatch(data) {
		return [][]byte{data}, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: batch: %w", ErrInvalid, err)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, ErrEmptyBatch)
	}
	out := make([][]byte, len(raw))
	for i, r := range raw {
		out[i] = r
	}
	return out, nil
}

// Count is the number of events in the usage message data: 1 for one
// event (or for bytes that are not a message at all, so that a damaged
// record still counts), the array's length for a batch.
func Count(data []byte) int {
	if !IsBatch(data) {
		return 1
	}
	evs, err := Split(data)
	if err != nil {
		return 1
	}
	return len(evs)
}
