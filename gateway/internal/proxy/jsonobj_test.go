package proxy

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"testing"
	"unicode/utf8"
)

func TestObjectRewrite(t *testing.T) {
	in := []byte(` { "model" : "gpt-4o", "x": {"a":[1,"}]"]}, "stream_options":{"include_usage":false}, "s":"q\"uote" } `)
	o, err := parseObject(in)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := o.get("x"); string(v) != `{"a":[1,"}]"]}` {
		t.Errorf("x = %s", v)
	}
	o.set("model", []byte(`"deepseek-v4-flash"`))
	o.del("stream_options")
	o.set("thinking", []byte(`{"type":"enabled"}`))
	out := o.encode()
	want := `{"model":"deepseek-v4-flash","x": {"a":[1,"}]"]},"s":"q\"uote","thinking":{"type":"enabled"}}`
	if string(out) != want {
		t.Errorf("got  %s\nwant %s", out, want)
	}
	for name, bad := range map[string]string{"array": `[1]`, "duplicate": `{"a":1,"a":2}`, "string": `"x"`} {
		if _, err := parseObject([]byte(bad)); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	if v, ok := findMember([]byte(`{"choices":[{"x":"usage"}],"usage":{"prompt_tokens":3}}`), "usage"); !ok || string(v) != `{"prompt_tokens":3}` {
		t.Errorf("findMember = %s %v", v, ok)
	}
}

// FuzzObject: on any input parseObject and memberSpan never panic; on a
// valid JSON object an unchanged encode is the same object, and cutting
// any member's span leaves the same object less that member.
func FuzzObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":{"b":[1,2,{"c":"]"}]},"d":"\\\""}`, `{"a" : null , "b":true}`, `{"`, `{"a"`, `{"a":`, `[]`,
		`{"usage":null}`, `{ "usage" : {"p":1} , "choices":[] }`, `{"choices":[{"delta":{"content":"\\\"usage\\\":{"}}], "usage": null}`,
		`{"us\u0061ge":null,"a":"\\"}`, `{"a":"\\\\\"\\"}`, `"\\\\\\"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for i := range b {
			if b[i] == '"' && skipString(b, i) != skipStringByByte(b, i) {
				t.Fatalf("skipString(%q, %d) = %d, byte by byte %d", b, i, skipString(b, i), skipStringByByte(b, i))
			}
		}
		val, from, to, n, spanErr := memberSpan(b, "usage")
		if spanErr == nil && (from < 0 || from > to || to > len(b)) {
			t.Fatalf("memberSpan of %q: span %d..%d out of range", b, from, to)
		}
		// The stream's shortcut is never wrong in the unsafe direction.
		if found, set := usageHint(b); spanErr == nil && (!found && n > 0 || !set && n > 0 && !isNull(val)) {
			t.Fatalf("usageHint(%q) = %v, %v but usage is %s", b, found, set, val)
		}
		o, err := parseObject(b)
		if err != nil || !json.Valid(b) {
			return
		}
		var want, got map[string]any
		if json.Unmarshal(b, &want) != nil {
			return
		}
		if err := json.Unmarshal(o.encode(), &got); err != nil {
			t.Fatalf("encode of %q is not JSON: %s", b, o.encode())
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("encode changed %q into %s", b, o.encode())
		}
		for _, m := range o.members {
			if !utf8.Valid(m.key) {
				// encoding/json reads such keys as U+FFFD, so two of them
				// are one to it: no map to compare the cut with.
				continue
			}
			val, from, to, n, err := memberSpan(b, string(m.key))
			if err != nil || n != 1 || !bytes.Equal(val, m.val) {
				t.Fatalf("memberSpan(%q, %q) = %s, %d members, %v", b, m.key, val, n, err)
			}
			cut := append(append([]byte{}, b[:from]...), b[to:]...)
			var less map[string]any
			if err := json.Unmarshal(cut, &less); err != nil {
				t.Fatalf("cutting %q from %q gave %q: %v", m.key, b, cut, err)
			}
			wantLess := maps.Clone(want)
			delete(wantLess, string(m.key))
			if !reflect.DeepEqual(less, wantLess) {
				t.Fatalf("cutting %q from %q gave %q", m.key, b, cut)
			}
		}
	})
}

// skipStringByByte is the plain reading of a JSON string that skipString
// must agree with: a backslash escapes the next byte, a quote ends it.
func skipStringByByte(b []byte, i int) int {
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

// TestUsageParseMatchesEncodingJSON: the reflection-free usage reader
// agrees with encoding/json wherever it answers, and leaves the rest to it.
func TestUsageParseMatchesEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":4,
		  "completion_tokens_details":{"reasoning_tokens":9}}`,
		`{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0}}`,
		`{}`,
		`{"prompt_tokens":null,"completion_tokens":3}`,
		`{"prompt_tokens":1.5}`, `{"prompt_tokens":"7"}`, `{"prompt_tokens_details":null}`, `[]`,
		`{"completion_tokens_details":{"reasoning_tokens":-3,"cached_tokens":99}}`,
		`{"prompt_tokens":+5}`, `{"prompt_tokens":05}`, `{"prompt_tokens":-0}`, `{"prompt_tokens":1e3}`,
	} {
		var want upstreamUsage
		wantOK := json.Unmarshal([]byte(in), &want) == nil
		var got upstreamUsage
		if !got.parse([]byte(in)) {
			continue // encoding/json decides these
		}
		if !wantOK || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got  %+v\n want %+v (encoding/json ok=%v)", in, got, want, wantOK)
		}
	}
	var u upstreamUsage
	if !u.parse([]byte(`{"prompt_tokens":12,"completion_tokens":30,"prompt_cache_hit_tokens":8}`)) {
		t.Error("the usual shape fell back to encoding/json")
	}
}
