package prompts

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// freezeProxy is a TCP proxy in front of one instance that can freeze all
// traffic both ways, as SIGSTOP does to a process: connections are still
// accepted (by the kernel) and stay open, but nothing is read, answered or
// forwarded, WebSocket pings get no pongs; unfrozen, what was held flows on.
type freezeProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex // guards frozen, thawed, conns, closed
	frozen bool
	thawed chan struct{} // closed when a freeze ends
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func startFreezeProxy(t testing.TB, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &freezeProxy{t: t, ln: ln, target: target, thawed: make(chan struct{})}
	fp.wg.Add(1)
	go fp.accept()
	t.Cleanup(fp.close)
	return fp
}

func (fp *freezeProxy) Addr() string { return fp.ln.Addr().String() }

// freeze stops all traffic until thaw.
func (fp *freezeProxy) freeze() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if !fp.frozen {
		fp.frozen = true
		fp.thawed = make(chan struct{})
	}
}

// thaw lets held and new traffic flow again.
func (fp *freezeProxy) thaw() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.frozen {
		fp.frozen = false
		close(fp.thawed)
	}
}

// wait blocks while frozen; false once closed.
func (fp *freezeProxy) wait() bool {
	fp.mu.Lock()
	frozen, ch, closed := fp.frozen, fp.thawed, fp.closed
	fp.mu.Unlock()
	if closed {
		return false
	}
	if frozen {
		<-ch
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	return !fp.closed
}

func (fp *freezeProxy) track(c net.Conn) bool {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.closed {
		_ = c.Close()
		return false
	}
	fp.conns = append(fp.conns, c)
	return true
}

func (fp *freezeProxy) accept() {
	defer fp.wg.Done()
	for {
		c, err := fp.ln.Accept()
		if err != nil {
			return
		}
		if !fp.track(c) {
			return
		}
		fp.wg.Add(1)
		go func() {
			defer fp.wg.Done()
			if !fp.wait() { // a frozen process does not even start on it
				return
			}
			up, err := net.Dial("tcp4", fp.target)
			if err != nil || !fp.track(up) {
				_ = c.Close()
				return
			}
			fp.wg.Add(2)
			go fp.pipe(c, up)
			go fp.pipe(up, c)
		}()
	}
}

// pipe copies src to dst, holding every chunk while frozen.
func (fp *freezeProxy) pipe(dst, src net.Conn) {
	defer fp.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		if !fp.wait() {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !fp.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && err == io.EOF {
				_ = tc.CloseWrite()
			} else {
				_ = dst.Close()
			}
			return
		}
	}
}

func (fp *freezeProxy) close() {
	fp.mu.Lock()
	if fp.closed {
		fp.mu.Unlock()
		return
	}
	fp.closed = true
	if fp.frozen {
		fp.frozen = false
		close(fp.thawed)
	}
	conns := fp.conns
	fp.conns = nil
	fp.mu.Unlock()
	_ = fp.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	fp.wg.Wait()
}

// simHistory returns the status_str of every entry in the sim's /history,
// asked directly (not through a proxy).
func simHistory(t testing.TB, s *comfysim.Server) map[string]string {
	t.Helper()
	resp, err := http.Get(s.URL() + "/history")
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	defer resp.Body.Close()
	var h map[string]struct {
		Status struct {
			StatusStr string `json:"status_str"`
		} `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatalf("history: %v", err)
	}
	out := make(map[string]string, len(h))
	for id, e := range h {
		out[id] = e.Status.StatusStr
	}
	return out
}

// simQueueLen returns how many prompts the sim has running or pending.
func simQueueLen(t testing.TB, s *comfysim.Server) int {
	t.Helper()
	resp, err := http.Get(s.URL() + "/queue")
	if err != nil {
		t.Fatalf("queue: %v", err)
	}
	defer resp.Body.Close()
	var q struct {
		Running []json.RawMessage `json:"queue_running"`
		Pending []json.RawMessage `json:"queue_pending"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		t.Fatalf("queue: %v", err)
	}
	return len(q.Running) + len(q.Pending)
}

// countSink counts a prompt's events by kind, and signals its success.
type countSink struct {
	mu        sync.Mutex
	successes int
	ends      int // executing with node null
	starts    int
	insts     []string // instance of every execution_start
	done      chan struct{}
}

func newCountSink() *countSink { return &countSink{done: make(chan struct{})} }

func (c *countSink) PromptEvent(_ *Prompt, ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case ev.Type == "execution_start":
		c.starts++
		c.insts = append(c.insts, ev.Instance.Name)
	case ev.Type == "execution_success":
		c.successes++
	case ev.Type == "executing" && strings.Contains(string(ev.Data), `"node": null`):
		c.ends++
		if c.ends == 1 {
			close(c.done)
		}
	}
}

func (c *countSink) counts() (successes, ends int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.successes, c.ends
}

// waitDone waits for the prompt's end; false after within.
func (c *countSink) waitDone(within time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(within):
		return false
	}
}

// freezeBound bounds the waits of the freeze tests: a hang takes seconds
// to detect with the shipped timing.
const freezeBound = 25 * time.Second

// frozenConfig is the shipped configuration (hang detection at its
// defaults) for the given addresses.
func frozenConfig(addrs ...string) *config.Config {
	c := config.Default()
	c.Instances = nil
	for k, a := range addrs {
		c.Instances = append(c.Instances, config.Instance{Name: fmt.Sprintf("i%d", k+1), Address: a})
	}
	return c
}

// TestFrozenInstanceRunsMovedPromptsOnce: 16 prompts over two instances,
// one frozen (SIGSTOP) with its share queued, then woken. Its prompts move
// to the other instance within seconds, new prompts stop going to it, and
// after it wakes every prompt has run to success exactly once: the woken
// instance runs none of the moved ones and no client sees an event twice.
func TestFrozenInstanceRunsMovedPromptsOnce(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("freezes an instance for seconds")
	}
	s1 := testkit.Sim(t, comfysim.Options{Delay: time.Second})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond})
	fp := startFreezeProxy(t, s1.Addr())
	p, _ := fakePool(t, frozenConfig(fp.Addr(), s2.Addr()))
	var frozen *upstream.Instance
	for _, inst := range p.Instances() {
		if inst.Addr == fp.Addr() {
			frozen = inst
		}
	}

	s1.SetPaused(true) // its share waits in its queue
	const n = 16
	ids := make([]string, n)
	sinks := make([]*countSink, n)
	on := make([]*upstream.Instance, n)
	for k := range n {
		ids[k], sinks[k] = newUUID(), newCountSink()
		res := simSubmit(t, p, ids[k], simPrompt(fmt.Sprintf("f%d", k), false), sinks[k])
		on[k] = res.Instance
	}
	var moved []int
	for k := range n {
		if on[k] == frozen {
			moved = append(moved, k)
		} else if !sinks[k].waitDone(10 * time.Second) {
			t.Fatalf("prompt %d did not finish on the live instance", k)
		}
	}
	if len(moved) == 0 {
		t.Fatal("no prompt went to the instance to freeze")
	}

	froze := time.Now()
	fp.freeze()
	// New work stops going to it quickly.
	var unselectable time.Duration
	testkit.EventuallyWithin(t, freezeBound, "the frozen instance is no longer selected", func() bool {
		// Suspect: chosen only when no other instance is available.
		if frozen.Available() && !frozen.State().Suspect() {
			return false
		}
		unselectable = time.Since(froze)
		return true
	})
	var ranElsewhere time.Duration
	testkit.EventuallyWithin(t, freezeBound, "the frozen instance's prompts ran elsewhere", func() bool {
		for _, k := range moved {
			if s, _ := sinks[k].counts(); s == 0 {
				return false
			}
		}
		ranElsewhere = time.Since(froze)
		return true
	})
	t.Logf("freeze -> not selectable: %v; freeze -> its %d queued prompts ran elsewhere: %v",
		unselectable.Round(time.Millisecond), len(moved), ranElsewhere.Round(time.Millisecond))
	for range 4 {
		sink, id := newCountSink(), newUUID()
		if res := simSubmit(t, p, id, simPrompt("after-"+id[:8], false), sink); res.Instance == frozen {
			t.Fatal("a new prompt went to the frozen instance")
		}
	}

	// Wake it (SIGCONT): its worker resumes at once, as ComfyUI's does.
	fp.thaw()
	s1.SetPaused(false)
	testkit.EventuallyWithin(t, freezeBound, "the woken instance's queue is empty", func() bool { return simQueueLen(t, s1) == 0 })
	testkit.EventuallyWithin(t, freezeBound, "the woken instance is usable again", func() bool { return frozen.Available() && frozen.State().SocketUp() })

	h1, h2 := simHistory(t, s1), simHistory(t, s2)
	total, stopped := 0, 0
	for _, st := range h1 {
		if st == "success" {
			total++
		} else {
			stopped++
		}
	}
	for _, st := range h2 {
		if st == "success" {
			total++
		}
	}
	t.Logf("%d prompts (%d, and 4 sent during the freeze) ran to success %d times in all; the woken instance stopped %d moved prompt(s) it had started",
		n+4, n, total, stopped)
	for k := range n {
		runs := 0
		if h1[ids[k]] == "success" {
			runs++
		}
		if h2[ids[k]] == "success" {
			runs++
		}
		if runs != 1 {
			t.Errorf("prompt %d ran to success %d times (woken instance: %q, other: %q)", k, runs, h1[ids[k]], h2[ids[k]])
		}
	}
	for _, k := range moved {
		if h1[ids[k]] == "success" {
			t.Errorf("moved prompt %d ran on the woken instance", k)
		}
	}
	for k := range n {
		if s, e := sinks[k].counts(); s != 1 || e != 1 {
			t.Errorf("prompt %d: its client saw %d execution_success and %d executing-null, want 1 and 1", k, s, e)
		}
	}
}

// TestTimedOutSubmitMovedRunsOnce: a POST /prompt to a frozen instance
// times out (the client gets the error), comfygate moves the prompt to the
// other instance, and when the frozen one wakes and reads the held POST it
// does not run it: one success in all.
func TestTimedOutSubmitMovedRunsOnce(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("freezes an instance for seconds")
	}
	s1 := testkit.Sim(t, comfysim.Options{Delay: time.Second})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond})
	fp := startFreezeProxy(t, s1.Addr())
	cfg := frozenConfig(fp.Addr(), s2.Addr())
	cfg.Timeout = 2 * time.Second // the client's 504 comes sooner
	p, _ := fakePool(t, cfg)
	var frozen *upstream.Instance
	for _, inst := range p.Instances() {
		if inst.Addr == fp.Addr() {
			frozen = inst
		}
	}
	fp.freeze()
	sink, id := newCountSink(), newUUID()
	_, err := p.Submit(t.Context(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": simPrompt("timedout", false)},
		PromptID: id,
		Sink:     sink,
		Prefer:   frozen,
	})
	if err == nil {
		t.Fatal("want the frozen instance's timeout")
	}
	if !sink.waitDone(25 * time.Second) {
		t.Fatal("the prompt did not run on the other instance")
	}
	fp.thaw()
	testkit.EventuallyWithin(t, freezeBound, "the woken instance is usable again", func() bool { return frozen.Available() && frozen.State().SocketUp() })
	testkit.EventuallyWithin(t, freezeBound, "the woken instance's queue is empty", func() bool { return simQueueLen(t, s1) == 0 })
	h1, h2 := simHistory(t, s1), simHistory(t, s2)
	if h2[id] != "success" {
		t.Fatalf("other instance's history: %q", h2[id])
	}
	if h1[id] == "success" {
		t.Fatal("the woken instance ran the prompt that had moved")
	}
	if s, e := sink.counts(); s != 1 || e != 1 {
		t.Fatalf("the client saw %d execution_success and %d executing-null, want 1 and 1", s, e)
	}
}

// TestBusyInstanceDoesNotFailOver: a node that runs long sends no events
// for longer than hang detection waits, but its instance answers pings and
// /system_stats: nothing moves, it finishes where it started.
func TestBusyInstanceDoesNotFailOver(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs one long node")
	}
	s1 := testkit.Sim(t, comfysim.Options{Delay: 12 * time.Second})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond})
	p, _ := fakePool(t, frozenConfig(s1.Addr(), s2.Addr()))
	var busy *upstream.Instance
	for _, inst := range p.Instances() {
		if inst.Addr == s1.Addr() {
			busy = inst
		}
	}
	sink, id := newCountSink(), newUUID()
	res, err := p.Submit(t.Context(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": simPrompt("long", false)},
		PromptID: id,
		Sink:     sink,
		Prefer:   busy,
	})
	if err != nil || res.Instance != busy {
		t.Fatalf("submit: %v (to %v)", err, res.Instance)
	}
	if !sink.waitDone(30 * time.Second) {
		t.Fatal("the long prompt did not finish")
	}
	if res.Prompt.Attempts() != 1 || res.Prompt.Instance() != busy {
		t.Fatalf("the busy instance's prompt moved: attempts %d", res.Prompt.Attempts())
	}
	if got := simHistory(t, s2)[id]; got != "" {
		t.Fatalf("the other instance ran it too: %q", got)
	}
	if !busy.Available() {
		t.Fatal("the busy instance was taken out")
	}
}
