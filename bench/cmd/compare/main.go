// Command compare measures comfygate against a direct connection to a
// ComfyUI instance, nginx and HAProxy, in one run on this machine, and the
// gateway's own figures (WebSocket fan-out, the job API, scheduling, fleet
// size). It starts everything it measures on free loopback ports, stops it
// all when done or interrupted, and writes a markdown table and JSON under
// bench/results/.
//
//	go run ./bench/cmd/compare                      # every section (~10 min)
//	go run ./bench/cmd/compare -sections get,ws     # some sections
//	go run ./bench/cmd/compare -h                   # flags
//
// Sections: get (small JSON GETs, /object_info, added latency at one
// connection), view (/view of 10 MB and 500 MB, comfygate's peak RSS),
// upload (/upload/image of 10 MB), submit (POST /prompt), ws (event latency
// at 1, 100, 1,000 clients; RSS per idle client), jobs (the job API against
// the direct round trip), sched (2-instance scaling, makespan with one slow
// instance, burst split), fleet (idle CPU, RSS and submit latency at 2, 20
// and 200 instances), replicas (POST /prompt with state.url on a local
// redis-server against in memory; a rolling restart of two replicas under
// load, counting client-visible errors).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// allSections in the order they run.
var allSections = []string{"get", "view", "upload", "submit", "ws", "jobs", "sched", "fleet", "replicas"}

// options are the command's flags.
type options struct {
	sections   []string
	rounds     int
	dur        time.Duration
	conns      int
	bigDur     time.Duration
	bigConns   int
	bigRounds  int
	wsClients  []int
	wsIdle     int
	wsTicks    int
	jobs       int
	waitJobs   int
	fleet      []int
	fleetIdle  time.Duration
	out        string
	install    bool
	keep       bool
	commandRun string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func parseFlags() (options, error) {
	var o options
	sections := flag.String("sections", "all", "comma-separated sections to run: "+strings.Join(allSections, ",")+" (or all)")
	flag.IntVar(&o.rounds, "rounds", 3, "alternating rounds per measurement")
	flag.DurationVar(&o.dur, "d", 4*time.Second, "length of one wrk round (small GETs)")
	flag.IntVar(&o.conns, "c", 32, "wrk connections for the request-rate rows (wrk -t1)")
	flag.DurationVar(&o.bigDur, "big-d", 3*time.Second, "length of one wrk round of the 10 MB /view and upload rows")
	flag.IntVar(&o.bigConns, "big-c", 4, "wrk connections of the 10 MB rows")
	flag.IntVar(&o.bigRounds, "big-rounds", 2, "rounds of the 500 MB /view")
	wsClients := flag.String("ws-clients", "1,100,1000", "client counts of the WebSocket latency rows")
	flag.IntVar(&o.wsIdle, "ws-idle", 2000, "idle WebSocket clients for the RSS-per-client figure")
	flag.IntVar(&o.wsTicks, "ws-ticks", 40, "events per round of the WebSocket latency rows")
	flag.IntVar(&o.jobs, "jobs", 60, "jobs per round of the job API comparison")
	flag.IntVar(&o.waitJobs, "wait-jobs", 20, "jobs of 45 MB left waiting for the memory figure (0: skip)")
	fleet := flag.String("fleet", "2,20,200", "fleet sizes")
	flag.DurationVar(&o.fleetIdle, "fleet-idle", 10*time.Second, "how long idle CPU is measured at each fleet size")
	flag.StringVar(&o.out, "out", "bench/results", "directory for the results (a relative one is taken from the repository's root)")
	flag.BoolVar(&o.install, "install", true, "apt-get install nginx-light, haproxy and wrk when missing")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *sections == "all" {
		o.sections = allSections
	} else {
		for _, s := range strings.Split(*sections, ",") {
			if s = strings.TrimSpace(s); !slices.Contains(allSections, s) {
				return o, fmt.Errorf("unknown section %q: want %s or all", s, strings.Join(allSections, ","))
			}
			o.sections = append(o.sections, strings.TrimSpace(s))
		}
	}
	var err error
	if o.wsClients, err = intList(*wsClients); err != nil {
		return o, fmt.Errorf("-ws-clients: %w", err)
	}
	if o.fleet, err = intList(*fleet); err != nil {
		return o, fmt.Errorf("-fleet: %w", err)
	}
	if o.rounds < 1 || o.bigRounds < 1 || o.conns < 1 || o.bigConns < 1 {
		return o, errors.New("-rounds, -big-rounds, -c and -big-c must be at least 1")
	}
	o.commandRun = strings.TrimSpace("go run ./bench/cmd/compare " + strings.Join(os.Args[1:], " "))
	return o, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (o options) has(s string) bool { return slices.Contains(o.sections, s) }

func run() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	root, err := repoRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "comfygate-bench-")
	if err != nil {
		return err
	}
	e := &env{root: root, work: work, ps: &procs{dir: work}, hc: &http.Client{Timeout: 30 * time.Second}}
	defer func() {
		e.ps.stopAll()
		if e.redis != nil {
			e.redis.Kill()
		}
		if o.keep {
			logf("work directory kept: %s", work)
		} else {
			_ = os.RemoveAll(work)
		}
	}()

	needProxies := o.has("get") || o.has("view") || o.has("upload") || o.has("submit")
	if needProxies || o.has("ws") {
		if e.tools, err = ensureTools(ctx, o.install); err != nil {
			return err
		}
	}
	logf("building comfygate and miniup")
	if err := e.build(ctx); err != nil {
		return err
	}
	rep := newReport(o, e)
	start := time.Now()
	for _, s := range o.sections {
		if ctx.Err() != nil {
			break
		}
		if s != "sched" && s != "fleet" {
			if err := e.startBase(ctx); err != nil {
				return err
			}
		}
		if needProxies && (s == "get" || s == "view" || s == "upload" || s == "submit") {
			if err := e.startProxies(ctx); err != nil {
				return err
			}
		}
		t0 := time.Now()
		budget := o.budget(s)
		logf("section %s (budget %s)", s, budget)
		sctx, cancel := context.WithTimeout(ctx, budget)
		err := runSection(sctx, s, o, e, rep)
		over := errors.Is(sctx.Err(), context.DeadlineExceeded)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if over {
				err = fmt.Errorf("over its budget of %s: %w", budget, err)
			}
			rep.failed(s, err)
			logf("section %s failed: %v", s, err)
		}
		rep.Durations[s] = time.Since(t0).Round(time.Second).String()
	}
	rep.Meta.Elapsed = time.Since(start).Round(time.Second).String()
	if ctx.Err() != nil {
		logf("interrupted: writing what was measured")
	}
	dir := o.out
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, dir)
	}
	md, js, err := rep.write(dir)
	if err != nil {
		return err
	}
	if len(rep.Failures) > 0 {
		if dir, err := keepLogs(work, strings.TrimSuffix(md, ".md")+"-logs"); err == nil {
			logf("a section failed: the processes' logs are in %s", dir)
		}
	}
	fmt.Println(rep.markdown())
	logf("results: %s and %s", md, js)
	return ctx.Err()
}

// budget is the time section s may take before it is stopped and reported
// as failed, so one stuck section cannot hold the run: what its flags ask
// for, half again, and a minute for starting and settling.
func (o options) budget(s string) time.Duration {
	r := time.Duration(o.rounds)
	var want time.Duration
	switch s {
	case "get": // 4 rows at -d, 2 at half of it, 4 targets each
		want = 4*4*r*o.dur + 2*4*r*max(o.dur/2, time.Second)
	case "view": // 2 rows at -big-d; 500 MB at no less than 100 MB/s
		want = 2*4*r*o.bigDur + 2*4*time.Duration(o.bigRounds)*5*time.Second
	case "upload":
		want = 2 * 4 * r * o.bigDur
	case "submit": // 200 prompts 4 ms apart and the queues' drain
		want = 4 * r * 3 * time.Second
	case "ws": // a round connects the clients and sends the events
		want = time.Duration(len(o.wsClients)) * 2 * r * (5*time.Second + time.Duration(o.wsTicks)*20*time.Millisecond)
	case "jobs": // the comparison, then 45 MB images made and sent
		want = 2*r*time.Duration(o.jobs)*50*time.Millisecond + time.Duration(o.waitJobs)*2*time.Second
	case "sched": // scaling, makespan, bursts: a few seconds each
		want = (2*r + 2*r + max(r, 5)) * 5 * time.Second
	case "fleet": // start-up, settling, the idle window, 200 prompts
		want = time.Duration(len(o.fleet)) * (o.fleetIdle + 20*time.Second)
	case "replicas": // submit rounds both ways, two restarts with 2 s of load around each
		want = 2*r*3*time.Second + 2*(20*time.Second+2*time.Second)
	}
	return want*3/2 + time.Minute
}

// runSection runs one section.
func runSection(ctx context.Context, s string, o options, e *env, rep *report) error {
	switch s {
	case "get":
		return sectionGet(ctx, o, e, rep)
	case "view":
		return sectionView(ctx, o, e, rep)
	case "upload":
		return sectionUpload(ctx, o, e, rep)
	case "submit":
		return sectionSubmit(ctx, o, e, rep)
	case "ws":
		return sectionWS(ctx, o, e, rep)
	case "jobs":
		return sectionJobs(ctx, o, e, rep)
	case "sched":
		return sectionSched(ctx, o, e, rep)
	case "fleet":
		return sectionFleet(ctx, o, e, rep)
	case "replicas":
		return sectionReplicas(ctx, o, e, rep)
	}
	return fmt.Errorf("unknown section %q", s)
}

// keepLogs copies the processes' logs (and the proxies' configurations)
// out of the work directory, for a failed section's post-mortem.
func keepLogs(work, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, pat := range []string{"*.log", "*.conf", "*.cfg"} {
		files, _ := filepath.Glob(filepath.Join(work, pat))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644)
			}
		}
	}
	return dir, nil
}

// repoRoot is the directory of comfygate's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the comfygate repository")
	}
	b, err := os.ReadFile(mod)
	if err != nil || !strings.Contains(string(b), "module github.com/comfygate/comfygate\n") {
		return "", fmt.Errorf("%s is not comfygate's go.mod", mod)
	}
	return filepath.Dir(mod), nil
}

// machine describes where the run happened.
func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d cores (%s), %s, load average at start %s", runtime.NumCPU(), model, runtime.Version(), load)
}

// toolVersion is the first line a tool prints about its version.
func toolVersion(bin string, args ...string) string {
	if bin == "" {
		return ""
	}
	out, _ := exec.Command(bin, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
