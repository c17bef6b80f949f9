package spool

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// On-disk names inside the spool directory.
const (
	segPrefix  = "seg-"
	segSuffix  = ".log"
	offsetName = "offset"
	offsetTmp  = "offset.tmp"
	lockName   = "LOCK"
)

// frameOverhead is the bytes a frame adds to its payload: eight hex digits
// of CRC, a space and a newline.
const frameOverhead = 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errMalformed = errors.New("malformed record")
	errChecksum  = errors.New("checksum mismatch")
	errTorn      = errors.New("torn record (no newline before the end of the data)")
)

// appendFrame appends one record line: the CRC-32C of payload as eight
// lowercase hex digits, a space, payload, a newline. payload must not
// contain a newline (JSON never does).
func appendFrame(dst, payload []byte) []byte {
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum(payload, castagnoli))
	dst = hex.AppendEncode(dst, sum[:])
	dst = append(dst, ' ')
	dst = append(dst, payload...)
	return append(dst, '\n')
}

// parseFrame checks one line (without its newline) and returns its payload.
func parseFrame(line []byte) ([]byte, error) {
	if len(line) < frameOverhead || line[8] != ' ' {
		return nil, errMalformed
	}
	var sum [4]byte
	if _, err := hex.Decode(sum[:], line[:8]); err != nil {
		return nil, errMalformed
	}
	payload := line[9:]
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(sum[:]) {
		return nil, errChecksum
	}
	return payload, nil
}

func segName(seq uint64) string { return fmt.Sprintf("%s%016d%s", segPrefix, seq, segSuffix) }

func parseSegName(name string) (uint64, bool) {
	if !strings.HasPrefix(name, segPrefix) || !strings.HasSuffix(name, segSuffix) {
		return 0, false
	}
	seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, segPrefix), segSuffix), 10, 64)
	return seq, err == nil && seq > 0
}

// Pos is a position in the spool: a byte offset in a segment.
type Pos struct {
	Seg uint64 `json:"segment"`
	Off int64  `json:"offset"`
}

// Less reports whether p comes before q.
func (p Pos) Less(q Pos) bool { return p.Seg < q.Seg || (p.Seg == q.Seg && p.Off < q.Off) }

// writeOffset replaces the offset file atomically: a temporary file is
// written and fsynced, renamed over the old one, and the directory fsynced.
func writeOffset(dir string, p Pos) error {
	b, _ := json.Marshal(p)
	tmp := filepath.Join(dir, offsetTmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, offsetName)); err != nil {
		return err
	}
	return syncDir(dir)
}

// readOffset reads the offset file; a missing file is the zero position.
func readOffset(dir string) (Pos, error) {
	b, err := os.ReadFile(filepath.Join(dir, offsetName))
	if errors.Is(err, os.ErrNotExist) {
		return Pos{}, nil
	}
	if err != nil {
		return Pos{}, err
	}
	var p Pos
	if err := json.Unmarshal(b, &p); err != nil {
		return Pos{}, fmt.Errorf("parse %s: %w", offsetName, err)
	}
	if p.Off < 0 {
		return Pos{}, fmt.Errorf("parse %s: negative offset", offsetName)
	}
	return p, nil
}

// syncDir fsyncs a directory so that a created, renamed or removed entry
// survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
