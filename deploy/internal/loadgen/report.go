package loadgen

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Targets the gateway is held to; the report marks each PASS or MISS.
const (
	targetCPUPerRequest = 200 * time.Microsecond // gateway CPU per non-stream request
	targetSystemCPU     = 200 * time.Microsecond // whole system's CPU per non-stream request

	targetOpenStreamsRSS      = 800 << 20               // gateway RSS with the open streams
	targetOpenStreamsProbeP99 = 50 * time.Millisecond   // non-stream p99 meanwhile
	targetThroughputFrac      = 1.0 / 3                 // non-stream gateway/direct req/s
	targetAddedP99            = 1500 * time.Microsecond // p99 added in the open loop (issue 15: the median of three runs)

	// noisyLag is the open-loop send lag (p99) above which the machine was
	// too busy for the tails to mean much. Go's timers alone account for
	// about 1 ms on an idle machine.
	noisyLag = 2 * time.Millisecond
)

// Report is the outcome of a run.
type Report struct {
	Config  Config
	Machine machine
	Started time.Time
	Elapsed time.Duration
	Phases  []*phase
	// SystemIdle is, per Config.System process, the CPU it used per second
	// with no load, measured before the phases.
	SystemIdle []time.Duration
	// OpenStreams is the open-streams phase; nil when it did not run.
	OpenStreams *openStreamsResult
}

func (rep *Report) phase(k phaseKind) *phase {
	for _, p := range rep.Phases {
		if p.kind == k {
			return p
		}
	}
	return nil
}

// WriteMarkdown prints the results: the machine, the command that
// reproduces them, one table comparing direct and gateway phase by phase,
// the reference proxy's table when it was measured, and the targets with
// their verdicts.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	c, m := rep.Config, rep.Machine
	fmt.Fprintf(&b, "### Gateway overhead (`make bench`)\n\n")
	cpu := ""
	if m.CPUModel != "" {
		cpu = ", " + m.CPUModel
	}
	fmt.Fprintf(&b, "- Machine: %d CPUs (nproc)%s; %s; %s", m.CPUs, cpu, m.OS, m.GoVersion)
	if m.LoadAvg != "" {
		fmt.Fprintf(&b, "; load average %s at the start", m.LoadAvg)
	}
	b.WriteString("\n")
	if c.Revision != "" {
		fmt.Fprintf(&b, "- Source: %s\n", c.Revision)
	}
	rounds := ""
	if c.Rounds > 1 {
		rounds = fmt.Sprintf(" in %d alternating rounds", c.Rounds)
	}
	fmt.Fprintf(&b, "- Run: %s, %s in all; every target %s per phase%s after a %s warm-up\n",
		rep.Started.UTC().Format("2006-01-02 15:04 MST"), rep.Elapsed.Round(time.Second), c.Duration, rounds, c.Warmup)
	if c.Command != "" {
		fmt.Fprintf(&b, "- Reproduce: `%s`\n", c.Command)
	}
	b.WriteString("\nEach phase sends the same requests straight to the DeepSeek simulator (direct), then through " +
		"one gateway with authentication, rate limits and metering on (gateway); load generator, simulator, gateway, " +
		"Redis, NATS, meter and ClickHouse share the machine. Latencies in ms; added = gateway − direct. " +
		"Open-loop latency counts from each request's scheduled start. Gateway CPU/req is the process's user + system " +
		"time (/proc/<pid>/stat) over the measurement divided by the requests completed; RSS is the highest VmRSS sampled " +
		"every 100 ms.\n\n")

	b.WriteString("| Phase | Direct req/s | Gateway req/s | Gateway/direct | Direct p50 | Gateway p50 | Added p50 | " +
		"Direct p99 | Gateway p99 | Added p99 | Errors direct/gateway | Gateway CPU/req | Gateway RSS peak |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range rep.Phases {
		d, g := p.direct, p.gateway
		if !p.stream {
			row(&b, p.title, d, g, d.lat, g.lat, false)
			continue
		}
		row(&b, p.title+": first token", d, g, d.ttft, g.ttft, false)
		row(&b, p.title+": whole stream", d, g, d.lat, g.lat, true)
	}

	if p := rep.phase(phaseStream); p != nil {
		fmt.Fprintf(&b, "\nStreams checked for %d content chunks, usage and [DONE]: direct %d of %d passed, gateway %d of %d.\n",
			c.StreamTokens, p.direct.ok, p.direct.ok+p.direct.badStreams, p.gateway.ok, p.gateway.ok+p.gateway.badStreams)
	}
	if p := rep.phase(phaseOpen); p != nil {
		fmt.Fprintf(&b, "Open-loop send lag p99 (timer slack of the load generator, inside both latencies): direct %s ms, gateway %s ms.\n",
			ms(quantile(p.direct.lag, 0.99)), ms(quantile(p.gateway.lag, 0.99)))
		// The direct lag tells how busy the machine was; the gateway's is
		// higher when the stack behind it also takes the CPUs.
		if lag := quantile(p.direct.lag, 0.99); lag > noisyLag {
			fmt.Fprintf(&b, "**Noisy machine:** even direct, the load generator sent requests up to %s ms late (p99): "+
				"other work competed for the CPUs, so the open-loop tails say more about the machine than the gateway. "+
				"Run again when it is idle (see the load average above).\n", ms(lag))
		}
		if p.direct.rps() < 0.95*float64(c.Rate) {
			fmt.Fprintf(&b, "Note: even direct, this machine sustained only %.0f of %d req/s; the open-loop numbers are "+
				"of an overloaded machine (lower BENCH_RATE).\n", p.direct.rps(), c.Rate)
		}
	}
	writeErrors(&b, rep.Phases)
	writeSystem(&b, rep)
	writeOpenStreams(&b, rep.OpenStreams)
	writeReference(&b, rep.Phases)

	b.WriteString("\n| Target | Measured | Verdict |\n|---|--:|:-:|\n")
	if p := rep.phase(phaseClosed); p != nil {
		if p.gateway.hasProc {
			v := p.gateway.cpuPerRequest()
			fmt.Fprintf(&b, "| Gateway CPU per non-stream request ≤ %s ms (closed loop) | %s ms | %s |\n",
				ms(targetCPUPerRequest), msPrec(v, 3), verdict(v <= targetCPUPerRequest))
		} else {
			fmt.Fprintf(&b, "| Gateway CPU per non-stream request ≤ %s ms | not measured (no -gateway-pid) | — |\n", ms(targetCPUPerRequest))
		}
		if len(p.system) > 0 {
			v := summarise(p.system, len(c.System)).whole
			fmt.Fprintf(&b, "| Whole-system CPU per non-stream request ≤ %s ms (closed loop, median of %d rounds) | %s ms | %s |\n",
				ms(targetSystemCPU), len(p.system), msPrec(v, 3), verdict(v <= targetSystemCPU))
		}
		r := ratio(p)
		fmt.Fprintf(&b, "| Non-stream throughput through the gateway ≥ 1/3 of direct | %.2f | %s |\n",
			r, verdict(r >= targetThroughputFrac))
	}
	if p := rep.phase(phaseOpen); p != nil {
		added := quantile(p.gateway.lat, 0.99) - quantile(p.direct.lat, 0.99)
		fmt.Fprintf(&b, "| p99 latency added at %d req/s, open loop ≤ %s ms | %s ms | %s |\n",
			c.Rate, ms(targetAddedP99), signedMs(added), verdict(added <= targetAddedP99))
	}
	openStreamsTargets(&b, rep.OpenStreams)
	if p := rep.phase(phaseClosed); p != nil && p.reference != nil {
		cpu := ""
		if p.reference.hasProc {
			cpu = fmt.Sprintf(" at %s ms CPU per request", msPrec(p.reference.cpuPerRequest(), 3))
		}
		fmt.Fprintf(&b, "\nFor scale: the bare reverse proxy reached %.2f of direct throughput%s.\n",
			safeDiv(p.reference.rps(), p.direct.rps()), cpu)
	}
	_, err := w.Write(b.Bytes())
	return err
}

func row(b *bytes.Buffer, title string, d, g *result, dl, gl []time.Duration, ditto bool) {
	d50, g50 := quantile(dl, 0.50), quantile(gl, 0.50)
	d99, g99 := quantile(dl, 0.99), quantile(gl, 0.99)
	rate := fmt.Sprintf("%.0f | %.0f | %.2f", d.rps(), g.rps(), safeDiv(g.rps(), d.rps()))
	errs := fmt.Sprintf("%d / %d", d.failed, g.failed)
	cpu, rss := "—", "—"
	if g.hasProc {
		cpu, rss = msPrec(g.cpuPerRequest(), 3)+" ms", mib(g.rssPeak)
	}
	if ditto {
		rate, errs, cpu, rss = "″ | ″ | ″", "″", "″", "″"
	}
	fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
		title, rate, ms(d50), ms(g50), signedMs(g50-d50), ms(d99), ms(g99), signedMs(g99-d99), errs, cpu, rss)
}

// writeSystem prints the whole system's table: per phase, the CPU time per
// gateway request of every process of ours and their sum, the medians of the
// rounds; nothing when Config.System was empty.
func writeSystem(b *bytes.Buffer, rep *Report) {
	procs := rep.Config.System
	if len(procs) == 0 {
		return
	}
	var idle []string
	for i, p := range procs {
		idle = append(idle, fmt.Sprintf("%s %s", p.Name, msPrec(rep.SystemIdle[i], 1)))
	}
	b.WriteString("\nWhole system, same run: CPU time (user + system) per gateway request of every process of ours, " +
		"the median of the rounds. A round runs from the start of its gateway slice to the start of the next one " +
		"(the last: a settle time after it), so that the bookkeeping that trails the requests counts; each process's " +
		"idle use, measured before the phases (ms of CPU per second: " + strings.Join(idle, ", ") + "), is subtracted. " +
		"Whole system = the gateway plus all of them (the median of the rounds' sums). " +
		"Bare proxy: the reference's own CPU per request, for scale. In ms.\n\n")
	b.WriteString("| Phase | Gateway |")
	for _, p := range procs {
		fmt.Fprintf(b, " %s |", p.Name)
	}
	b.WriteString(" **Whole system** | Bare proxy |\n|---|--:|")
	b.WriteString(strings.Repeat("--:|", len(procs)+2) + "\n")
	for _, p := range rep.Phases {
		if len(p.system) == 0 {
			continue
		}
		s := summarise(p.system, len(procs))
		fmt.Fprintf(b, "| %s | %s |", p.title, msPrec(s.gateway, 3))
		for _, v := range s.procs {
			fmt.Fprintf(b, " %s |", msPrec(v, 3))
		}
		ref := "—"
		if p.reference != nil && p.reference.hasProc {
			ref = msPrec(p.reference.cpuPerRequest(), 3)
		}
		fmt.Fprintf(b, " **%s** | %s |\n", msPrec(s.whole, 3), ref)
	}
}

// writeReference prints the reference proxy's table, one row per phase it
// was measured in; nothing when it was not.
func writeReference(b *bytes.Buffer, phases []*phase) {
	var rows []*phase
	for _, p := range phases {
		if p.reference != nil {
			rows = append(rows, p)
		}
	}
	if len(rows) == 0 {
		return
	}
	b.WriteString("\nReference, same run: a bare reverse proxy (deploy/cmd/refproxy: net/http/httputil, no authentication, " +
		"limits or metering) in front of the same simulator. It shows what any Go HTTP proxy costs on this machine. " +
		"Added = reference − direct, in ms.\n\n")
	b.WriteString("| Phase | Direct req/s | Reference req/s | Reference/direct | Added p50 | Added p99 | Reference CPU/req |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range rows {
		d, r := p.direct, p.reference
		cpu := "—"
		if r.hasProc {
			cpu = msPrec(r.cpuPerRequest(), 3) + " ms"
		}
		fmt.Fprintf(b, "| %s | %.0f | %.0f | %.2f | %s | %s | %s |\n", p.title, d.rps(), r.rps(), safeDiv(r.rps(), d.rps()),
			signedMs(quantile(r.lat, 0.50)-quantile(d.lat, 0.50)), signedMs(quantile(r.lat, 0.99)-quantile(d.lat, 0.99)), cpu)
	}
}

func writeErrors(b *bytes.Buffer, phases []*phase) {
	var lines []string
	for _, p := range phases {
		for _, r := range []struct {
			name string
			res  *result
		}{{"direct", p.direct}, {"reference", p.reference}, {"gateway", p.gateway}} {
			if r.res == nil || len(r.res.errs) == 0 {
				continue
			}
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(r.res.errs)) {
				parts = append(parts, fmt.Sprintf("%s ×%d", k, r.res.errs[k]))
			}
			lines = append(lines, fmt.Sprintf("- %s, %s: %s", p.title, r.name, strings.Join(parts, ", ")))
		}
	}
	if len(lines) > 0 {
		b.WriteString("\nErrors:\n" + strings.Join(lines, "\n") + "\n")
	}
}

func ratio(p *phase) float64 { return safeDiv(p.gateway.rps(), p.direct.rps()) }

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "**MISS**"
}

// ms renders a duration in milliseconds with two decimals.
func ms(d time.Duration) string { return msPrec(d, 2) }

func msPrec(d time.Duration, prec int) string {
	return fmt.Sprintf("%.*f", prec, float64(d)/float64(time.Millisecond))
}

func signedMs(d time.Duration) string {
	return fmt.Sprintf("%+.2f", float64(d)/float64(time.Millisecond))
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
