package upstreamsim

import (
	"strconv"
	"unicode/utf8"
)

// The words answers and reasoning are made of, cycled one per token. They
// hold no character that JSON escapes, though the code does not rely on it.
const (
	answerText = "This is a simulated answer from the QYAI upstream simulator, deterministic and cheap to produce."
	thinkText  = "Let me think about the question step by step before I answer it."
)

// JSON wrappers of JSON-mode answers and of tool-call arguments.
const (
	jsonAnswerOpen = `{"answer":"`
	jsonToolOpen   = `{"input":"`
	jsonClose      = `"}`
	jsonEmpty      = `{}`
)

// appendPiece appends token i of n: a word, preceded by a space after the
// first, and, when open is not empty, wrapped so that the concatenation of all
// n pieces is the JSON object open + words + jsonClose. With esc the piece is
// escaped for the inside of a JSON string.
func appendPiece(dst []byte, words []string, i, n int, open string, esc bool) []byte {
	add := func(dst []byte, s string) []byte {
		if esc {
			return appendEscaped(dst, s)
		}
		return append(dst, s...)
	}
	if i == 0 {
		dst = add(dst, open)
	} else {
		dst = append(dst, ' ')
	}
	dst = add(dst, words[i%len(words)])
	if open != "" && i == n-1 {
		dst = add(dst, jsonClose)
	}
	return dst
}

// appendText appends n tokens, escaped for the inside of a JSON string.
func appendText(dst []byte, words []string, n int, open string) []byte {
	if n == 0 && open != "" {
		return append(dst, jsonEmpty...)
	}
	for i := range n {
		dst = appendPiece(dst, words, i, n, open, true)
	}
	return dst
}

func appendInt(dst []byte, n int64) []byte { return strconv.AppendInt(dst, n, 10) }

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = appendEscaped(dst, s)
	return append(dst, '"')
}

// appendEscaped appends s escaped for the inside of a JSON string; invalid
// UTF-8 becomes U+FFFD as encoding/json does.
func appendEscaped(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(dst, s[start:]...)
}

// appendUsage appends a DeepSeek usage object.
func appendUsage(b []byte, u usage) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = appendInt(b, int64(u.prompt))
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, int64(u.completion))
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, int64(u.prompt+u.completion))
	b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
	b = appendInt(b, int64(u.hit))
	b = append(b, `},"completion_tokens_details":{"reasoning_tokens":`...)
	b = appendInt(b, int64(u.reasoning))
	b = append(b, `},"prompt_cache_hit_tokens":`...)
	b = appendInt(b, int64(u.hit))
	b = append(b, `,"prompt_cache_miss_tokens":`...)
	b = appendInt(b, int64(u.miss))
	return append(b, '}')
}
