// Package cachebench measures cache-aware upstream routing. A workload of
// conversations, each of several turns that repeat the whole history as
// clients do, goes through every gateway given (one routing with affinity,
// one by round robin, both in front of the same simulator holding one
// prompt cache per upstream key); the simulator's caches are emptied
// before each. It sums the usage the gateway relayed (what it meters) and
// prices it with the shipped price table, so the table shows the cache-hit
// ratio and what the same work costs with and without affinity.
//
// Every conversation shares one system prompt, as the users of one
// application do, then opens with a document of its own; later turns are
// short questions. Round robin still hits the shared system prompt once
// every key has seen it: the difference is the conversation's own history.
package cachebench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/qyai/qyai/pkg/pricing"
)

// Target is one gateway to measure.
type Target struct {
	Name, URL string
}

// Config is the workload.
type Config struct {
	Targets       []Target
	Key           string // the gateway API key
	Sim           string // the simulator's base URL, for /_sim/reset
	Model         string
	Conversations int
	Turns         int
	Concurrency   int
	Command       string // how to reproduce, printed under the table
}

// Result is what one target used.
type Result struct {
	Target                        Target
	Requests, Errors              int
	Prompt, Hit, Miss, Completion int64
	Cost, InputCost, NoCacheCost  pricing.NanoUSD
	Elapsed                       time.Duration
}

// HitRatio is the share of prompt tokens served from the cache.
func (r Result) HitRatio() float64 {
	if r.Prompt == 0 {
		return 0
	}
	return float64(r.Hit) / float64(r.Prompt)
}

// Main parses args and runs the workload, printing the table on stdout.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cachebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var targets string
	fs.StringVar(&targets, "targets", "", "comma-separated name=URL of gateways, e.g. affinity=http://127.0.0.1:8080,round-robin=http://127.0.0.1:8180")
	fs.StringVar(&cfg.Key, "key", "", "gateway API key")
	fs.StringVar(&cfg.Sim, "sim", "", "simulator base URL (its caches are reset before each target)")
	fs.StringVar(&cfg.Model, "model", "deepseek-v4-flash", "model")
	fs.IntVar(&cfg.Conversations, "conversations", 200, "conversations per target")
	fs.IntVar(&cfg.Turns, "turns", 5, "turns per conversation")
	fs.IntVar(&cfg.Concurrency, "concurrency", 8, "conversations in flight")
	fs.StringVar(&cfg.Command, "command", "", "command line printed under the table")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for t := range strings.SplitSeq(targets, ",") {
		name, url, ok := strings.Cut(strings.TrimSpace(t), "=")
		if !ok || name == "" || url == "" {
			return fmt.Errorf("-targets: %q is not name=URL", t)
		}
		cfg.Targets = append(cfg.Targets, Target{Name: name, URL: strings.TrimRight(url, "/")})
	}
	if cfg.Key == "" || cfg.Sim == "" || cfg.Conversations < 1 || cfg.Turns < 1 || cfg.Concurrency < 1 {
		return errors.New("need -key, -sim, and positive -conversations, -turns, -concurrency")
	}
	results, err := Run(ctx, cfg, http.DefaultClient)
	if err != nil {
		return err
	}
	return Print(stdout, cfg, results)
}

// Run measures every target in turn.
func Run(ctx context.Context, cfg Config, c *http.Client) ([]Result, error) {
	var out []Result
	for _, t := range cfg.Targets {
		if err := post(ctx, c, cfg.Sim+"/_sim/reset", "", nil, nil); err != nil {
			return nil, fmt.Errorf("reset the simulator: %w", err)
		}
		r, err := runTarget(ctx, cfg, c, t)
		if err != nil {
			return nil, fmt.Errorf("measure %s: %w", t.Name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

type usageJSON struct {
	PromptTokens          int64 `json:"prompt_tokens"`
	CompletionTokens      int64 `json:"completion_tokens"`
	PromptCacheHitTokens  int64 `json:"prompt_cache_hit_tokens"`
	PromptCacheMissTokens int64 `json:"prompt_cache_miss_tokens"`
}

type answerJSON struct {
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage usageJSON `json:"usage"`
}

func runTarget(ctx context.Context, cfg Config, c *http.Client, t Target) (Result, error) {
	res := Result{Target: t}
	var mu sync.Mutex
	jobs := make(chan int)
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for conv := range jobs {
				r := conversation(ctx, cfg, c, t, conv)
				mu.Lock()
				res.Requests += r.Requests
				res.Errors += r.Errors
				res.Prompt += r.Prompt
				res.Hit += r.Hit
				res.Miss += r.Miss
				res.Completion += r.Completion
				mu.Unlock()
			}
		})
	}
	for conv := range cfg.Conversations {
		select {
		case jobs <- conv:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	res.Elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Requests == res.Errors {
		return res, fmt.Errorf("all %d requests failed", res.Requests)
	}
	tb, now := pricing.Default(), time.Now()
	var err error
	if res.Cost, _, err = tb.Cost(cfg.Model, now, pricing.Tokens{CacheHit: res.Hit, CacheMiss: res.Miss, Completion: res.Completion}); err != nil {
		return res, fmt.Errorf("price the usage: %w", err)
	}
	res.InputCost, _, _ = tb.Cost(cfg.Model, now, pricing.Tokens{CacheHit: res.Hit, CacheMiss: res.Miss})
	res.NoCacheCost, _, _ = tb.Cost(cfg.Model, now, pricing.Tokens{CacheMiss: res.Prompt})
	return res, nil
}

// sharedSystem is the system prompt of every conversation.
var sharedSystem = "You are the support assistant of an online shop. " + words("policy", 120)

// words returns n numbered words, a cheap deterministic text.
func words(stem string, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%s%d ", stem, i)
	}
	return b.String()
}

// conversation runs one conversation and returns its usage.
func conversation(ctx context.Context, cfg Config, c *http.Client, t Target, conv int) Result {
	var res Result
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	msgs := []msg{{"system", sharedSystem}}
	for turn := range cfg.Turns {
		q := fmt.Sprintf("Question %d about order %d: what happens next? ", turn, conv)
		if turn == 0 {
			q += words(fmt.Sprintf("doc%d-", conv), 200)
		}
		msgs = append(msgs, msg{"user", q})
		body, err := json.Marshal(map[string]any{"model": cfg.Model, "messages": msgs})
		if err != nil {
			res.Errors++
			return res
		}
		res.Requests++
		var a answerJSON
		if err := post(ctx, c, t.URL+"/v1/chat/completions", cfg.Key, body, &a); err != nil || len(a.Choices) == 0 {
			res.Errors++
			return res // the history would be wrong from here on
		}
		res.Prompt += a.Usage.PromptTokens
		res.Hit += a.Usage.PromptCacheHitTokens
		res.Miss += a.Usage.PromptCacheMissTokens
		res.Completion += a.Usage.CompletionTokens
		msgs = append(msgs, msg{"assistant", a.Choices[0].Message.Content})
	}
	return res
}

// post sends body and decodes a 200 answer into out (when not nil).
func post(ctx context.Context, c *http.Client, url, key string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", url, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post %s: status %d", url, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer of %s: %w", url, err)
	}
	return nil
}

// Print writes the results as a Markdown table, the first target the
// baseline of the cost ratio.
func Print(w io.Writer, cfg Config, rs []Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Cache-aware routing: %d conversations x %d turns, %s, 4 upstream keys\n\n", cfg.Conversations, cfg.Turns, cfg.Model)
	b.WriteString("| routing | requests | errors | prompt tokens | cache-hit tokens | hit ratio | input cost (USD) | total cost (USD) | total vs first row |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		rel := "1.00x"
		if rs[0].Cost > 0 {
			rel = fmt.Sprintf("%.2fx", float64(r.Cost)/float64(rs[0].Cost))
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %.1f%% | %s | %s | %s |\n",
			r.Target.Name, r.Requests, r.Errors, r.Prompt, r.Hit, 100*r.HitRatio(), r.InputCost, r.Cost, rel)
	}
	if len(rs) > 0 {
		fmt.Fprintf(&b, "\nWithout any cache hit the input would cost %s USD. Prices: the shipped table (pkg/pricing/prices.yaml).\n", rs[0].NoCacheCost)
	}
	if cfg.Command != "" {
		fmt.Fprintf(&b, "Reproduce: `%s`\n", cfg.Command)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write the table: %w", err)
	}
	return nil
}
