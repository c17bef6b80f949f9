package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// OpenStreams configures the open-streams phase: many slow streams held open
// on one gateway at once, as thinking-mode answers are in real use, while a
// probe measures how a non-stream request fares meanwhile. It is run after the
// other phases when Count > 0, against the gateway only.
type OpenStreams struct {
	// Count streams are opened, Ramp a second, each with its own connection.
	Count int
	Ramp  int
	// Tokens content chunks per stream, one every Interval (the simulator's
	// "#sim tokens=.. chunk_delay_ms=.." directive).
	Tokens   int
	Interval time.Duration
	// Key is the API key of the phase, a key of its own, so that its billing
	// totals can be checked exactly (empty: the gateway key, unchecked).
	Key string
	// ProbeRate non-stream requests a second go through the gateway while the
	// streams are open.
	ProbeRate int
	// PprofURL, when set, is the gateway's pprof base (PPROF_ADDR), whose
	// goroutine profile gives the goroutines per open stream.
	PprofURL string
	// Settle bounds the wait for the billing totals to match.
	Settle time.Duration
}

// openStreamsResult is what the open-streams phase saw.
type openStreamsResult struct {
	cfg                OpenStreams
	opened, completed  int
	failed             map[string]int
	peakOpen           int64
	rssBase, rssPeak   int64
	goroutinesBase     int
	goroutinesPeak     int
	goroutinesMeasured bool
	// probe is the non-stream probe in three parts: while the streams are
	// being opened (ramp), while all are open (steady: from the end of the
	// ramp to the first stream's end) and while they end (tail).
	probeRamp, probeSteady, probeTail *result
	probe                             *result // the three together
	prompt, completion                int64   // tokens the gateway reported to the clients
	billed                            *billingUsage
	billedExact                       bool
	billingErr                        string
	elapsed, openDuration             time.Duration
}

// billingUsage is the part of GET /v1/dashboard/billing/usage the check reads.
type billingUsage struct {
	MonthlyRequests       int64 `json:"monthly_requests"`
	TotalPromptTokens     int64 `json:"total_prompt_tokens"`
	TotalCompletionTokens int64 `json:"total_completion_tokens"`
}

// usageChunk is the usage of a final chunk or of a non-stream answer.
type usageChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
}

func (o OpenStreams) validate() error {
	if o.Count > 0 && (o.Ramp <= 0 || o.Tokens <= 0 || o.Interval <= 0 || o.ProbeRate <= 0 || o.Settle <= 0) {
		return fmt.Errorf("open streams: ramp %d, tokens %d, interval %v, probe rate %d, settle %v: want all > 0",
			o.Ramp, o.Tokens, o.Interval, o.ProbeRate, o.Settle)
	}
	return nil
}

// runOpenStreams opens the streams, holds them to their end while the probe
// runs, and checks every one: o.Tokens content chunks, usage and [DONE].
// Then, with a key of its own, it waits until the billing endpoint reports
// exactly the requests and tokens the gateway answered.
func runOpenStreams(ctx context.Context, c Config, gatewayBase string, pid int, progress io.Writer) (*openStreamsResult, error) {
	o := c.OpenStreams
	key := o.Key
	if key == "" {
		key = c.GatewayKey
	}
	res := &openStreamsResult{cfg: o, failed: map[string]int{}}
	gw := &target{name: "gateway", url: strings.TrimRight(gatewayBase, "/") + "/v1/chat/completions", key: key}

	// One connection per stream: a client of its own, so that the probe's
	// connections are not taken by streams.
	streamClient := newClient(o.Count)
	defer streamClient.CloseIdleConnections()
	probeClient := newClient(64)
	defer probeClient.CloseIdleConnections()

	if pid > 0 {
		if v, err := processRSS(pid); err == nil {
			res.rssBase = v
		}
	}
	if o.PprofURL != "" {
		if n, err := goroutines(ctx, probeClient, o.PprofURL); err == nil {
			res.goroutinesBase, res.goroutinesMeasured = n, true
		}
	}
	streamTimeout := time.Duration(o.Tokens+30)*o.Interval + time.Minute
	body, _ := json.Marshal(map[string]any{
		"model": "deepseek-v4-flash",
		"messages": []any{
			map[string]string{"role": "system", "content": "You are a helpful assistant."},
			map[string]string{"role": "user", "content": fmt.Sprintf("Think it through.\n#sim tokens=%d chunk_delay_ms=%d", o.Tokens, o.Interval.Milliseconds())},
		},
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
	})
	w := newWorkload(probeClient, c.RequestTimeout, o.Tokens)

	var (
		mu                 sync.Mutex
		open               atomic.Int64
		prompt, completion atomic.Int64
		wg                 sync.WaitGroup
	)
	fail := func(class string) {
		mu.Lock()
		res.failed[class]++
		mu.Unlock()
	}
	start := time.Now()
	var watch *rssWatch
	if pid > 0 {
		watch = startRSSWatch(pid, 250*time.Millisecond)
	}

	// The probe: an open loop of non-stream requests from the first stream
	// on until the last one ends, in three parts (see openStreamsResult).
	rampDone, firstDone, allDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var firstOnce sync.Once
	probeDone := make(chan [3]*result, 1)
	go func() {
		part := func(until <-chan struct{}) *result {
			pctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() {
				select {
				case <-until:
				case <-pctx.Done():
				}
				cancel()
			}()
			// The loop stops with pctx; a probe in flight then still runs to
			// its end under ctx, so that what the gateway billed is counted.
			return openLoop(pctx, o.ProbeRate, streamTimeout, func(_ context.Context, st time.Time) sample {
				s, p, cpl := chatUsage(ctx, w, gw, st)
				if s.err == "" {
					prompt.Add(p)
					completion.Add(cpl)
				}
				return s
			})
		}
		var r [3]*result
		r[0] = part(rampDone)
		r[1] = part(firstDone)
		r[2] = part(allDone)
		probeDone <- r
	}()
	stopProbe := func() {
		firstOnce.Do(func() { close(firstDone) })
		select {
		case <-rampDone:
		default:
			close(rampDone)
		}
		close(allDone)
	}

	tick := time.NewTicker(time.Second / time.Duration(o.Ramp))
	for i := 0; i < o.Count; i++ {
		select {
		case <-ctx.Done():
			tick.Stop()
			stopProbe()
			<-probeDone
			return nil, fmt.Errorf("open streams interrupted: %w", ctx.Err())
		case <-tick.C:
		}
		wg.Add(1)
		res.opened++
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, streamTimeout)
			defer cancel()
			p, cpl, class := holdStream(sctx, streamClient, gw, body, o.Tokens, &open)
			firstOnce.Do(func() { close(firstDone) })
			if class != "" {
				fail(class)
				return
			}
			prompt.Add(p)
			completion.Add(cpl)
			mu.Lock()
			res.completed++
			mu.Unlock()
		}()
	}
	tick.Stop()
	close(rampDone)
	res.openDuration = time.Since(start)
	_, _ = fmt.Fprintf(progress, "open streams: %d opened in %s\n", o.Count, res.openDuration.Round(time.Millisecond))

	// All are open (or failed): sample the peak while they run.
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		for range 5 {
			if n := open.Load(); n > res.peakOpen {
				res.peakOpen = n
			}
			if o.PprofURL != "" {
				if n, err := goroutines(ctx, probeClient, o.PprofURL); err == nil && n > res.goroutinesPeak {
					res.goroutinesPeak = n
				}
			}
			if sleep(ctx, 2*time.Second) != nil {
				return
			}
		}
	}()
	wg.Wait()
	<-sampleDone
	stopProbe()
	parts := <-probeDone
	res.probeRamp, res.probeSteady, res.probeTail = parts[0], parts[1], parts[2]
	res.probe = newResult()
	for _, p := range parts {
		res.probe.merge(p)
	}
	res.probe = res.probe.finish(time.Since(start))
	if watch != nil {
		res.rssPeak = watch.stop()
	}
	res.elapsed = time.Since(start)
	res.prompt, res.completion = prompt.Load(), completion.Load()
	_, _ = fmt.Fprintf(progress, "open streams: %d of %d completed in %s; probe %s\n",
		res.completed, res.opened, res.elapsed.Round(time.Second), res.probe.summary())

	if o.Key != "" {
		res.checkBilling(ctx, probeClient, gatewayBase, o.Key, int64(res.completed+res.probe.ok))
	}
	return res, nil
}

// holdStream reads one stream to its end and checks it; it counts the
// stream in open from its first content chunk to its end.
func holdStream(ctx context.Context, client *http.Client, t *target, body []byte, tokens int, open *atomic.Int64) (prompt, completion int64, class string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+t.key)
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, errClass(err)
	}
	defer func() { _ = resp.Body.Close() }() // read-only
	if resp.StatusCode != http.StatusOK {
		return 0, 0, "HTTP " + strconv.Itoa(resp.StatusCode)
	}
	counted := false
	defer func() {
		if counted {
			open.Add(-1)
		}
	}()
	content := 0
	usage := false
	br := bufio.NewReaderSize(resp.Body, 4<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, 0, "stream: " + errClass(err)
		}
		data, ok := bytes.CutPrefix(line, dataPrefix)
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if bytes.Equal(data, doneEvent) {
			break
		}
		var ch usageChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			return 0, 0, "stream: bad chunk JSON"
		}
		if ch.Usage != nil {
			usage, prompt, completion = true, ch.Usage.PromptTokens, ch.Usage.CompletionTokens
		}
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" {
			if !counted {
				counted = true
				open.Add(1)
			}
			content++
		}
	}
	switch {
	case content != tokens:
		return 0, 0, fmt.Sprintf("stream: %d content chunks, want %d", content, tokens)
	case !usage || completion != int64(tokens):
		return 0, 0, fmt.Sprintf("stream: usage completion_tokens %d, want %d", completion, tokens)
	}
	return prompt, completion, ""
}

// chatUsage is workload.chat that also returns the answer's usage.
func chatUsage(ctx context.Context, w *workload, t *target, start time.Time) (sample, int64, int64) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	resp, err := w.post(ctx, t, w.chatBody)
	if err != nil {
		return sample{err: errClass(err)}, 0, 0
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close() // read-only
	switch {
	case resp.StatusCode != http.StatusOK:
		return sample{err: "HTTP " + strconv.Itoa(resp.StatusCode)}, 0, 0
	case err != nil:
		return sample{err: "read body: " + errClass(err)}, 0, 0
	}
	var u usageChunk
	if json.Unmarshal(b, &u) != nil || u.Usage == nil {
		return sample{err: "answer without usage"}, 0, 0
	}
	return sample{lat: time.Since(start)}, u.Usage.PromptTokens, u.Usage.CompletionTokens
}

// goroutines reads the total of the gateway's goroutine profile.
func goroutines(ctx context.Context, client *http.Client, pprofBase string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(pprofBase, "/")+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }() // read-only
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, err
	}
	// "goroutine profile: total 1234"
	f := strings.Fields(line)
	if len(f) < 4 || f[2] != "total" {
		return 0, fmt.Errorf("goroutine profile: unexpected first line %q", line)
	}
	return strconv.Atoi(f[3])
}

// checkBilling polls the billing endpoint with the phase's own key until it
// reports the requests and tokens the gateway answered, or Settle passes.
func (res *openStreamsResult) checkBilling(ctx context.Context, client *http.Client, base, key string, requests int64) {
	end := time.Now().Add(res.cfg.Settle)
	for {
		u, err := fetchBilling(ctx, client, base, key)
		if err != nil {
			res.billingErr = err.Error()
		} else {
			res.billed, res.billingErr = u, ""
			if u.MonthlyRequests == requests && u.TotalPromptTokens == res.prompt && u.TotalCompletionTokens == res.completion {
				res.billedExact = true
				return
			}
		}
		if time.Now().After(end) || sleep(ctx, 500*time.Millisecond) != nil {
			return
		}
	}
}

func fetchBilling(ctx context.Context, client *http.Client, base, key string) (*billingUsage, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/v1/dashboard/billing/usage", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }() // read-only
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("billing usage: HTTP %d", resp.StatusCode)
	}
	var u billingUsage
	if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
		return nil, fmt.Errorf("billing usage: %w", err)
	}
	return &u, nil
}

// writeOpenStreams prints the open-streams phase.
func writeOpenStreams(b *bytes.Buffer, r *openStreamsResult) {
	if r == nil {
		return
	}
	o := r.cfg
	fmt.Fprintf(b, "\nOpen streams, same run: %d slow streams on the one gateway (%d content chunks each, one every %s: "+
		"the simulator's directive), opened %d a second, each on its own connection, while %d non-stream requests a "+
		"second go through the same gateway.\n\n", o.Count, o.Tokens, o.Interval, o.Ramp, o.ProbeRate)
	b.WriteString("| Measure | Value |\n|---|--:|\n")
	fmt.Fprintf(b, "| streams opened / completed and checked | %d / %d |\n", r.opened, r.completed)
	fmt.Fprintf(b, "| most streams open at once (sampled) | %d |\n", r.peakOpen)
	fmt.Fprintf(b, "| time to open them all | %s s |\n", strconv.FormatFloat(r.openDuration.Seconds(), 'f', 1, 64))
	if r.rssPeak > 0 {
		fmt.Fprintf(b, "| gateway RSS before / peak | %s / %s |\n", mib(r.rssBase), mib(r.rssPeak))
		if r.peakOpen > 0 {
			fmt.Fprintf(b, "| gateway memory per open stream | %.1f KiB |\n", float64(r.rssPeak-r.rssBase)/float64(r.peakOpen)/1024)
		}
	}
	if r.goroutinesMeasured && r.peakOpen > 0 {
		fmt.Fprintf(b, "| gateway goroutines before / peak (per open stream) | %d / %d (%.2f) |\n",
			r.goroutinesBase, r.goroutinesPeak, float64(r.goroutinesPeak-r.goroutinesBase)/float64(r.peakOpen))
	}
	for _, part := range []struct {
		name string
		r    *result
	}{{"while they are opened", r.probeRamp}, {"while all are open", r.probeSteady}, {"while they end", r.probeTail}, {"in all", r.probe}} {
		if p := part.r; p != nil {
			fmt.Fprintf(b, "| non-stream probe %s: ok / failed, p50 / p99 / max | %d / %d, %s / %s / %s ms |\n",
				part.name, p.ok, p.failed, ms(quantile(p.lat, 0.5)), ms(quantile(p.lat, 0.99)), ms(quantile(p.lat, 1)))
		}
	}
	switch {
	case o.Key == "":
		b.WriteString("| billed exactly | not checked (no key of its own) |\n")
	case r.billed == nil:
		fmt.Fprintf(b, "| billed exactly | could not read billing: %s |\n", r.billingErr)
	default:
		fmt.Fprintf(b, "| billed: requests, prompt, completion tokens (answered) | %d, %d, %d (%d, %d, %d) |\n",
			r.billed.MonthlyRequests, r.billed.TotalPromptTokens, r.billed.TotalCompletionTokens,
			int64(r.completed+r.probe.ok), r.prompt, r.completion)
	}
	if len(r.failed) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.failed)) {
			parts = append(parts, fmt.Sprintf("%s ×%d", k, r.failed[k]))
		}
		fmt.Fprintf(b, "\nFailed streams: %s\n", strings.Join(parts, ", "))
	}
}

// openStreamsTargets prints the phase's target lines.
func openStreamsTargets(b *bytes.Buffer, r *openStreamsResult) {
	if r == nil {
		return
	}
	fmt.Fprintf(b, "| %d open streams all complete | %d of %d | %s |\n", r.cfg.Count, r.completed, r.cfg.Count, verdict(r.completed == r.cfg.Count))
	if r.cfg.Key != "" {
		fmt.Fprintf(b, "| every open stream and probe billed exactly | %s | %s |\n", map[bool]string{true: "exact", false: "not exact"}[r.billedExact], verdict(r.billedExact))
	}
	if r.rssPeak > 0 {
		fmt.Fprintf(b, "| gateway RSS with %d open streams ≤ %s | %s | %s |\n", r.cfg.Count, mib(targetOpenStreamsRSS), mib(r.rssPeak), verdict(r.rssPeak <= targetOpenStreamsRSS))
	}
	if p := r.probeSteady; p != nil {
		v := quantile(p.lat, 0.99)
		fmt.Fprintf(b, "| non-stream p99 while all %d are open < %s ms | %s ms | %s |\n", r.cfg.Count, ms(targetOpenStreamsProbeP99), ms(v), verdict(p.ok > 0 && p.failed == 0 && v < targetOpenStreamsProbeP99))
	}
}
