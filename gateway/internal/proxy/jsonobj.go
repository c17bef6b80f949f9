package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
)

// object is a JSON object held as its members' raw bytes, so the gateway
// can read a few members and rewrite a few others while every other member
// passes to the upstream byte for byte, without decoding and re-encoding
// the whole body. Parsing allocates only for large objects and escaped keys.
type object struct {
	body    []byte
	members []member
	index   map[string]int // by key, once there are more than smallObject members
	inline  [smallObject]member
}

// smallObject is how many members are found by a linear scan; a request
// body has about ten.
const smallObject = 16

type member struct {
	key     []byte // decoded
	raw     []byte // the whole `"key": value` as in the body
	val     []byte // the value's bytes
	changed []byte // replacement value, or nil
	deleted bool
}

var (
	errNotObject     = errors.New("not a JSON object")
	errDuplicateKeys = errors.New("duplicate key")
)

// parseObject splits a body that is already known to be valid JSON into
// its top-level members. Duplicate keys are refused: parsers disagree on
// which one wins, and the gateway must validate what the upstream reads.
// On any other input it returns an error and never panics.
func parseObject(b []byte) (*object, error) {
	o := &object{body: b}
	o.members = o.inline[:0]
	err := eachMember(b, func(key, raw, val []byte) error {
		if o.find(key) >= 0 {
			return errDuplicateKeys
		}
		o.add(member{key: key, raw: raw, val: val})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// eachMember calls fn with every member of the JSON object b: its decoded
// key, the whole member as in b and its value. It stops at fn's first
// error. Input that is not an object gives errNotObject, never a panic.
func eachMember(b []byte, fn func(key, raw, val []byte) error) error {
	return scanMembers(b, func(key []byte, start, valStart, end int) error {
		return fn(key, b[start:end], b[valStart:end])
	})
}

// scanMembers is eachMember by offsets: the member is b[start:end] and its
// value b[valStart:end].
func scanMembers(b []byte, fn func(key []byte, start, valStart, end int) error) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errNotObject
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for i < len(b) {
		start := i
		if b[i] != '"' {
			return errNotObject
		}
		keyEnd := skipString(b, i)
		if keyEnd > len(b) || keyEnd < i+2 || b[keyEnd-1] != '"' {
			return errNotObject
		}
		key := b[i+1 : keyEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if err := json.Unmarshal(b[i:keyEnd], &s); err != nil {
				return err
			}
			key = []byte(s)
		}
		i = skipSpace(b, keyEnd)
		if i >= len(b) || b[i] != ':' {
			return errNotObject
		}
		i = skipSpace(b, i+1)
		valStart := i
		i = skipValue(b, i)
		if i <= valStart || i > len(b) {
			return errNotObject
		}
		if err := fn(key, start, valStart, i); err != nil {
			return err
		}
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		return nil
	}
	return nil
}

// memberSpan finds the top-level members named key in the JSON object b.
// val is the value of the first; deleting b[from:to] removes that member
// with the comma that joins it to a neighbour, leaving the rest of b byte
// for byte; n counts the members so named (more than one only in a body
// that parseObject would refuse). It allocates nothing unless a key is
// escaped.
func memberSpan(b []byte, key string) (val []byte, from, to, n int, err error) {
	prevEnd, pending := -1, false
	err = scanMembers(b, func(k []byte, start, valStart, end int) error {
		if pending {
			to, pending = start, false // the first member: cut up to the next one
		}
		if string(k) == key {
			if n == 0 {
				val = b[valStart:end]
				if prevEnd >= 0 {
					from, to = prevEnd, end
				} else {
					from, to, pending = start, end, true
				}
			}
			n++
		}
		prevEnd = end
		return nil
	})
	if err != nil {
		return nil, 0, 0, 0, err
	}
	return val, from, to, n, nil
}

// find returns the index of the member named key, or -1.
func (o *object) find(key []byte) int {
	if o.index != nil {
		if i, ok := o.index[string(key)]; ok {
			return i
		}
		return -1
	}
	for i := range o.members {
		if bytes.Equal(o.members[i].key, key) {
			return i
		}
	}
	return -1
}

func (o *object) add(m member) {
	o.members = append(o.members, m)
	if o.index == nil && len(o.members) > smallObject {
		o.index = make(map[string]int, 2*len(o.members))
		for i := range o.members {
			o.index[string(o.members[i].key)] = i
		}
	} else if o.index != nil {
		o.index[string(m.key)] = len(o.members) - 1
	}
}

// get returns a member's current value.
func (o *object) get(key string) (json.RawMessage, bool) {
	i := o.find([]byte(key))
	if i < 0 || o.members[i].deleted {
		return nil, false
	}
	if o.members[i].changed != nil {
		return o.members[i].changed, true
	}
	return o.members[i].val, true
}

// set replaces or adds a member.
func (o *object) set(key string, val []byte) {
	if i := o.find([]byte(key)); i >= 0 {
		o.members[i].changed, o.members[i].deleted = val, false
		return
	}
	o.add(member{key: []byte(key), changed: val})
}

// del removes a member.
func (o *object) del(key string) {
	if i := o.find([]byte(key)); i >= 0 {
		o.members[i].deleted = true
	}
}

// encode writes the object: unchanged members as they were.
func (o *object) encode() []byte {
	out := make([]byte, 0, len(o.body)+128)
	out = append(out, '{')
	first := true
	for _, m := range o.members {
		if m.deleted {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		if m.changed == nil {
			out = append(out, m.raw...)
			continue
		}
		out = appendJSONString(out, m.key)
		out = append(out, ':')
		out = append(out, m.changed...)
	}
	return append(out, '}')
}

// appendJSONString appends s as a JSON string.
func appendJSONString(out, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			q, _ := json.Marshal(string(s))
			return append(out, q...)
		}
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"')
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"',
// or len(b) when it does not end. It jumps from quote to quote (IndexByte
// is vectorised; chunks are mostly string bytes): a quote ends the string
// unless an odd run of backslashes precedes it. A run cannot begin before
// from, since b[from-1] is the opening quote or an escaped one.
func skipString(b []byte, i int) int {
	for from := i + 1; from <= len(b); {
		q := bytes.IndexByte(b[from:], '"')
		if q < 0 {
			break
		}
		q += from
		k := q
		for k > from && b[k-1] == '\\' {
			k--
		}
		if (q-k)%2 == 0 {
			return q + 1
		}
		from = q + 1
	}
	return len(b)
}

// skipValue returns the index after the value starting at b[i]. The input
// is valid JSON, so brackets balance and strings end.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		return j
	}
}

// findMember returns the raw value of the top-level member named key in a
// JSON object body, without decoding the other members (e.g. "usage" of a
// completion, whose choices can be large). ok is false when it is not there
// or the body is not an object; the last of repeated members wins.
func findMember(b []byte, key string) (val json.RawMessage, ok bool) {
	err := eachMember(b, func(k, _, v []byte) error {
		if string(k) == key {
			val, ok = v, true
		}
		return nil
	})
	if err != nil {
		return nil, false
	}
	return val, ok
}
