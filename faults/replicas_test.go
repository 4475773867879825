package faults

// Replica faults: two comfygate processes (A and B) sharing one real
// redis-server in front of two simulated instances, with clients of both,
// and one of the replicas, or Redis, or the path between them, broken.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
)

// routesTable is TestRedisUnavailableRoutes' table, written after the
// replica fault table.
var routesTable atomic.Value // string

// leaseOutlived is how long the stopped-replica fault keeps the replica
// stopped under -faults.long: longer than an instance lease lasts, so
// that the other replica adopts the stopped one's prompts: past
// state.lease_ttl (6 s by default), with time left for the adoption.
const leaseOutlived = 15 * time.Second

// binary is the comfygate binary the replica faults run, built once per
// test binary (with -race when the tests run with it).
var binary struct {
	once      sync.Once
	dir, path string
	err       error
}

// gatewayBinary builds comfygate's main package into a temporary
// directory the first time it is called; TestMain removes it.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		binary.dir, binary.err = os.MkdirTemp("", "comfygate-faults-")
		if binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "comfygate")
		args := []string{"build", "-o", binary.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/comfygate/comfygate")...).CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

func removeBinary() {
	if binary.dir != "" {
		_ = os.RemoveAll(binary.dir)
	}
}

// replica is one comfygate process, started with a configuration file and
// restartable on the same address.
type replica struct {
	t          *testing.T
	name, addr string
	bin, conf  string
	log        string
	env        []string // added to the test's environment

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when the running process exited
}

// replicaConfig is a replica's configuration: the suite's scaled-down
// timing (as testkit.Config and testConfig set it for one gateway), the
// two instances by name, and state.url.
const replicaConfig = `listen: %s
instances:
  - name: sim0
    address: %s
  - name: sim1
    address: %s
timeout: 3s
health_check:
  interval: 100ms
  timeout: 1s
  unhealthy_threshold: 1
breaker:
  open_timeout: 500ms
failover:
  suspect_grace: 300ms
websocket:
  ping_interval: 500ms
  reconnect_min: 20ms
  reconnect_max: 200ms
jobs:
  max_concurrent: 4
  state_dir: %s
state:
  url: %s
log:
  level: %s
  format: text
`

// newReplica writes name's configuration and starts its process (launch:
// the caller waits until it is ready).
func newReplica(t *testing.T, name string, sims []string, stateURL string, env ...string) *replica {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	level := "warn"
	if *logs {
		level = "debug"
	}
	r := &replica{t: t, name: name, addr: addr, bin: gatewayBinary(t), env: env,
		conf: filepath.Join(dir, "config.yaml"), log: filepath.Join(dir, "comfygate.log")}
	yaml := fmt.Sprintf(replicaConfig, addr, sims[0], sims[1], filepath.Join(dir, "jobs"), stateURL, level)
	if err := os.WriteFile(r.conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.terminate()
		if t.Failed() || *logs {
			b, _ := os.ReadFile(r.log)
			lines := 60
			if *logs {
				lines = math.MaxInt // the whole run, to follow what the fault did
			}
			t.Logf("replica %s's log:\n%s", r.name, tail(string(b), lines))
		}
	})
	r.launch()
	return r
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// URL is the replica's base URL.
func (r *replica) URL() string { return "http://" + r.addr }

// start runs the process and waits until it is ready.
func (r *replica) start() {
	r.t.Helper()
	r.launch()
	r.waitReady()
}

// launch runs the process.
func (r *replica) launch() {
	r.t.Helper()
	f, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(r.bin, "-config", r.conf)
	cmd.Dir = filepath.Dir(r.conf)
	cmd.Env = append(os.Environ(), r.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// The replica dies with the test binary, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		r.t.Fatalf("start replica %s: %v", r.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = f.Close(); close(done) }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
}

// waitReady waits until the process is ready (ready), and fails the test
// when it exits first.
func (r *replica) waitReady() {
	r.t.Helper()
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	testkit.EventuallyWithin(r.t, 60*time.Second, "replica "+r.name+" ready", func() bool {
		select {
		case <-done:
			b, _ := os.ReadFile(r.log)
			r.t.Fatalf("replica %s exited: %s", r.name, tail(string(b), 20))
		default:
		}
		return r.ready()
	})
}

// ready reports whether the replica's /health shows both instances
// healthy with their sockets up and Redis answering.
func (r *replica) ready() bool {
	hc := &http.Client{Timeout: time.Second}
	resp, err := hc.Get(r.URL() + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct {
		Instances []struct {
			Healthy bool `json:"healthy"`
			Socket  bool `json:"socket"`
		} `json:"comfyui_instances"`
		State *struct {
			OK bool `json:"ok"`
		} `json:"state"`
	}
	if json.NewDecoder(resp.Body).Decode(&h) != nil || len(h.Instances) != 2 || h.State == nil || !h.State.OK {
		return false
	}
	for _, in := range h.Instances {
		if !in.Healthy || !in.Socket {
			return false
		}
	}
	return true
}

// signal sends sig to the running process.
func (r *replica) signal(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(sig)
	}
}

// kill ends the process with SIGKILL (kill -9) and waits for it.
func (r *replica) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a stopped process too
	_ = cmd.Process.Kill()
	<-done
}

// terminate ends the process as an operator does (SIGTERM, a graceful
// shutdown), and with SIGKILL when it is not gone within 20 s.
func (r *replica) terminate() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// replicaWorld is a replica fault's world: the fixture (its clients, its
// accounting and its row) over two replica processes, the instances they
// share, a redis-server, and one fault proxy on each replica's path to
// Redis.
type replicaWorld struct {
	*fixture
	redis    *testkit.RedisServer
	paths    [2]*testkit.FaultProxy // replica i's connection to Redis
	reps     [2]*replica            // A and B
	bal      *testkit.ClientBalancer
	opens    int    // split sessions opened, to alternate their replicas; guarded by fixture.mu
	stopLoad func() // ends the running load and waits for its submissions
}

// newReplicaWorld starts the world of a replica fault; needs as for
// newFixture.
func newReplicaWorld(t *testing.T, needs string, bound time.Duration) *replicaWorld {
	t.Helper()
	if needs != "" && !*unskip {
		t.Skip("needs " + needs)
	}
	checkBaseline(t)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	w := &replicaWorld{redis: testkit.StartRedis(t)}
	sims := testkit.Sims(t, 2, comfysim.Options{Delay: 100 * time.Millisecond, Steps: 2, RecordRuns: true})
	for i := range w.paths {
		w.paths[i] = testkit.NewFaultProxy(t, w.redis.Addr())
	}
	// Both replicas start at once, then each is waited for.
	for i, name := range []string{"A", "B"} {
		w.reps[i] = newReplica(t, name, testkit.Addrs(sims), "redis://"+w.paths[i].Addr())
	}
	for _, r := range w.reps {
		r.waitReady()
	}
	// A client's attempt waits at most 2 s for a replica (more than any
	// answer takes here, less than a stopped replica would hold it).
	w.bal = testkit.NewClientBalancer([]string{w.reps[0].addr, w.reps[1].addr}, 2*time.Second)
	w.fixture = &fixture{t: t, sims: sims, base: w.reps[0].URL(), rows: &replicaTable, ctx: ctx,
		start: time.Now(), bound: bound, hc: w.bal.Client(bound)}
	w.open = w.splitSession
	t.Cleanup(func() {
		w.closeSessions()
		w.bal.CloseIdleConnections()
	})
	return w
}

// splitSession opens a client that sends its requests to one replica and
// holds its socket on the other (replicas alternate from one client to
// the next); the balancer moves either to the other replica when its own
// fails.
func (w *replicaWorld) splitSession() (*testkit.Session, error) {
	w.mu.Lock()
	i := w.opens % 2
	w.opens++
	w.mu.Unlock()
	post, ws := w.reps[i], w.reps[1-i]
	return testkit.NewSplitSession(w.ctx, post.URL(), []string{ws.URL(), post.URL()}, "", w.hc)
}

// load submits a prompt every 100 ms, over ss in turns, until stopLoad.
func (w *replicaWorld) load(ss []*testkit.Session) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-quit:
				return
			case <-w.ctx.Done():
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() { defer wg.Done(); w.submit(ss[n%len(ss)], false) }()
		}
	}()
	w.stopLoad = func() { close(quit); wg.Wait() }
}

// awaitRuns waits until the instances have run n more prompts.
func (w *replicaWorld) awaitRuns(n int) {
	w.t.Helper()
	count := func() int {
		total := 0
		for _, s := range w.sims {
			for _, k := range s.RunsByExtra(testkit.RunTag) {
				total += k
			}
		}
		return total
	}
	want := count() + n
	testkit.Eventually(w.t, fmt.Sprintf("%d more prompts run", n), func() bool { return count() >= want })
}

// during runs the fault for d from its injection, heals it, and measures
// the recovery meanwhile (from the injection until new prompts are
// served normally, before the heal when the clients found their way
// around the fault, or after it).
func (w *replicaWorld) during(what string, d time.Duration, fault, heal func()) {
	w.t.Helper()
	w.inject(what, fault)
	healed := make(chan struct{})
	time.AfterFunc(d, func() { defer close(healed); heal() })
	// The fault lasts d whatever the probes find meanwhile.
	defer func() { <-healed }()
	w.measureRecovery()
}

// traffic opens four split clients, starts the load over them and two
// jobs on replica A, and waits until the instances ran a few prompts: the
// fault comes mid-traffic. It returns the clients.
func (w *replicaWorld) traffic() []*testkit.Session {
	w.t.Helper()
	ss := make([]*testkit.Session, 4)
	for i := range ss {
		ss[i] = w.session()
	}
	w.load(ss)
	w.jobs(2)
	w.awaitRuns(4)
	return ss
}

// note adds a note to the fault's row.
func (w *replicaWorld) note(format string, args ...any) {
	w.mu.Lock()
	w.notes = append(w.notes, fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

// Replica killed (kill -9) between two submissions, with prompts of
// both replicas queued and running on the instances and client sockets
// on both: its clients move to the other replica (their requests, and
// their sockets), and every prompt accepted runs once and reaches its
// client once (the killed replica's prompts end from /history once the
// events it relayed stop).
func TestReplicaKilled(t *testing.T) {
	w := newReplicaWorld(t, "", faultBound)
	ss := w.traffic()
	w.stopLoad()
	w.inject("kill -9 replica A (no POST in flight)", w.reps[0].kill)
	w.load(ss)
	w.measureRecovery()
	w.awaitRuns(8)
	w.stopLoad()
	w.note("%d client attempts moved to the other replica", w.bal.Failovers())
	w.finish("replica killed (kill -9) between submissions")
}

// Replica killed (kill -9) while the load runs: a POST /prompt the
// replica had read (and possibly sent on to an instance) when it died is
// sent again by its client to the other replica, with the same prompt_id.
func TestReplicaKilledMidRequest(t *testing.T) {
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	w.inject("kill -9 replica A mid-traffic", w.reps[0].kill)
	w.measureRecovery()
	w.awaitRuns(8)
	w.stopLoad()
	w.note("%d client attempts moved to the other replica", w.bal.Failovers())
	w.finish("replica killed (kill -9) mid-traffic")
}

// Replica killed (kill -9), then the instance that holds its queue: no
// replica is left to move the dead replica's prompts to the other
// instance.
func TestReplicaKilledThenInstance(t *testing.T) {
	w := newReplicaWorld(t, "", 30*time.Second)
	ss := make([]*testkit.Session, 4)
	for i := range ss {
		ss[i] = w.session()
	}
	w.hold()
	for i := range 8 {
		w.submit(ss[i%len(ss)], false)
	}
	i := w.busiest(1)
	w.inject(fmt.Sprintf("kill -9 replica A, then sim%d with its queue", i), func() {
		w.reps[0].kill()
		w.sims[i].Kill()
	})
	for _, s := range w.sims {
		s.SetPaused(false)
	}
	w.measureRecovery()
	w.finish("replica killed, then the instance holding its queue")
}

// Replica stopped (SIGSTOP), then resumed (SIGCONT): its clients'
// requests time out and move to the other replica; what the stopped
// replica had read meanwhile it serves when it resumes. Under
// -faults.long the stop outlives an instance lease.
func TestReplicaStopped(t *testing.T) {
	d := 3 * time.Second
	if *long {
		d = leaseOutlived
	}
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	w.during(fmt.Sprintf("SIGSTOP replica A for %v", d), d,
		func() { w.reps[0].signal(syscall.SIGSTOP) },
		func() { w.reps[0].signal(syscall.SIGCONT) })
	w.stopLoad()
	w.note("stopped %v; %d client attempts moved to the other replica", d, w.bal.Failovers())
	w.finish(fmt.Sprintf("replica stopped %v (SIGSTOP, SIGCONT)", d))
}

// Rolling restart under load: A is stopped as an operator does
// (SIGTERM), started again and waited for, then B. Clients follow the
// replica that is up; none sees an error.
func TestRollingRestart(t *testing.T) {
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	// The recovery is measured from the end of the restarts.
	t0 := time.Now()
	w.inject("restart A (SIGTERM), wait until ready, then B", func() {
		for _, r := range w.reps {
			r.terminate()
			r.start()
		}
	})
	w.note("the restarts took %v", time.Since(t0).Round(10*time.Millisecond))
	w.measureRecovery()
	w.awaitRuns(4)
	w.stopLoad()
	w.note("%d client attempts moved to the other replica", w.bal.Failovers())
	w.finish("rolling restart (SIGTERM, start, ready; A then B)")
}

// Redis restarted (killed and started again on its port, empty: no
// persistence) mid-traffic.
func TestRedisRestarted(t *testing.T) {
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	w.inject("redis-server killed and started again", func() {
		w.redis.Kill()
		if err := w.redis.Start(); err != nil {
			t.Fatal(err)
		}
	})
	w.measureRecovery()
	w.awaitRuns(4)
	w.stopLoad()
	w.finish("Redis restarted (empty)")
}

// Redis unreachable from both replicas for 10 s (connections refused),
// then back.
func TestRedisUnreachable(t *testing.T) {
	const d = 10 * time.Second
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	w.during(fmt.Sprintf("Redis refuses both replicas for %v", d), d,
		func() { w.paths[0].Refuse(); w.paths[1].Refuse() },
		func() { w.paths[0].Pass(); w.paths[1].Pass() })
	w.awaitRuns(4)
	w.stopLoad()
	w.note("Redis refused for %v", d)
	w.finish(fmt.Sprintf("Redis unreachable %v (refused)", d))
}

// A network split between replica A and Redis (its path drops everything:
// nothing answers, nothing is refused) while B keeps it, for 5 s, then
// healed.
func TestReplicaSplitFromRedis(t *testing.T) {
	const d = 5 * time.Second
	w := newReplicaWorld(t, "", faultBound)
	w.traffic()
	w.during(fmt.Sprintf("replica A cut from Redis for %v", d), d, w.paths[0].Hang, w.paths[0].Pass)
	w.awaitRuns(4)
	w.stopLoad()
	w.note("A cut from Redis for %v", d)
	w.finish(fmt.Sprintf("replica A split from Redis %v", d))
}

// replicaMarkdown is the replica fault table.
func replicaMarkdown(rows []row) string {
	var b strings.Builder
	b.WriteString("| fault | prompts+jobs accepted | completed | failed with a clear error | rejected with a clear error | run twice | lost | delivered twice | foreign events | time to recover | all settled | notes |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %d | %s | %s | %s |\n",
			r.fault, r.accepted, r.completed, r.failed, r.rejected, r.runTwice, r.lost, r.deliveredTwice, r.foreign,
			recoverText(r.recover), r.settled.Round(10*time.Millisecond), r.note)
	}
	if routes, _ := routesTable.Load().(string); routes != "" {
		b.WriteString("\n" + routes)
	}
	return b.String()
}

// routeKey is the API key of the routes fault (keys on, isolation on: a
// clientId is claimed in shared state).
const routeKey = "faults-route-key-0123456789abcdef"

// Every route on a replica that Redis does not answer (its path refuses
// connections) while the other replica keeps it, with API keys on: what
// each answers, for a prompt, a file and a job the other replica made
// while Redis answered. The outcomes are logged as a table
// (docs/state.md shows it) and checked against what docs/state.md says.
func TestRedisUnavailableRoutes(t *testing.T) {
	checkBaseline(t)
	ctx, cancel := context.WithTimeout(context.Background(), faultBound)
	defer cancel()
	rs := testkit.StartRedis(t)
	sims := testkit.Sims(t, 2, comfysim.Options{Delay: 20 * time.Millisecond, Steps: 1, RecordRuns: true})
	pathA := testkit.NewFaultProxy(t, rs.Addr())
	env := "COMFYGATE_API_KEYS=" + routeKey
	a := newReplica(t, "A", testkit.Addrs(sims), "redis://"+pathA.Addr(), env)
	b := newReplica(t, "B", testkit.Addrs(sims), rs.URL(), env)
	a.waitReady()
	b.waitReady()
	hc := &http.Client{Timeout: 20 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	call := func(base, method, path, body string, hdr ...string) (int, string, http.Header) {
		req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		if err != nil {
			return 0, err.Error(), http.Header{}
		}
		req.Header.Set("Authorization", "Bearer "+routeKey)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error(), http.Header{}
		}
		defer resp.Body.Close()
		var sb strings.Builder
		_, _ = io.Copy(&sb, io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, sb.String(), resp.Header
	}
	promptBody := func(clientID string, color int) string {
		b, _ := json.Marshal(map[string]any{"prompt": testkit.Workflow(color, "routes"), "client_id": clientID})
		return string(b)
	}

	// On B, with Redis: a prompt for each phase (its clientId claimed) and
	// its output, and a job with an Idempotency-Key.
	made := func(color int) (id string, file testkit.FileRef) {
		t.Helper()
		code, body, _ := call(b.URL(), http.MethodPost, "/prompt", promptBody("routes-client-b", color))
		var sub struct {
			PromptID string `json:"prompt_id"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &sub) != nil || sub.PromptID == "" {
			t.Fatalf("POST /prompt on B: %d %s", code, body)
		}
		testkit.Eventually(t, "B's prompt in its history", func() bool {
			_, h, _ := call(b.URL(), http.MethodGet, "/history/"+sub.PromptID, "")
			var v map[string]struct {
				Outputs map[string]struct {
					Images []testkit.FileRef `json:"images"`
				} `json:"outputs"`
			}
			if json.Unmarshal([]byte(h), &v) != nil {
				return false
			}
			for _, o := range v[sub.PromptID].Outputs {
				if len(o.Images) > 0 {
					file = o.Images[0]
					return true
				}
			}
			return false
		})
		return sub.PromptID, file
	}
	jobBody, _ := json.Marshal(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(testkit.PNG(16, 16))})
	code, body, _ := call(b.URL(), http.MethodPost, "/api/remove-background", string(jobBody), "Idempotency-Key", "routes-job-b")
	var job struct {
		JobID string `json:"job_id"`
	}
	if code != http.StatusAccepted || json.Unmarshal([]byte(body), &job) != nil || job.JobID == "" {
		t.Fatalf("job on B: %d %s", code, body)
	}
	type probe struct {
		route, method, path, body string
		hdr                       []string
	}
	probes := func(phase, id string, file testkit.FileRef) []probe {
		q := "filename=" + file.Filename + "&subfolder=" + file.Subfolder + "&type=" + file.Type
		return []probe{
			{route: "GET /health", method: http.MethodGet, path: "/health"},
			{route: "POST /prompt, a clientId new to A", method: http.MethodPost, path: "/prompt", body: promptBody("routes-new-"+phase, 2)},
			{route: "POST /prompt, the clientId of B's prompt", method: http.MethodPost, path: "/prompt", body: promptBody("routes-client-b", 3)},
			{route: "POST /prompt without client_id", method: http.MethodPost, path: "/prompt", body: `{"prompt": ` + mustJSON(testkit.Workflow(4, "routes")) + `}`},
			{route: "GET /ws?clientId, a clientId new to A", method: "WS", path: "routes-ws-" + phase},
			{route: "GET /history/{id} of B's prompt", method: http.MethodGet, path: "/history/" + id},
			{route: "GET /view of B's output", method: http.MethodGet, path: "/view?" + q},
			{route: "GET /queue", method: http.MethodGet, path: "/queue"},
			{route: `POST /interrupt {"prompt_id"} of B's prompt`, method: http.MethodPost, path: "/interrupt", body: `{"prompt_id": "` + id + `"}`},
			{route: "POST /api/remove-background with an Idempotency-Key", method: http.MethodPost, path: "/api/remove-background", body: string(jobBody), hdr: []string{"Idempotency-Key", "routes-job-" + phase}},
			{route: "POST /api/remove-background without one", method: http.MethodPost, path: "/api/remove-background", body: string(jobBody)},
			{route: "GET /api/jobs?source=comfygate", method: http.MethodGet, path: "/api/jobs?source=comfygate"},
			{route: "GET /api/jobs/{id}/status of B's job", method: http.MethodGet, path: "/api/jobs/" + job.JobID + "/status"},
			// Last: it deletes what the reads above read.
			{route: `POST /history {"delete"} of B's prompt`, method: http.MethodPost, path: "/history", body: `{"delete": ["` + id + `"]}`},
		}
	}
	// The requests of a phase go one after the other (so that what one
	// waits for is its own), on a prompt of its own.
	run := func(phase string, id string, file testkit.FileRef) map[string]string {
		ps := probes(phase, id, file)
		got := make([]string, len(ps))
		ask := func(i int) {
			p := ps[i]
			var code int
			var body string
			var hdr http.Header
			t0 := time.Now()
			if p.method == "WS" {
				code, body, hdr = wsHandshake(ctx, a.addr, p.path)
			} else {
				code, body, hdr = call(a.URL(), p.method, p.path, p.body, p.hdr...)
			}
			took := time.Since(t0)
			got[i] = describe(code, body, hdr)
			if p.method == http.MethodGet && strings.Contains(body, id) {
				got[i] += " (with B's prompt)"
			}
			if p.path == "/api/jobs?source=comfygate" && strings.Contains(body, job.JobID) {
				got[i] += " (with B's job)"
			}
			if took >= 100*time.Millisecond {
				// Slow answers say how long they took.
				got[i] += fmt.Sprintf(" after %.1f s", took.Seconds())
			}
		}
		for i := range ps {
			ask(i)
		}
		out := map[string]string{}
		for i, p := range ps {
			out[p.route] = got[i]
		}
		return out
	}
	upID, upFile := made(1)
	downID, downFile := made(5)
	cutID, cutFile := made(6)
	up := run("up", upID, upFile)
	// Refused: nothing listens at Redis's address (a stopped server).
	pathA.Refuse()
	testkit.Eventually(t, "A's /health to show Redis down", func() bool {
		_, h, _ := call(a.URL(), http.MethodGet, "/health", "")
		return strings.Contains(h, `"ok":false`)
	})
	down := run("down", downID, downFile)
	// Cut: connections accepted and nothing answered (a network split).
	// Each request that needs Redis then waits seconds, so this phase runs
	// under -faults.long.
	cut := map[string]string{}
	if *long {
		pathA.Pass()
		testkit.Eventually(t, "A's /health to show Redis back", func() bool {
			_, h, _ := call(a.URL(), http.MethodGet, "/health", "")
			return strings.Contains(h, `"ok":true`)
		})
		pathA.Hang()
		cut = run("cut", cutID, cutFile)
	}
	pathA.Pass()

	for route, want := range map[string]string{
		"GET /health":                                         "200, state ok: false",
		"POST /prompt, a clientId new to A":                   "503, Retry-After: 1 `state_unavailable`",
		"GET /ws?clientId, a clientId new to A":               "503, Retry-After: 1 `state_unavailable`",
		"GET /history/{id} of B's prompt":                     "200 `{}`",
		"POST /api/remove-background with an Idempotency-Key": "503, Retry-After: 1 `state_unavailable`",
	} {
		for _, got := range []string{down[route], cut[route]} {
			if got, _, _ = strings.Cut(got, " after "); got != "" && got != want {
				t.Errorf("%s with Redis down: %s, want %s (docs/state.md)", route, got, want)
			}
		}
	}
	var tb strings.Builder
	tb.WriteString("| route on replica A, for what B made (keys on) | Redis answering | Redis refusing A | A cut from Redis |\n| --- | --- | --- | --- |\n")
	for _, p := range probes("", "", testkit.FileRef{}) {
		c := cut[p.route]
		if c == "" {
			c = "(-faults.long)"
		}
		fmt.Fprintf(&tb, "| %s | %s | %s | %s |\n", p.route, up[p.route], down[p.route], c)
	}
	t.Logf("routes with Redis unavailable:\n%s", tb.String())
	routesTable.Store(tb.String())
}

// describe is an answer as the routes table shows it: the status, a
// Retry-After, an error's type, and a short body or what it is.
func describe(code int, body string, hdr http.Header) string {
	ans := fmt.Sprintf("%d", code)
	if ra := hdr.Get("Retry-After"); ra != "" {
		ans += ", Retry-After: " + ra
	}
	var v struct {
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
		State *struct {
			OK bool `json:"ok"`
		} `json:"state"`
	}
	switch {
	case json.Unmarshal([]byte(body), &v) == nil && v.Error.Type != "":
		ans += " `" + v.Error.Type + "`"
	case v.State != nil:
		ans += fmt.Sprintf(", state ok: %v", v.State.OK)
	case code == http.StatusSwitchingProtocols:
		ans += " (upgraded)"
	case strings.HasPrefix(hdr.Get("Content-Type"), "image/"):
		ans += " (the image)"
	case len(body) <= 40 && strings.TrimSpace(body) != "":
		ans += " `" + strings.TrimSpace(body) + "`"
	}
	return ans
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// wsHandshake opens /ws?clientId=id on addr with the route key and
// returns the handshake's status (101 when upgraded), body and headers.
func wsHandshake(ctx context.Context, addr, id string) (int, string, http.Header) {
	d := websocket.Dialer{HandshakeTimeout: 20 * time.Second}
	conn, resp, err := d.DialContext(ctx, "ws://"+addr+"/ws?clientId="+id+"&token="+routeKey, nil)
	if conn != nil {
		_ = conn.Close()
	}
	if resp == nil {
		return 0, fmt.Sprint(err), http.Header{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), resp.Header
}
