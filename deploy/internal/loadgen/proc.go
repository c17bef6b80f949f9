package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is sysconf(_SC_CLK_TCK), the unit of utime and stime in
// /proc/<pid>/stat. Linux has reported 100 on every architecture for
// decades (USER_HZ, fixed by the ABI), and reading it properly would need
// cgo, so it is a constant. The resolution (10 ms) is why CPU is measured
// over a whole phase of thousands of requests, never per request.
const clockTicks = 100

// processCPU is the CPU time (user + system, all threads) that process pid
// has used, from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read process CPU time: %w", err)
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime, fields 14 and 15 of /proc/<pid>/stat.
// The command name (field 2) is in parentheses and may itself hold spaces
// and parentheses, so fields are counted from the last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no ')' in %q", stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the command name, want >= 13", len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc stat: utime %q, stime %q", f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// processRSS is VmRSS of process pid in bytes, from /proc/<pid>/status.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read process RSS: %w", err)
	}
	return parseStatusRSS(b)
}

// parseStatusRSS reads the "VmRSS:   1234 kB" line of /proc/<pid>/status.
func parseStatusRSS(status []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse /proc status: VmRSS line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc status: VmRSS %q: %w", f[0], err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("parse /proc status: no VmRSS line")
}

// rssWatch samples a process's RSS until stopped and keeps the peak.
type rssWatch struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	peak   int64
}

func startRSSWatch(pid int, every time.Duration) *rssWatch {
	w := &rssWatch{stopCh: make(chan struct{})}
	sample := func() {
		if v, err := processRSS(pid); err == nil {
			w.peak = max(w.peak, v)
		}
	}
	sample()
	w.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stopCh:
				sample()
				return
			case <-t.C:
				sample()
			}
		}
	})
	return w
}

// stop ends the sampling and returns the peak RSS in bytes.
func (w *rssWatch) stop() int64 {
	close(w.stopCh)
	w.wg.Wait()
	return w.peak
}

// machine describes where the benchmark ran.
type machine struct {
	CPUs      int
	CPUModel  string
	GoVersion string
	OS        string
	// LoadAvg is the 1, 5 and 15 minute load averages when the run began:
	// on a shared machine, a hint of how much else was running.
	LoadAvg string
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.OS += ", Linux " + strings.TrimSpace(string(b))
	}
	return m
}
