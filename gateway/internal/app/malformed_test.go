package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/qyai/qyai/gateway/internal/config"
	"github.com/qyai/qyai/pkg/apikey"
)

// malformed returns the i-th malformed request: broken or truncated JSON,
// wrong types, out-of-range values, hostile shapes, bad headers, methods
// and paths. Deterministic, so a failure can be replayed.
func malformed(r *rand.Rand, key string, i int) (method, path string, hdr http.Header, body []byte) {
	valid := `{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"stop":["x"],"max_tokens":10,"stream":false}`
	hdr = http.Header{"Authorization": {"Bearer " + key}, "Content-Type": {"application/json"}}
	method, path = http.MethodPost, "/v1/chat/completions"
	switch i % 16 {
	case 0: // truncated
		body = []byte(valid[:r.IntN(len(valid))])
	case 1: // random bytes
		body = make([]byte, r.IntN(512))
		for j := range body {
			body[j] = byte(r.IntN(256))
		}
	case 2: // one byte flipped
		b := []byte(valid)
		b[r.IntN(len(b))] = byte(r.IntN(256))
		body = b
	case 3: // wrong types for every known field
		fields := []string{"model", "messages", "temperature", "top_p", "stop", "max_tokens", "stream", "stream_options", "thinking", "presence_penalty", "frequency_penalty"}
		vals := []string{`null`, `true`, `-1`, `1e309`, `"s"`, `[]`, `{}`, `[1,2]`, `{"a":1}`, `1.5`, `"\u0000"`, `99999999999999999999`}
		f, v := fields[r.IntN(len(fields))], vals[r.IntN(len(vals))]
		body = []byte(strings.Replace(valid, `{`, `{"`+f+`":`+v+`,`, 1))
	case 4: // deep nesting
		n := 1 + r.IntN(100000)
		body = []byte(`{"model":"deepseek-v4-flash","messages":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	case 5: // bad messages
		msgs := []string{`[{}]`, `[{"role":5}]`, `[null]`, `[{"role":"root","content":"x"}]`, `["hi"]`, `{"role":"user"}`, `[{"role":"assistant","reasoning_content":{"x":1}}]`}
		body = []byte(`{"model":"deepseek-v4-flash","messages":` + msgs[r.IntN(len(msgs))] + `}`)
	case 6: // bad auth headers
		hs := []string{"", "Bearer", "Bearer ", "Basic abc", "Bearer sk-", "Bearer sk-" + strings.Repeat("é", 40), "bearer " + key + "x", "Bearer " + strings.Repeat("A", 10000)}
		hdr.Set("Authorization", hs[r.IntN(len(hs))])
		body = []byte(valid)
	case 7: // wrong method or path
		ms := []string{"GET", "PUT", "DELETE", "PATCH", "OPTIONS"}
		ps := []string{"/v1/chat/completions", "/v1/chat/completions/", "/v1/completions", "/v2/chat", "/", "/v1/models/../../etc/passwd", "/v1//chat"}
		method, path = ms[r.IntN(len(ms))], ps[r.IntN(len(ps))]
		body = []byte(valid)
	case 8: // invalid UTF-8 inside strings
		body = []byte(strings.Replace(valid, `"hi"`, "\"\xff\xfe\xfd\"", 1))
	case 9: // empty and whitespace bodies
		bs := []string{"", " ", "\n\n", "{}", "[]", "null", "0", `""`}
		body = []byte(bs[r.IntN(len(bs))])
	case 10: // out-of-range numbers
		fs := []string{`"temperature":3`, `"top_p":-0.1`, `"max_tokens":0`, `"max_tokens":-5`, `"max_tokens":1e12`, `"presence_penalty":9`, `"stop":["a","b","c","d","e"]`, `"temperature":NaN`}
		body = []byte(strings.Replace(valid, `{`, `{`+fs[r.IntN(len(fs))]+`,`, 1))
	case 11: // unknown model ids
		body = []byte(strings.Replace(valid, "deepseek-v4-flash", fmt.Sprintf("m-%d\\u0000", r.IntN(1000)), 1))
	case 12: // duplicate keys
		body = []byte(`{"model":"deepseek-v4-flash","model":7,"messages":[],"messages":"x"}`)
	case 13: // body over the limit
		body = bytes.Repeat([]byte("a"), 70<<10)
	case 14: // wrong content type, valid body otherwise broken
		hdr.Set("Content-Type", "text/plain")
		body = []byte(valid[:len(valid)-1])
	default: // huge string values and many fields
		var b strings.Builder
		b.WriteString(`{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"x"}]`)
		for j := range 200 {
			fmt.Fprintf(&b, `,"f%d":%d`, j, j)
		}
		b.WriteString(`,"temperature":"` + strings.Repeat("9", 1000) + `"}`)
		body = []byte(b.String())
	}
	return method, path, hdr, body
}

// TestTenThousandMalformedRequests sends 10,000 malformed requests: none
// may get a 5xx and every error must be an OpenAI error body. Some
// mutations happen to produce valid requests (a flipped byte inside a
// string, a wrong-type value that is legal for that field); those may pass,
// but whatever reached the upstream must be something the upstream itself
// accepted: the gateway forwards no bad input.
func TestTenThousandMalformedRequests(t *testing.T) {
	h := startGateway(t, func(c *config.Config) { c.MaxBodyBytes = 64 << 10 })
	key := h.addKeyWith(t, "key_fuzz", func(r *apikey.Record) { r.RPM, r.MonthlyLimit = 1_000_000, 1_000_000_000 })
	const total, workers = 10000, 8
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var mu sync.Mutex
	statuses := map[int]int{}
	var failures []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for i := w; i < total; i += workers {
				method, path, hdr, body := malformed(r, key, i)
				req, err := http.NewRequest(method, h.url+path, bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				req.Header = hdr
				resp, err := client.Do(req)
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("#%d %s %s: %v", i, method, path, err))
					mu.Unlock()
					continue
				}
				rb, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				var e struct {
					Error *struct {
						Type    string `json:"type"`
						Message string `json:"message"`
					} `json:"error"`
				}
				bad := resp.StatusCode >= 500 ||
					(resp.StatusCode >= 400 && (json.Unmarshal(rb, &e) != nil || e.Error == nil || e.Error.Type == "" || e.Error.Message == "")) ||
					resp.Header.Get("X-Request-Id") == ""
				if resp.Header.Get("X-Error-Source") == "upstream" {
					bad = true
				}
				mu.Lock()
				statuses[resp.StatusCode]++
				if bad && len(failures) < 20 {
					failures = append(failures, fmt.Sprintf("#%d %s %s %q -> %d %s", i, method, path, truncate(body, 120), resp.StatusCode, truncate(rb, 200)))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("statuses: %v", statuses)
	for _, f := range failures {
		t.Error(f)
	}
	n := 0
	for s, c := range statuses {
		n += c
		if s >= 500 {
			t.Errorf("%d responses with status %d", c, s)
		}
	}
	if n != total {
		t.Errorf("%d responses for %d requests", n, total)
	}
	st := h.sim.Stats()
	if int(st.Requests) != statuses[200] {
		t.Errorf("upstream saw %d requests, gateway answered 200 to %d", st.Requests, statuses[200])
	}
	for s, c := range st.ByStatus {
		if s != "200" {
			t.Errorf("upstream answered %s to %d forwarded requests: the gateway forwarded bad input", s, c)
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
