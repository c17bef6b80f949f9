package spool

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// chunkBytes is how much a Reader reads at once; a whole record always fits.
const chunkBytes = 2 * MaxRecordBytes

// Entry is one step of a Reader: a record, or damaged bytes skipped.
type Entry struct {
	// Data is the record's payload; nil when the entry stands for damaged
	// bytes that were skipped (and logged and counted).
	Data []byte
	// Next is the position after the entry: what to Commit once the entry
	// was delivered.
	Next Pos
	// Count is the items the record holds (Options.Count); 0 for damaged
	// bytes.
	Count int
}

// Reader reads a spool's fsynced records in order, from the committed
// position. It may run ahead of the committed position (records sent and
// not yet acknowledged); Rewind goes back to it.
type Reader struct {
	s        *Spool
	pos      Pos
	f        *os.File
	fseq     uint64
	buf      []byte // file bytes from bufOff; buf[i:] not yet returned
	bufOff   int64
	i        int
	quiet    bool // counting at Open: do not report damage
	reported Pos  // damage before this was already reported
}

// NewReader returns a reader at the committed position.
func (s *Spool) NewReader() *Reader { return &Reader{s: s, pos: s.Committed()} }

// Rewind moves the reader back to the committed position.
func (r *Reader) Rewind() {
	r.pos = r.s.Committed()
	r.buf, r.i = nil, 0
}

// Close releases the reader's file.
func (r *Reader) Close() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

// Next returns the next entry, or ok false when every readable record
// was returned. An error is an I/O failure; calling Next later retries.
func (r *Reader) Next() (e Entry, ok bool, err error) {
	for {
		if r.i < len(r.buf) {
			rest := r.buf[r.i:]
			if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
				start := r.pos.Off
				r.i += nl + 1
				r.pos.Off = r.bufOff + int64(r.i)
				payload, err := parseFrame(rest[:nl])
				if err != nil {
					r.damaged(start, err)
					return Entry{Next: r.pos}, true, nil
				}
				return Entry{Data: payload, Next: r.pos, Count: r.s.o.Count(payload)}, true, nil
			}
			r.buf, r.i = nil, 0 // a partial line: read again from its start
		}
		g, found := r.s.locate(r.pos.Seg)
		if !found {
			return Entry{}, false, nil
		}
		if g.seq != r.pos.Seg {
			r.pos = Pos{Seg: g.seq}
		}
		if r.pos.Off >= g.size {
			if !g.sealed {
				return Entry{}, false, nil
			}
			r.pos = Pos{Seg: g.seq + 1}
			continue
		}
		if err := r.open(g.seq); err != nil {
			if errors.Is(err, fs.ErrNotExist) { // committed and deleted meanwhile
				r.pos = Pos{Seg: g.seq + 1}
				continue
			}
			return Entry{}, false, err
		}
		buf := make([]byte, min(g.size-r.pos.Off, chunkBytes))
		n, err := r.f.ReadAt(buf, r.pos.Off)
		if err != nil && !errors.Is(err, io.EOF) {
			return Entry{}, false, err
		}
		buf = buf[:n]
		if bytes.IndexByte(buf, '\n') < 0 {
			// No record ends here: a tail torn by a crash, or garbage
			// longer than any record. Skip it.
			start := r.pos.Off
			r.pos.Off += int64(n)
			if n == 0 { // the file is shorter than recorded
				r.pos.Off = g.size
			}
			r.damaged(start, errTorn)
			return Entry{Next: r.pos}, true, nil
		}
		r.buf, r.bufOff, r.i = buf, r.pos.Off, 0
	}
}

func (r *Reader) open(seq uint64) error {
	if r.f != nil && r.fseq == seq {
		return nil
	}
	r.Close()
	f, err := os.Open(filepath.Join(r.s.o.Dir, segName(seq)))
	if err != nil {
		return err
	}
	r.f, r.fseq = f, seq
	return nil
}

// damaged reports bytes from start to the reader's position that hold no
// valid record, once even when a Rewind reads them again.
func (r *Reader) damaged(start int64, why error) {
	from := Pos{Seg: r.pos.Seg, Off: start}
	if r.quiet || from.Less(r.reported) {
		return
	}
	r.reported = r.pos
	r.s.corrupt.Add(1)
	r.s.dropped.Add(1)
	r.s.log.Warn("usage spool: damaged record skipped (a crash mid-write, or disk damage)",
		"dir", r.s.o.Dir, "segment", r.pos.Seg, "offset", start, "bytes", r.pos.Off-start, "reason", why.Error())
}
