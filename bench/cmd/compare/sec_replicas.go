package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/internal/redisproc"
)

// replicaPoint is what the replicas section measured.
type replicaPoint struct {
	SubmitMemory []latencySummary `json:"submit_memory_rounds"`
	SubmitRedis  []latencySummary `json:"submit_redis_rounds"`
	Rolling      rollingResult    `json:"rolling_restart"`
}

// rollingResult is a rolling restart of both replicas under load.
type rollingResult struct {
	Submitted   int64   `json:"submitted"`
	Accepted    int64   `json:"accepted"`
	Errors      int64   `json:"client_errors"`
	Failovers   int64   `json:"failovers"`
	Lost        int     `json:"lost"`
	RestartAS   float64 `json:"restart_a_seconds"`
	RestartBS   float64 `json:"restart_b_seconds"`
	RatePerS    float64 `json:"submissions_per_second"`
	FirstErrors string  `json:"first_errors,omitempty"`
}

// sectionReplicas measures what sharing state in Redis costs and what a
// rolling restart of two replicas costs clients:
//
//   - POST /prompt p50/p99 through a replica with state.url on a
//     redis-server on loopback against the base comfygate (state in
//     memory), in front of the same two simulators, in alternating
//     rounds;
//   - two replicas sharing the redis-server under a steady submit load
//     from clients that know both addresses (a failed connection or
//     request goes to the other), while A is stopped (SIGTERM), started
//     again on its address and waited for, then B: the client-visible
//     errors (target 0) and the accepted prompts that GET /history/{id}
//     does not show once the queues drained.
func sectionReplicas(ctx context.Context, o options, e *env, rep *report) error {
	redisBin := findTool("redis-server")
	if redisBin == "" {
		return errors.New("redis-server not found (apt-get install redis-server)")
	}
	redisSrv, err := e.startRedis(ctx, redisBin)
	if err != nil {
		return err
	}
	stateEnv := "COMFYGATE_STATE_URL=" + redisSrv.URL()
	var reps [2]string
	var procs [2]*proc
	for i, name := range []string{"comfygate-replica-a", "comfygate-replica-b"} {
		if procs[i], reps[i], err = e.startGate(ctx, name, e.simAddr[:], stateEnv); err != nil {
			return err
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	var pt replicaPoint

	// Submit latency: memory (the base comfygate) against Redis (replica
	// A), rounds alternating which goes first.
	const perRound, spacing = 200, 4 * time.Millisecond
	seed := 0
	measure := func(addr string) (latencySummary, error) {
		if err := waitIdle(ctx, hc, e.simAddr[:], time.Minute); err != nil {
			return latencySummary{}, err
		}
		var lats []time.Duration
		next := time.Now()
		for range perRound {
			seed++
			body := promptBody("bench-replicas", seed)
			time.Sleep(time.Until(next))
			next = next.Add(spacing)
			t0 := time.Now()
			if _, err := submit(ctx, hc, "http://"+addr, body); err != nil {
				return latencySummary{}, err
			}
			lats = append(lats, time.Since(t0))
		}
		return summarize(micros(lats)), nil
	}
	for round := range o.rounds {
		order := []string{"memory", "redis"}
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, which := range order {
			addr := e.gate[upSim]
			if which == "redis" {
				addr = reps[0]
			}
			s, err := measure(addr)
			if err != nil {
				return fmt.Errorf("submit via %s: %w", which, err)
			}
			if which == "redis" {
				pt.SubmitRedis = append(pt.SubmitRedis, s)
			} else {
				pt.SubmitMemory = append(pt.SubmitMemory, s)
			}
		}
	}
	medians := func(ss []latencySummary) (p50, p99 float64) {
		var a, b []float64
		for _, s := range ss {
			a, b = append(a, s.P50), append(b, s.P99)
		}
		return median(a), median(b)
	}
	m50, m99 := medians(pt.SubmitMemory)
	r50, r99 := medians(pt.SubmitRedis)
	logf("  POST /prompt: memory p50 %s p99 %s | redis p50 %s p99 %s", fmtUS(m50), fmtUS(m99), fmtUS(r50), fmtUS(r99))
	if err := waitIdle(ctx, hc, e.simAddr[:], time.Minute); err != nil {
		return err
	}

	// Rolling restart under load.
	pt.Rolling, err = e.rollingRestart(ctx, reps, procs, stateEnv)
	if err != nil {
		return err
	}
	r := pt.Rolling
	logf("  rolling restart: %d submitted, %d client errors, %d failovers, %d lost; A %.1f s, B %.1f s",
		r.Submitted, r.Errors, r.Failovers, r.Lost, r.RestartAS, r.RestartBS)

	t := rep.table("replicas", "Replicas: shared state in Redis on loopback, and a rolling restart",
		fmt.Sprintf("POST /prompt: %d prompts one every %s per round, %d rounds alternating which goes first, medians of the rounds; "+
			"both in front of the same two `comfygate sim -delay 0s`, Redis a local redis-server without persistence. "+
			"Rolling restart: 4 clients each submitting every 25 ms to their replica (a failed connection or request goes to the other); "+
			"A stopped with SIGTERM, started on its address and waited for until its instances are healthy, then B; "+
			"lost: accepted prompts whose GET /history/{id} on A is empty after the queues drained.", perRound, spacing, o.rounds),
		"measure", "in memory", "state.url (Redis)")
	t.Rows = append(t.Rows,
		[]string{"POST /prompt p50", fmtUS(m50), fmtUS(r50)},
		[]string{"POST /prompt p99", fmtUS(m99), fmtUS(r99)},
		[]string{"rolling restart: submissions (accepted)", "–", fmt.Sprintf("%d (%d)", r.Submitted, r.Accepted)},
		[]string{"rolling restart: client-visible errors", "–", strconv.FormatInt(r.Errors, 10)},
		[]string{"rolling restart: requests moved to the other replica", "–", strconv.FormatInt(r.Failovers, 10)},
		[]string{"rolling restart: accepted and lost", "–", strconv.Itoa(r.Lost)},
		[]string{"restart of A · of B (SIGTERM to ready)", "–", fmt.Sprintf("%.1f s · %.1f s", r.RestartAS, r.RestartBS)},
	)
	rep.Raw["replicas"] = pt
	rep.Raw["replicas_submit_added_p50_us"] = finite(r50 - m50)
	rep.addTarget("rolling restart of two replicas under load: 0 client-visible errors",
		fmt.Sprintf("%d errors of %d submissions, %d lost", r.Errors, r.Submitted, r.Lost), r.Errors == 0 && r.Lost == 0)
	for _, p := range procs {
		if p != nil {
			e.ps.stopOne(p)
		}
	}
	return nil
}

// startRedis runs a redis-server without persistence on a free loopback
// port, logging to redis.log in the work directory, in a process group the
// kernel kills if the bench dies first; it is stopped after every process
// of the run, the replicas that use it included.
func (e *env) startRedis(ctx context.Context, bin string) (*redisproc.Server, error) {
	srv, err := redisproc.Start(ctx, redisproc.Options{
		Bin: bin, Dir: e.work,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return nil, err
	}
	e.redis = srv
	return srv, nil
}

// rollingRestart runs the submit load over both replicas while each is
// restarted in turn, then counts what the clients saw.
func (e *env) rollingRestart(ctx context.Context, reps [2]string, procs [2]*proc, stateEnv string) (rollingResult, error) {
	var res rollingResult
	var submitted, accepted, errs, failovers atomic.Int64
	var mu sync.Mutex // guards ids and firstErrs
	var ids []string
	var firstErrs []string
	// One client: its preferred replica first, the other when the
	// connection or the request fails (not on an HTTP status).
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	post := func(prefer int, body []byte) (string, error) {
		var last error
		for k := range 2 {
			addr := reps[(prefer+k)%2]
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/prompt", bytes.NewReader(body))
			if err != nil {
				return "", err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				last = err
				if k == 0 {
					failovers.Add(1)
				}
				continue
			}
			var v struct {
				PromptID string `json:"prompt_id"`
			}
			err = json.NewDecoder(resp.Body).Decode(&v)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || v.PromptID == "" {
				return "", fmt.Errorf("POST /prompt via %s: status %d %v", addr, resp.StatusCode, err)
			}
			return v.PromptID, nil
		}
		return "", last
	}
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	const clients, every = 4, 25 * time.Millisecond
	var seed atomic.Int64
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
				submitted.Add(1)
				id, err := post(c%2, promptBody(fmt.Sprintf("bench-rolling-%d", c), int(seed.Add(1))))
				if err != nil {
					errs.Add(1)
					mu.Lock()
					if len(firstErrs) < 3 {
						firstErrs = append(firstErrs, err.Error())
					}
					mu.Unlock()
					continue
				}
				accepted.Add(1)
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		}()
	}
	pause := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	var restartErr error
	pause(2 * time.Second)
	for i, name := range []string{"comfygate-replica-a", "comfygate-replica-b"} {
		t0 := time.Now()
		procs[i].stop(20 * time.Second)
		e.ps.forget(procs[i])
		p, err := e.startGateAt(ctx, name, reps[i], e.simAddr[:], "", stateEnv)
		if err != nil {
			restartErr = fmt.Errorf("restart %s: %w", name, err)
			break
		}
		procs[i] = p
		if i == 0 {
			res.RestartAS = time.Since(t0).Seconds()
		} else {
			res.RestartBS = time.Since(t0).Seconds()
		}
		pause(2 * time.Second)
	}
	stop()
	wg.Wait()
	elapsed := time.Since(start)
	if restartErr != nil {
		return res, restartErr
	}
	res.Submitted, res.Accepted, res.Errors, res.Failovers = submitted.Load(), accepted.Load(), errs.Load(), failovers.Load()
	res.RatePerS = float64(res.Submitted) / elapsed.Seconds()
	res.FirstErrors = strings.Join(firstErrs, "; ")
	if err := waitIdle(ctx, hc, e.simAddr[:], time.Minute); err != nil {
		return res, err
	}
	// Every accepted prompt is in the history, as a client reads it.
	for _, id := range ids {
		resp, err := hc.Get("http://" + reps[0] + "/history/" + id)
		if err != nil {
			return res, err
		}
		var h map[string]json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&h)
		_ = resp.Body.Close()
		if err != nil {
			return res, fmt.Errorf("history of %s: %w", id, err)
		}
		if _, ok := h[id]; !ok {
			res.Lost++
		}
	}
	return res, nil
}
