package proxy

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/usage"
)

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark
// measures the gateway's work on a stream, not a recorder's copying.
type discardWriter struct {
	hdr http.Header
	n   int64
}

func (d *discardWriter) Header() http.Header { return d.hdr }
func (d *discardWriter) Write(b []byte) (int, error) {
	d.n += int64(len(b))
	return len(b), nil
}
func (d *discardWriter) WriteHeader(int) {}
func (d *discardWriter) Flush()          {}

// benchStream builds an upstream stream of n content chunks in one of the
// shapes the gateway meets: "sim" ("usage":null on every chunk, then a
// usage-only chunk, as OpenAI and the simulator send), "deepseek" (the
// same, but usage on the finish chunk, as DeepSeek sends) and "bare" (no
// usage member but on the usage-only chunk).
func benchStream(shape string, n int) []byte {
	const head = `{"id":"chatcmpl-0123456789","object":"chat.completion.chunk","created":1746000000,"model":"deepseek-v4-flash","system_fingerprint":"fp_x","choices":`
	const usageObj = `{"prompt_tokens":18,"completion_tokens":200,"total_tokens":218,"prompt_tokens_details":{"cached_tokens":16},"prompt_cache_hit_tokens":16,"prompt_cache_miss_tokens":2}`
	tail := `,"usage":null}`
	if shape == "bare" {
		tail = `}`
	}
	var b bytes.Buffer
	chunk := func(choices, end string) { b.WriteString("data: " + head + choices + end + "\n\n") }
	chunk(`[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]`, tail)
	for i := range n {
		chunk(fmt.Sprintf(`[{"index":0,"delta":{"content":" word%d"},"logprobs":null,"finish_reason":null}]`, i), tail)
	}
	finish := `[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop"}]`
	if shape == "deepseek" {
		chunk(finish, `,"usage":`+usageObj+`}`)
	} else {
		chunk(finish, tail)
		chunk(`[]`, `,"usage":`+usageObj+`}`)
	}
	b.WriteString("data: [DONE]\n\n")
	return b.Bytes()
}

// BenchmarkStream measures the stream path over a whole stream of 200
// content chunks, per shape and per client choice (asked for the usage
// chunk, or not). Bytes/s is upstream bytes relayed; cpu-ns/op is the
// process's CPU time per stream (run with -cpu 1 so that it is the stream
// path's and the garbage collector's alone), steadier than ns/op on a
// machine shared with other work.
func BenchmarkStream(b *testing.B) {
	h := &Handler{Now: time.Now}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	for _, shape := range []string{"sim", "deepseek", "bare"} {
		body := benchStream(shape, 200)
		for _, asked := range []bool{true, false} {
			name := shape + "/" + map[bool]string{true: "asked", false: "hidden"}[asked]
			b.Run(name, func(b *testing.B) {
				req := &chatRequest{stream: true, includeUsage: asked, promptBytes: 40}
				w := &discardWriter{hdr: http.Header{}}
				rd := bytes.NewReader(body)
				ctx := b.Context()
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				cpu0, _ := processCPU()
				for b.Loop() {
					rd.Reset(body)
					ev := &usage.Event{StartedAt: time.Now()}
					h.stream(ctx, w, r, req, rd, ev)
					if ev.UsageSource != usage.SourceReported {
						b.Fatalf("usage not metered: %+v", ev)
					}
				}
				cpu1, _ := processCPU()
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
