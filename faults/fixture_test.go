package faults

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

var (
	tableFile        = flag.String("faults.table", "", "write the fault table as markdown to this file")
	replicaTableFile = flag.String("faults.replicas.table", "", "write the replica fault table (replicas_test.go) as markdown to this file")
	unskip           = flag.Bool("faults.unskip", false, "run the faults marked as needing a behaviour comfygate lacks instead of skipping them")
	full             = flag.Bool("faults.full", false, "full size under the race detector too (1,000 concurrent submissions)")
	long             = flag.Bool("faults.long", false, "also the faults that run with production timing (tens of seconds)")
	logs             = flag.Bool("faults.log", false, "print the gateway's debug logs (to follow what one fault did)")
)

// faultBound bounds one fault's whole run: every client wait, every job
// poll, the settling of the instances.
const faultBound = 90 * time.Second

// row is one line of the fault table.
type row struct {
	fault                                   string
	accepted, completed, failed, rejected   int
	runTwice, lost, deliveredTwice, foreign int
	recover, settled                        time.Duration
	note                                    string
}

// rowTable is the rows of one table, in the order the faults finished.
type rowTable struct {
	mu   sync.Mutex
	rows []row
}

// table is the fault table of one gateway; replicaTable the table of the
// replica faults (replicas_test.go).
var table, replicaTable rowTable

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	removeBinary()
	for _, out := range []struct {
		rows *rowTable
		file string
		md   func([]row) string
	}{{&table, *tableFile, markdown}, {&replicaTable, *replicaTableFile, replicaMarkdown}} {
		out.rows.mu.Lock()
		rows := out.rows.rows
		out.rows.mu.Unlock()
		if len(rows) == 0 {
			continue
		}
		md := out.md(rows)
		if testing.Verbose() {
			fmt.Print("\n" + md)
		}
		if out.file != "" {
			if err := os.WriteFile(out.file, []byte(md), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "faults table:", err)
				code = 1
			}
		}
	}
	os.Exit(code)
}

func markdown(rows []row) string {
	var b strings.Builder
	b.WriteString("| fault | prompts+jobs accepted | completed | failed with a clear error | rejected with a clear error | run twice | lost | time to recover | all settled | notes |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %s | %s | %s |\n",
			r.fault, r.accepted, r.completed, r.failed, r.rejected, r.runTwice, r.lost, recoverText(r.recover),
			r.settled.Round(10*time.Millisecond), r.note)
	}
	return b.String()
}

func recoverText(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// fixture is one fault's world: the stack, its clients and everything they
// submitted.
type fixture struct {
	t     *testing.T
	st    *stack.Stack                     // nil for the replica faults, whose gateways are processes
	sims  []*comfysim.Server               // the instances
	base  string                           // the URL of the gateway the job clients use
	open  func() (*testkit.Session, error) // a new client socket
	rows  *rowTable                        // where finish adds the fault's row
	hc    *http.Client
	ctx   context.Context
	start time.Time
	bound time.Duration

	mu       sync.Mutex // guards the fields below
	all      []*tracked
	alljobs  []*trackedJob
	sessions []*testkit.Session
	faultAt  time.Time
	noneLeft bool // no instance was left for a while: accepted work may fail, clearly
	recover  time.Duration
	notes    []string
	polled   struct{ accepted, completed int } // prompts of polling clients, counted by their test
	wg       sync.WaitGroup                    // one per tracked prompt or job
	color    int
}

type tracked struct {
	run   *testkit.Run
	res   testkit.Result
	probe bool
	done  chan struct{}
}

type trackedJob struct {
	job  testkit.Job
	end  testkit.JobEnd
	done chan struct{}
}

// testConfig scales comfygate's timing down so each fault takes seconds:
// health checks every 100 ms, sockets pinged every 500 ms, a 300 ms
// suspect grace, a 3 s upstream timeout.
func testConfig(c *config.Config) {
	c.Timeout = 3 * time.Second
	c.WebSocket.PingInterval = 500 * time.Millisecond
	c.Jobs.MaxConcurrent = 4
}

// newFixture starts two simulators (node time delay), each behind a fault
// proxy, and the gateway with the job API; mod adjusts the configuration
// after testConfig. A non-empty needs skips the fault (unless
// -faults.unskip): it names the behaviour the fault needs that comfygate
// lacks.
func newFixture(t *testing.T, needs string, delay time.Duration, mod func(*config.Config)) *fixture {
	t.Helper()
	return newFixtureWithin(t, faultBound, needs, delay, mod)
}

// newFixtureWithin is newFixture for a fault that may take up to bound.
func newFixtureWithin(t *testing.T, bound time.Duration, needs string, delay time.Duration, mod func(*config.Config)) *fixture {
	t.Helper()
	if needs != "" && !*unskip {
		t.Skip("needs " + needs)
	}
	checkBaseline(t)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	st := stack.Start(t, stack.Options{
		Sim:    comfysim.Options{Delay: delay, Steps: 2, RecordRuns: true},
		Faults: true,
		Jobs:   true,
		Logger: gatewayLogger(),
		Config: func(c *config.Config) {
			testConfig(c)
			if mod != nil {
				mod(c)
			}
		},
	})
	f := &fixture{t: t, st: st, sims: st.Sims, base: st.URL, rows: &table, ctx: ctx, start: time.Now(), bound: bound,
		hc: &http.Client{Timeout: bound, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	f.open = func() (*testkit.Session, error) { return testkit.NewSession(f.ctx, f.st.URL, "", f.hc) }
	t.Cleanup(func() {
		f.closeSessions()
		f.hc.CloseIdleConnections()
	})
	return f
}

// gatewayLogger is the gateway's logger: debug lines on stderr with
// -faults.log, nothing otherwise.
func gatewayLogger() *slog.Logger {
	if !*logs {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// checkBaseline records the goroutine count and heap now and, when the
// test ends (after the stack and simulators stopped), checks that both
// came back: goroutines to the baseline within a bounded wait, the heap
// within 64 MiB of it.
func checkBaseline(t *testing.T) {
	t.Helper()
	runtime.GC()
	base, _ := goroutines()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc
	t.Cleanup(func() {
		var n int
		var dump string
		if !testkit.Poll(15*time.Second, func() bool {
			n, dump = goroutines()
			return n <= base
		}) {
			t.Errorf("goroutines: %d after the fault, %d before: leaked\n%s", n, base, dump)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		grown := int64(ms.HeapAlloc) - int64(heap)
		t.Logf("goroutines %d -> %d; heap %d KiB -> %d KiB", base, n, heap>>10, ms.HeapAlloc>>10)
		if grown > 64<<20 {
			t.Errorf("heap grew by %d MiB over the fault", grown>>20)
		}
	})
}

// idleGoroutines are goroutines that outlive a test by design: fasthttp's
// process-wide date and DNS-cache tickers (started once), its per-client
// idle-connection cleaner, which exits by itself once its connections have
// been idle for MaxIdleConnDuration (10 s), and its server worker pool's
// cleaner, which notices the server stopped when its 10 s sleep ends.
var idleGoroutines = []string{
	"fasthttp.updateServerDate",
	"fasthttp.(*TCPDialer).tcpAddrsClean",
	"fasthttp.(*HostClient).connsCleaner",
	"fasthttp.(*workerPool).Start.func2",
	"testing.(*T).Run", "testing.tRunner", "testing.runTests", "testing.(*M).Run",
	"runtime/pprof", "os/signal",
}

// goroutines counts the goroutines not in idleGoroutines and returns their
// stacks.
func goroutines() (int, string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var kept []string
next:
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, skip := range idleGoroutines {
			if strings.Contains(g, skip) {
				continue next
			}
		}
		kept = append(kept, g)
	}
	return len(kept), strings.Join(kept, "\n\n")
}

// session opens a client socket.
func (f *fixture) session() *testkit.Session {
	f.t.Helper()
	s, err := f.open()
	if err != nil {
		f.t.Fatalf("client socket: %v", err)
	}
	f.mu.Lock()
	f.sessions = append(f.sessions, s)
	f.mu.Unlock()
	return s
}

func (f *fixture) closeSessions() {
	f.mu.Lock()
	ss := f.sessions
	f.sessions = nil
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Add(1)
		go func() { defer wg.Done(); s.Close() }()
	}
	wg.Wait()
}

// submit queues one prompt on s and tracks it to its end.
func (f *fixture) submit(s *testkit.Session, probe bool) *tracked {
	f.mu.Lock()
	f.color++
	c := f.color
	f.mu.Unlock()
	tr := &tracked{probe: probe, done: make(chan struct{})}
	tr.run = s.Submit(f.ctx, testkit.Workflow(c, "faults"))
	f.mu.Lock()
	f.all = append(f.all, tr)
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(tr.done)
		tr.res = tr.run.Wait(f.ctx)
	}()
	return tr
}

// prompts submits n prompts at once, spread over k new client sockets,
// and returns once every POST /prompt was answered.
func (f *fixture) prompts(n, k int) []*tracked {
	f.t.Helper()
	ss := make([]*testkit.Session, k)
	for i := range ss {
		ss[i] = f.session()
	}
	out := make([]*tracked, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = f.submit(ss[i%k], false)
		}()
	}
	wg.Wait()
	return out
}

// jobs submits n background-removal jobs through the job API and tracks
// them to their end.
func (f *fixture) jobs(n int) {
	if n == 0 {
		return
	}
	img := testkit.PNG(16, 16)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tj := &trackedJob{done: make(chan struct{})}
			tj.job = testkit.SubmitJob(f.ctx, f.hc, f.base, "/api/remove-background", img)
			f.mu.Lock()
			f.alljobs = append(f.alljobs, tj)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer close(tj.done)
				if tj.job.Code == http.StatusAccepted {
					tj.end = testkit.WaitJob(f.ctx, f.hc, f.base, tj.job.ID)
				}
			}()
		}()
	}
	wg.Wait()
}

// inject applies the fault and starts its clock.
func (f *fixture) inject(what string, fault func()) {
	f.t.Logf("fault: %s", what)
	fault()
	f.mu.Lock()
	f.faultAt = time.Now()
	f.mu.Unlock()
}

// measureRecovery sends rounds of two probe prompts (one per instance when
// both are available) from the fault's injection on, and records the time
// from the injection to the end of the first round whose probes both
// succeeded within 3 s: how long until new work is served normally again.
func (f *fixture) measureRecovery() {
	f.t.Helper()
	s := f.session()
	f.mu.Lock()
	at := f.faultAt
	f.mu.Unlock()
	recovered := false
	// Rounds 50 ms apart, until one succeeds or the fault's bound ends.
	testkit.PollEvery(f.bound, 50*time.Millisecond, func() bool {
		if f.ctx.Err() != nil {
			return true
		}
		round := []*tracked{f.submit(s, true), f.submit(s, true)}
		ok := true
		deadline := time.NewTimer(3 * time.Second)
		defer deadline.Stop()
		for _, p := range round {
			select {
			case <-p.done:
				ok = ok && p.res.Succeeded()
			case <-deadline.C:
				ok = false
			case <-f.ctx.Done():
				ok = false
			}
			if !ok {
				break
			}
		}
		recovered = ok
		return ok
	})
	if recovered {
		f.mu.Lock()
		f.recover = time.Since(at)
		f.mu.Unlock()
		return
	}
	f.t.Errorf("new prompts were not served again within %v", f.bound)
}

// hold pauses every simulator's queue before work is submitted, so that
// waitRunning finds the queue it needs however fast the machine is; the
// gateway, seeing every queue grow alike, spreads the work evenly.
func (f *fixture) hold() {
	for _, s := range f.sims {
		s.SetPaused(true)
	}
}

// busiest waits until some simulator (all held by hold) has more than
// pending prompts queued and returns the index of the one with most: the
// instance to fault (the gateway may have spread the work unevenly).
func (f *fixture) busiest(pending int) int {
	f.t.Helper()
	best := -1
	if !testkit.Poll(testkit.WaitBound, func() bool {
		most := pending
		for i, s := range f.sims {
			if _, p := s.Queue(); p > most {
				best, most = i, p
			}
		}
		return best >= 0
	}) {
		f.t.Fatalf("no instance got %d prompts (%s)", pending+1, f.queues())
	}
	return best
}

func (f *fixture) queues() string {
	var qs []string
	for i, s := range f.sims {
		r, p := s.Queue()
		qs = append(qs, fmt.Sprintf("sim%d: %d running, %d pending", i, r, p))
	}
	return strings.Join(qs, "; ")
}

// waitRunning waits until sim (every simulator held by hold) has more than
// pending prompts queued, lets all of them go, and returns once sim runs
// one with at least pending more queued.
func (f *fixture) waitRunning(sim *comfysim.Server, pending int) {
	f.t.Helper()
	if !testkit.Poll(testkit.WaitBound, func() bool {
		_, p := sim.Queue()
		return p > pending
	}) {
		f.t.Fatalf("not %d prompts queued on the instance (%s)", pending+1, f.queues())
	}
	for _, s := range f.sims {
		s.SetPaused(false)
	}
	// Tight polling: the prompt runs for one node time only.
	if !testkit.PollEvery(testkit.WaitBound, time.Millisecond, func() bool {
		r, p := sim.Queue()
		return r == 1 && p >= pending
	}) {
		f.t.Fatalf("the instance did not start a prompt with %d queued", pending)
	}
}

// awaitTicks waits until the first fault proxy's loop (Flap,
// DropWebSockets) has taken n more steps.
func (f *fixture) awaitTicks(n int) {
	f.t.Helper()
	fp := f.st.Faults[0]
	want := fp.Ticks() + n
	testkit.Eventually(f.t, fmt.Sprintf("%d more steps of the fault", n), func() bool { return fp.Ticks() >= want })
}

// waitWorkload waits for every prompt and job submitted so far, probes
// aside, to end.
func (f *fixture) waitWorkload() {
	f.mu.Lock()
	all, jobs := append([]*tracked(nil), f.all...), append([]*trackedJob(nil), f.alljobs...)
	f.mu.Unlock()
	for _, p := range all {
		if !p.probe {
			<-p.done
		}
	}
	for _, j := range jobs {
		<-j.done
	}
}

// waitPrompts waits for every prompt submitted so far, probes aside, to
// end (not the jobs).
func (f *fixture) waitPrompts() {
	f.mu.Lock()
	all := append([]*tracked(nil), f.all...)
	f.mu.Unlock()
	for _, p := range all {
		if !p.probe {
			<-p.done
		}
	}
}

// settle waits for every tracked prompt and job to end, and then for every
// live simulator's queue to drain (a woken instance runs what it still
// holds: that is when a prompt runs twice).
func (f *fixture) settle() {
	f.t.Helper()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(f.bound):
		_, dump := goroutines()
		f.t.Fatalf("clients still waiting after %v:\n%s", f.bound, dump)
	}
	testkit.Eventually(f.t, "the instances' queues to drain", func() bool {
		for _, s := range f.sims {
			if r, p := s.Queue(); r+p > 0 {
				return false
			}
		}
		return true
	})
}

// clearError reports whether a rejected submission's answer says why: an
// HTTP error status with a body (ComfyUI's or comfygate's error shape).
func clearError(code int, body []byte) bool {
	if code < 400 || len(body) == 0 {
		return false
	}
	if code == http.StatusServiceUnavailable {
		var e struct {
			Error struct {
				Type, Message string
			} `json:"error"`
		}
		return json.Unmarshal(body, &e) == nil && e.Error.Type != "" && e.Error.Message != ""
	}
	return true
}

// finish counts everything, checks the promises, and adds the fault's row
// to the table.
func (f *fixture) finish(fault string) row {
	f.t.Helper()
	f.settle()
	r := row{fault: fault, settled: time.Since(f.start)}
	defer func() { f.t.Logf("counted and checked in %v", time.Since(f.start)-r.settled) }()
	f.mu.Lock()
	prompts, jobs := f.all, f.alljobs
	r.recover = f.recover
	notes := f.notes
	r.accepted, r.completed = f.polled.accepted, f.polled.completed
	f.mu.Unlock()

	// Runs on the instances: prompts by their tag (the gateway may send a
	// prompt under another id), jobs by their id.
	runs := map[string]int{}     // prompt tag -> runs
	liveRuns := map[string]int{} // the same, on instances that are up now
	jobRuns := map[string]int{}  // prompt id -> runs
	for _, s := range f.sims {
		for id, n := range s.RunsByExtra(testkit.RunTag) {
			runs[id] += n
			if s.Up() {
				liveRuns[id] += n
			}
		}
		for id, n := range s.Runs() {
			jobRuns[id] += n
		}
	}
	var check []*testkit.Run // completed prompts whose outputs must answer
	goneHistory := 0
	viaHistory := 0  // completed prompts whose end the client learnt from /history
	ranRejected := 0 // rejected to the client, yet an instance ran it
	codes := map[int]int{}
	ctx, cancel := context.WithTimeout(context.Background(), f.bound)
	defer cancel()
	for _, p := range prompts {
		id := p.run.ID
		if runs[id] > 1 {
			r.runTwice++
			f.t.Errorf("prompt %s ran %d times on the instances", id, runs[id])
		}
		if p.res.Successes > 1 {
			r.deliveredTwice++
			f.t.Errorf("prompt %s: its client got execution_success %d times", id, p.res.Successes)
		}
		if p.run.Code != http.StatusOK {
			r.rejected++
			codes[p.run.Code]++
			if runs[id] > 0 {
				ranRejected++
			}
			if codes[p.run.Code] == 1 {
				f.t.Logf("prompt rejected: %d %.200s (%v)", p.run.Code, p.run.Body, p.run.Err)
			}
			if !clearError(p.run.Code, p.run.Body) {
				f.t.Errorf("prompt %s: rejected without a clear error: %d %q (%v)", id, p.run.Code, p.run.Body, p.run.Err)
			}
			continue
		}
		if p.run.Err != nil {
			f.t.Errorf("prompt %s: %v", id, p.run.Err)
		}
		r.accepted++
		switch {
		case p.res.Succeeded():
			r.completed++
			if p.res.ViaHistory {
				viaHistory++
			}
			if runs[id] == 0 {
				f.t.Errorf("prompt %s: its client saw it succeed (%s) but no instance ran it", id, p.res.End)
			}
			if liveRuns[id] == 0 && runs[id] > 0 {
				// It ran on an instance that died since: its history
				// and outputs died with it (a known limit, as with one
				// restarted ComfyUI).
				goneHistory++
				break
			}
			check = append(check, p.run)
		case p.res.End == "execution_error" && p.res.ErrorMessage != "":
			r.failed++
			if !f.noneLeft {
				f.t.Errorf("prompt %s failed while an instance was left: %s: %s", id, p.res.ErrorType, p.res.ErrorMessage)
			} else {
				f.t.Logf("prompt %s failed: %s: %s", id, p.res.ErrorType, p.res.ErrorMessage)
			}
		default:
			r.lost++
			f.t.Errorf("prompt %s accepted and lost: its client saw %q (runs on instances: %d)", id, p.res.End, runs[id])
		}
	}
	// As the websocket example does after each prompt: /history/{id}, then
	// /view of every output (16 clients at a time).
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, run := range check {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := run.CheckOutputs(ctx); err != nil {
				f.t.Errorf("prompt %s finished but its outputs do not answer: %v (%s)", run.ID, err, f.whereRan(run.ID))
			}
		}()
	}
	wg.Wait()
	for _, j := range jobs {
		id := j.job.ID
		if j.job.Code != http.StatusAccepted {
			r.rejected++
			codes[j.job.Code]++
			if !clearError(j.job.Code, j.job.Body) {
				f.t.Errorf("job rejected without a clear error: %d %q (%v)", j.job.Code, j.job.Body, j.job.Err)
			}
			continue
		}
		r.accepted++
		if jobRuns[id] > 1 {
			r.runTwice++
			f.t.Errorf("job %s ran %d times on the instances", id, jobRuns[id])
		}
		switch {
		case j.end.Status == "completed":
			r.completed++
		case j.end.Status == "failed" && j.end.Error != "":
			r.failed++
			if !f.noneLeft {
				f.t.Errorf("job %s failed while an instance was left: %s", id, j.end.Error)
			} else {
				f.t.Logf("job %s failed: %s", id, j.end.Error)
			}
		default:
			r.lost++
			f.t.Errorf("job %s accepted and lost: status %q (runs on instances: %d)", id, j.end.Status, jobRuns[id])
		}
	}
	f.mu.Lock()
	ss := f.sessions
	f.mu.Unlock()
	for _, s := range ss {
		if fr := s.Foreign(); len(fr) > 0 {
			r.foreign += len(fr)
			f.t.Errorf("client %s got events of prompts it did not submit: %v", s.ClientID(), fr)
		}
	}
	if ranRejected > 0 {
		notes = append(notes, fmt.Sprintf("%d rejected to the client but run by an instance", ranRejected))
	}
	if viaHistory > 0 && f.rows == &replicaTable {
		// Replicas: the ends whose events did not cross to the client's socket.
		notes = append(notes, fmt.Sprintf("%d ends learnt from /history", viaHistory))
	}
	if goneHistory > 0 {
		notes = append(notes, fmt.Sprintf("%d finished on an instance that died since (history gone with it)", goneHistory))
	}
	if len(codes) > 0 {
		var cs []string
		for c, n := range codes {
			cs = append(cs, fmt.Sprintf("%d×%d", n, c))
		}
		sort.Strings(cs)
		notes = append(notes, "rejected: "+strings.Join(cs, ", "))
	}
	r.note = strings.Join(notes, "; ")
	f.t.Logf("%s: accepted %d, completed %d, failed clearly %d, rejected %d, run twice %d, lost %d, recover %v, settled %v (%s)",
		fault, r.accepted, r.completed, r.failed, r.rejected, r.runTwice, r.lost, r.recover, r.settled, r.note)
	f.rows.mu.Lock()
	f.rows.rows = append(f.rows.rows, r)
	f.rows.mu.Unlock()
	return r
}

// whereRan says which simulators ran the prompt tagged id, for failure
// messages.
func (f *fixture) whereRan(id string) string {
	var out []string
	for i, s := range f.sims {
		if n := s.RunsByExtra(testkit.RunTag)[id]; n > 0 {
			out = append(out, fmt.Sprintf("ran %d× on sim%d (up %v)", n, i, s.Up()))
		}
	}
	if len(out) == 0 {
		return "ran on no instance"
	}
	return strings.Join(out, ", ")
}
