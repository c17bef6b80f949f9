package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
)

// object is a JSON object held as its members' raw bytes, so the gateway
// can read a few members and rewrite a few others while every other member
// passes to the upstream byte for byte, without decoding and re-encoding
// the whole body.
type object struct {
	body    []byte
	members []member
	index   map[string]int
	added   []string // keys set that were not in the body, in order
}

type member struct {
	key     string
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
func parseObject(b []byte) (*object, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errNotObject
	}
	o := &object{body: b, index: map[string]int{}}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return o, nil
	}
	for i < len(b) {
		start := i
		if b[i] != '"' {
			return nil, errNotObject
		}
		keyEnd := skipString(b, i)
		if keyEnd > len(b) || keyEnd < i+2 || b[keyEnd-1] != '"' {
			return nil, errNotObject
		}
		var key string
		if bytes.IndexByte(b[i+1:keyEnd-1], '\\') >= 0 {
			if err := json.Unmarshal(b[i:keyEnd], &key); err != nil {
				return nil, err
			}
		} else {
			key = string(b[i+1 : keyEnd-1])
		}
		i = skipSpace(b, keyEnd)
		if i >= len(b) || b[i] != ':' {
			return nil, errNotObject
		}
		i = skipSpace(b, i+1)
		valStart := i
		i = skipValue(b, i)
		if i <= valStart || i > len(b) {
			return nil, errNotObject
		}
		if _, dup := o.index[key]; dup {
			return nil, errDuplicateKeys
		}
		o.index[key] = len(o.members)
		o.members = append(o.members, member{key: key, raw: b[start:i], val: b[valStart:i]})
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		break
	}
	return o, nil
}

// get returns a member's current value.
func (o *object) get(key string) (json.RawMessage, bool) {
	i, ok := o.index[key]
	if !ok || o.members[i].deleted {
		return nil, false
	}
	if o.members[i].changed != nil {
		return o.members[i].changed, true
	}
	return o.members[i].val, true
}

// set replaces or adds a member.
func (o *object) set(key string, val []byte) {
	if i, ok := o.index[key]; ok {
		o.members[i].changed, o.members[i].deleted = val, false
		return
	}
	o.index[key] = len(o.members)
	o.members = append(o.members, member{key: key, changed: val})
	o.added = append(o.added, key)
}

// del removes a member.
func (o *object) del(key string) {
	if i, ok := o.index[key]; ok {
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
		k, _ := json.Marshal(m.key)
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, m.changed...)
	}
	return append(out, '}')
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
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
// or the body is not an object.
func findMember(b []byte, key string) (json.RawMessage, bool) {
	o, err := parseObject(b)
	if err != nil {
		return nil, false
	}
	return o.get(key)
}
