package publish

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
	"github.com/qyai/qyai/testkit/testenv"
)

const scripts testenv.Scripts = "../../../deploy/local"

// The child process of TestKill9WhileJetStreamStalled is the test binary
// run with the arguments childArg, the NATS URL and the spool directory
// after the test flags (flag.Args).
const (
	childArg    = "stall-child"
	childPrefix = "stall"
)

// stallLossWindow is how old an event the kill -9 may lose. The bound is
// AckWait plus one spool fsync interval (~105 ms); the margin is for a
// busy 2-core machine, where the child's goroutines can wait for a CPU.
// Without the stall detection the publisher lost every event accepted
// during the stall, seconds' worth.
const stallLossWindow = 5 * DefaultAckWait

// frozenEvents is how many events the child accepts while the server is
// frozen: about 5 s of them, longer than it takes to fill the 4,096
// pending-ack slots, and than the ack timeout.
const frozenEvents = 10000

// TestKill9WhileJetStreamStalled freezes a real nats-server (SIGSTOP: the
// TCP connection stays up, nothing is acked) under load, kills the
// publishing process with SIGKILL, thaws the server and replays the
// spool from a new publisher on the same directory. Every event the
// child accepted must then be in the stream, exactly once, except events
// accepted within stallLossWindow of the kill.
func TestKill9WhileJetStreamStalled(t *testing.T) {
	if args := flag.Args(); len(args) == 3 && args[0] == childArg {
		stallChild(t, args[1], args[2])
		return
	}
	e, freeze, thaw := freezableNATS(t)
	dir := filepath.Join(t.TempDir(), "spool")

	// The child publishes a steady stream of events and prints the number
	// and accept time of each once Publish returned.
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "--", childArg, e.srv.URL, dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	var (
		mu       sync.Mutex
		accepted []time.Time // by event number
	)
	read := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			n, at, ok := strings.Cut(sc.Text(), " ")
			i, err1 := strconv.Atoi(n)
			ns, err2 := strconv.ParseInt(at, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				continue // not ours (the test framework's PASS line, say)
			}
			mu.Lock()
			if i != len(accepted) {
				mu.Unlock()
				read <- fmt.Errorf("child line %q: want event %d", sc.Text(), len(accepted))
				return
			}
			accepted = append(accepted, time.Unix(0, ns))
			mu.Unlock()
		}
		read <- sc.Err()
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(accepted) }

	// Healthy: events flow to the stream.
	eventually(t, "the child's events reach the stream", func() bool { return count() > 1000 && e.count(t) > 500 })

	// Stalled: the server is frozen, the connection stays open.
	freeze()
	frozenAt := count()
	eventually(t, "the child accepts events while JetStream is frozen", func() bool { return count() >= frozenAt+frozenEvents })
	killedAt := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL child: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatalf("read child: %v", err)
	}
	_ = cmd.Wait() // killed: the error says so
	thaw()

	// Restart on the same spool: the replay sends what the child spooled.
	p := newPublisher(t, e.js, dir, nil)
	startRun(t, p)
	eventually(t, "the spool is replayed", settled(p))

	ids := e.ids(t)
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			t.Errorf("event %s is in the stream twice", id)
		}
		seen[id] = true
	}
	var lost, recent, old int
	for i, at := range accepted {
		inWindow := !at.Before(killedAt.Add(-stallLossWindow))
		if inWindow {
			recent++
		}
		if seen[event(childPrefix, i).ID] {
			continue
		}
		lost++
		if !inWindow {
			old++
			if old <= 10 {
				t.Errorf("event %d accepted %v before the kill is lost", i, killedAt.Sub(at))
			}
		}
	}
	t.Logf("accepted %d events (%d while JetStream was frozen, %d within %v of the kill); %d in the stream; %d lost; spool: %+v",
		len(accepted), len(accepted)-frozenAt, recent, stallLossWindow, len(seen), lost, p.Stats())
	if old > 0 {
		t.Fatalf("%d events accepted more than %v before the kill are lost", old, stallLossWindow)
	}
	if lost > recent {
		t.Fatalf("%d events lost, more than the %d accepted within %v of the kill", lost, recent, stallLossWindow)
	}
	if len(seen) > len(accepted) {
		t.Errorf("the stream holds %d events, more than the %d accepted", len(seen), len(accepted))
	}
}

// stallChild is the child of TestKill9WhileJetStreamStalled: a publisher
// with the gateway's settings, fed about 2,000 events a second until it
// is killed.
func stallChild(t *testing.T, natsURL, dir string) {
	// As app.run connects: the 5 s ack timeout matters, since a pending
	// ack holds one of the 4,096 slots until it times out.
	nc, err := nats.Connect(natsURL, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connect to nats: %v", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(t, js, dir, func(o *Options) {
		o.QueueSize = DefaultQueueSize
	})
	go p.Run(t.Context(), t.Context()) // runs until the parent kills the process
	w := bufio.NewWriter(os.Stdout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; ; {
		<-tick.C
		for range 2 {
			p.Publish(event(childPrefix, i))
			if _, err := fmt.Fprintf(w, "%d %d\n", i, time.Now().UnixNano()); err != nil {
				t.Fatalf("write to the parent: %v", err)
			}
			i++
		}
		if err := w.Flush(); err != nil {
			t.Fatalf("write to the parent: %v", err)
		}
	}
}

// freezableNATS starts a nats-server process with the usage stream, and
// returns it with functions that freeze it (SIGSTOP: connections stay open,
// nothing is answered) and thaw it; a frozen server is thawed when the test
// ends, before it is stopped.
func freezableNATS(t *testing.T) (e *natsEnv, freeze, thaw func()) {
	t.Helper()
	srv := scripts.NATSProcess(t)
	e = &natsEnv{srv: srv, js: gatewayJS(t, srv.URL), obs: gatewayJS(t, srv.URL)}
	if _, err := usagejs.EnsureStream(t.Context(), e.obs, usagejs.StreamConfig{}); err != nil {
		t.Fatalf("create usage stream: %v", err)
	}
	pid := natsPID(t, srv)
	freeze = func() {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP nats-server: %v", err)
		}
	}
	thaw = func() {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT nats-server: %v", err)
		}
	}
	t.Cleanup(thaw) // registered after the server's, so it runs before the server is stopped
	return e, freeze, thaw
}

func natsPID(t *testing.T, srv *testenv.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srv.Dir, "pid"))
	if err != nil {
		t.Fatalf("nats-server pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("nats-server pid file: %v", err)
	}
	return pid
}

// TestStallSpoolsWhatWaitsThenResumes freezes the server with the
// connection up: the events in memory go to the spool, and so do the
// events published while it is frozen, so nothing waits in memory. Once
// the server thaws the spool is replayed, the stall ends, and every event
// is in the stream exactly once.
func TestStallSpoolsWhatWaitsThenResumes(t *testing.T) {
	e, freeze, thaw := freezableNATS(t)
	p := newPublisher(t, e.js, filepath.Join(t.TempDir(), "spool"), nil)
	startRun(t, p)
	want := map[string]bool{}
	publish(p, "before", 0, 100, want)
	eventually(t, "the first events are published", settled(p))

	freeze()
	publish(p, "frozen", 0, 500, want)
	eventually(t, "the publisher stalls", p.stalled.Load)
	publish(p, "stalled", 0, 500, want)
	// Events published once the stall was seen go straight to the spool;
	// some of the first batch may have been acked before the server froze.
	var st Stats
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st = p.Stats(); st.Queued == 0 && st.Spooled >= 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events still wait in memory: %+v", st)
		}
	}
	if !p.connected() {
		t.Fatal("the connection went down: the test froze the wrong thing")
	}

	thaw()
	eventually(t, "the spool is replayed", settled(p))
	if p.stalled.Load() {
		t.Error("the publisher is still stalled after the spool was replayed")
	}
	publish(p, "after", 0, 100, want)
	eventually(t, "the last events are published", settled(p))
	e.wantExactly(t, want)
	if st := p.Stats(); st.SpoolEvents != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v: want an empty spool and nothing dropped", st)
	}
}
