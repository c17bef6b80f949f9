package upstreamsim

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const benchBody = `{"model":"deepseek-v4-flash","messages":[{"role":"system","content":"You are a helpful assistant."},` +
	`{"role":"user","content":"Explain quantum computing in one paragraph."}],"temperature":0.7}`

// BenchmarkHandler measures the handler alone, without the network.
func BenchmarkHandler(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"non-stream", benchBody},
		{"stream", strings.Replace(benchBody, `"temperature"`, `"stream":true,"stream_options":{"include_usage":true},"temperature"`, 1)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := New(Config{})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest(http.MethodPost, "/chat/completions", strings.NewReader(bc.body))
					w := httptest.NewRecorder()
					s.ServeHTTP(w, req)
					if w.Code != http.StatusOK {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
		})
	}
}

// BenchmarkHTTP measures small non-stream requests over loopback HTTP/1.1
// with keep-alive, as the gateway benchmarks use the simulator.
func BenchmarkHTTP(b *testing.B) {
	ts := httptest.NewServer(New(Config{}))
	defer ts.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(ts.URL+"/chat/completions", "application/json", strings.NewReader(benchBody))
			if err != nil {
				b.Fatalf("post: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}
