package faults

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// Killed mid-prompt: the instance dies while one of its prompts runs; that
// prompt and its queue run on the other instance.
func TestKilledMidPrompt(t *testing.T) {
	f := newFixture(t, "", 200*time.Millisecond, nil)
	f.hold()
	f.prompts(8, 4)
	f.jobs(2)
	i := f.busiest(0)
	f.waitRunning(f.st.Sims[i], 0)
	f.inject(fmt.Sprintf("kill sim%d while it runs a prompt", i), f.st.Sims[i].Kill)
	f.measureRecovery()
	f.finish("killed mid-prompt")
}

// Killed with a queue: the instance dies holding queued prompts.
func TestKilledWithQueue(t *testing.T) {
	f := newFixture(t, "", 100*time.Millisecond, nil)
	f.hold()
	f.prompts(16, 4)
	f.jobs(2)
	i := f.busiest(2)
	f.waitRunning(f.st.Sims[i], 2)
	f.inject(fmt.Sprintf("kill sim%d with a queue", i), f.st.Sims[i].Kill)
	f.measureRecovery()
	f.finish("killed with a queue")
}

// Refusing connections: nothing listens at the instance's address; work
// goes to the other one, and comes back to it once it listens again.
func TestRefusingConnections(t *testing.T) {
	f := newFixture(t, "", 50*time.Millisecond, nil)
	f.inject("sim0 refuses connections", f.st.Faults[0].Refuse)
	f.prompts(12, 4)
	f.jobs(2)
	f.measureRecovery()
	f.settle()
	f.st.Faults[0].Pass()
	testkit.Eventually(t, "sim0 back in the fleet", func() bool { return f.st.Instance("sim0").Available() })
	f.prompts(4, 2)
	f.finish("refusing connections")
}

// Hung and resumed: the instance's process stops (SIGSTOP: connections
// accepted, nothing answered, nothing executed) with prompts queued; they
// run elsewhere; when it resumes (SIGCONT) it must not run them again. The
// time to recover is from SIGSTOP until every prompt it held has finished
// elsewhere.
func TestHungThenResumed(t *testing.T) {
	f := newFixture(t, "", 100*time.Millisecond, nil)
	f.hold()
	f.prompts(12, 4)
	f.jobs(2)
	i := f.busiest(2)
	sim, fp := f.st.Sims[i], f.st.Faults[i]
	f.waitRunning(sim, 2)
	f.inject(fmt.Sprintf("SIGSTOP sim%d (network held, execution frozen)", i), func() {
		fp.Hang()
		sim.SetFrozen(true)
	})
	// Every prompt ends while the instance is still stopped: its prompts ran
	// elsewhere (or failed clearly).
	f.waitWorkload()
	f.mu.Lock()
	f.recover = time.Since(f.faultAt)
	f.mu.Unlock()
	fp.Resume()
	sim.SetFrozen(false)
	f.finish("hung, then resumed")
}

// Hung, with comfygate's default timing (health checks every 30 s, socket
// pings every 20 s, a 2 s suspect grace): the time from SIGSTOP until the
// prompts the instance held have run elsewhere (about 6 s with the
// defaults, see docs/comfyui-api.md). Behind -faults.long: it takes tens of
// seconds.
func TestHungDefaultTiming(t *testing.T) {
	if !*long {
		t.Skip("-faults.long: a hang with production timing takes tens of seconds to detect")
	}
	f := newFixtureWithin(t, 3*time.Minute, "", 100*time.Millisecond, func(c *config.Config) {
		d := config.Default()
		c.Timeout, c.HealthCheck, c.Failover, c.Breaker = d.Timeout, d.HealthCheck, d.Failover, d.Breaker
		c.WebSocket.PingInterval = d.WebSocket.PingInterval
	})
	f.hold()
	f.prompts(12, 4)
	i := f.busiest(2)
	sim, fp := f.st.Sims[i], f.st.Faults[i]
	f.waitRunning(sim, 2)
	f.inject(fmt.Sprintf("SIGSTOP sim%d (network held, execution frozen)", i), func() {
		fp.Hang()
		sim.SetFrozen(true)
	})
	f.waitWorkload()
	f.mu.Lock()
	f.recover = time.Since(f.faultAt)
	f.mu.Unlock()
	t.Logf("SIGSTOP to failover (every prompt the instance held finished elsewhere): %v", f.recover)
	fp.Resume()
	sim.SetFrozen(false)
	f.finish("hung, default timing")
}

// Hung with new work arriving: prompts submitted while the instance is
// stopped and not yet found out go to it, and their POST /prompt times out
// (504); the request is held, not lost, and the instance takes it when it
// resumes.
func TestHungTimedOutSubmissions(t *testing.T) {
	f := newFixture(t, "", 100*time.Millisecond, nil)
	f.hold()
	f.prompts(12, 4)
	i := f.busiest(2)
	sim, fp := f.st.Sims[i], f.st.Faults[i]
	f.waitRunning(sim, 2)
	f.inject(fmt.Sprintf("SIGSTOP sim%d (network held, execution frozen)", i), func() {
		fp.Hang()
		sim.SetFrozen(true)
	})
	f.measureRecovery()
	f.waitWorkload()
	fp.Resume()
	sim.SetFrozen(false)
	f.finish("hung, new prompts meanwhile, then resumed")
}

// 500 to everything: the instance answers every HTTP request with 500
// while prompts are queued there (its socket stays up and its queue runs).
func TestFail500(t *testing.T) {
	fail500(t, "", 0)
}

// The same for jobs: a job whose instance answers 500 runs elsewhere, and
// a job that finished there before has its result fetched once the
// instance is back (the output is nowhere else).
func TestFail500Jobs(t *testing.T) { fail500(t, "", 4) }

func fail500(t *testing.T, needs string, jobs int) {
	f := newFixture(t, needs, 100*time.Millisecond, nil)
	f.hold()
	f.prompts(12, 4)
	f.jobs(jobs)
	i := f.busiest(1)
	sim := f.st.Sims[i]
	f.waitRunning(sim, 1)
	f.inject(fmt.Sprintf("sim%d answers 500 to everything", i), func() { sim.SetFail500(true) })
	f.measureRecovery()
	if jobs > 0 {
		// Jobs submitted while the instance answers 500 run on the other.
		f.jobs(jobs)
	}
	f.waitPrompts()
	// Outputs of prompts (and jobs) that ran on the instance can be fetched
	// once it is back (while it is out, comfygate answers their
	// /history/{id} with {}, and the job service waits for it).
	sim.SetFail500(false)
	testkit.Eventually(t, "the instance back in the fleet", func() bool { return f.st.Instance(fmt.Sprintf("sim%d", i)).Available() })
	f.finish("500 to everything" + map[bool]string{true: " (jobs)", false: ""}[jobs > 0])
}

// Client-caused 500s: six POST /prompt {"prompt": "x"} (ComfyUI answers 500
// to it) are the client's fault; the fleet keeps taking good prompts.
func TestClientCaused500s(t *testing.T) {
	f := newFixture(t, "", 50*time.Millisecond, nil)
	f.inject("six POST /prompt {\"prompt\": \"x\"}", func() {
		for range 6 {
			resp, err := f.hc.Post(f.st.URL+"/prompt", "application/json", bytes.NewReader([]byte(`{"prompt": "x"}`)))
			if err != nil {
				t.Fatalf("bad POST /prompt: %v", err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusInternalServerError {
				t.Errorf("bad POST /prompt: %d, want ComfyUI's 500", resp.StatusCode)
			}
		}
	})
	ps := f.prompts(8, 2)
	f.jobs(2)
	f.measureRecovery()
	r := f.finish("client-caused 500s")
	for _, p := range ps {
		if p.run.Code != http.StatusOK {
			t.Errorf("good prompt after client-caused 500s: %d %s", p.run.Code, p.run.Body)
		}
	}
	if r.rejected > 0 {
		t.Errorf("%d good submissions rejected after six client-caused 500s", r.rejected)
	}
}

// Slow: the instance's traffic trickles at 1 byte/s each way.
func TestSlow(t *testing.T) {
	f := newFixture(t, "", 50*time.Millisecond, func(c *config.Config) { c.Timeout = 2 * time.Second })
	f.inject("sim0 at 1 byte/s", func() { f.st.Faults[0].Slow(1) })
	f.prompts(12, 4)
	f.jobs(2)
	f.measureRecovery()
	f.settle()
	f.st.Faults[0].Pass()
	f.finish("slow (1 byte/s)")
}

// WebSocket dropped every second: comfygate's event socket to the
// instance is cut again and again while prompts run there.
func TestWebSocketDropped(t *testing.T) {
	f := newFixture(t, "", 100*time.Millisecond, nil)
	f.inject("sim0's WebSocket dropped every 1s", func() { f.st.Faults[0].DropWebSockets(time.Second) })
	for range 4 {
		f.prompts(4, 2)
		f.awaitTicks(1) // spread the work over several drops
	}
	f.jobs(2)
	f.measureRecovery()
	f.settle()
	f.st.Faults[0].Pass()
	f.finish("WebSocket dropped every 1s")
}

// Flapping faster than the health interval: the instance refuses and
// accepts connections in turns every 100 ms, health checks run every
// 300 ms.
func TestFlapping(t *testing.T) {
	f := newFixture(t, "", 50*time.Millisecond, func(c *config.Config) { c.HealthCheck.Interval = 300 * time.Millisecond })
	f.inject("sim0 flaps every 100ms", func() { f.st.Faults[0].Flap(100 * time.Millisecond) })
	for range 4 {
		f.prompts(4, 2)
		f.awaitTicks(3) // three turns: 300 ms
	}
	f.jobs(2)
	f.measureRecovery()
	f.st.Faults[0].Pass()
	f.finish("flapping (100ms, health every 300ms)")
}

// All down, then one back: both instances die with accepted prompts;
// clients get a clear error (or their prompt runs once an instance is
// back), new work is refused with 503 until one instance returns.
func TestAllDownThenOneBack(t *testing.T) {
	f := newFixture(t, "", 200*time.Millisecond, nil)
	f.noneLeft = true
	a, b := f.st.Sims[0], f.st.Sims[1]
	f.hold()
	f.prompts(8, 4)
	f.jobs(2)
	f.waitRunning(f.st.Sims[f.busiest(0)], 0)
	a.Kill()
	b.Kill()
	testkit.Eventually(t, "no instance available", func() bool {
		return !f.st.Instance("sim0").Available() && !f.st.Instance("sim1").Available()
	})
	down := f.prompts(2, 1)
	for _, p := range down {
		if p.run.Code != http.StatusServiceUnavailable {
			t.Errorf("prompt with no instance up: %d %s, want 503 no_upstream", p.run.Code, p.run.Body)
		}
	}
	f.inject("sim1 back after all were down", func() {
		if err := b.Restart(); err != nil {
			t.Fatal(err)
		}
	})
	f.measureRecovery()
	f.finish("all down, then one back")
}

// comfygate restarted while prompts run: clients reconnect; /history/{id}
// and /view still answer from the instances, which hold the truth.
func TestGatewayRestarted(t *testing.T) { gatewayRestarted(t, "", 0) }

// The same for jobs: their records in the state directory carry them over
// the restart, reconciled with the instances' queues and histories.
func TestGatewayRestartedJobs(t *testing.T) { gatewayRestarted(t, "", 4) }

func gatewayRestarted(t *testing.T, needs string, jobs int) {
	f := newFixture(t, needs, 200*time.Millisecond, nil)
	f.hold()
	f.prompts(8, 4)
	f.jobs(jobs)
	f.waitRunning(f.st.Sims[f.busiest(1)], 1)
	unfinished := 0
	if jobs > 0 {
		resp, err := f.hc.Get(f.st.URL + "/api/jobs?source=comfygate&status=pending,processing")
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Total int }
		_ = json.NewDecoder(resp.Body).Decode(&v)
		_ = resp.Body.Close()
		unfinished = v.Total
	}
	f.inject("comfygate restarted", f.st.Restart)
	if jobs > 0 {
		f.mu.Lock()
		f.notes = append(f.notes, fmt.Sprintf("%d of %d jobs unfinished at the restart", unfinished, jobs))
		f.mu.Unlock()
	}
	f.measureRecovery()
	f.finish("comfygate restarted" + map[bool]string{true: " (jobs)", false: ""}[jobs > 0])
	f.mu.Lock()
	defer f.mu.Unlock()
	reconnects := 0
	for _, s := range f.sessions {
		reconnects += s.Reconnects()
	}
	if reconnects == 0 {
		t.Errorf("no client socket reconnected across the restart")
	}
}

// 1,000 concurrent submissions over 10 client sockets (each socket gets
// every queue-status broadcast, so sockets, not prompts, cost the most).
// Under the race detector, which slows the stack about tenfold, it is 250
// unless -faults.full.
func TestThousandConcurrent(t *testing.T) {
	n := 1000
	if raceEnabled && !*full {
		n = 250
	}
	// The default timeouts and health checks: this fault is load, and a
	// 2-core machine running the race detector answers slowly under it.
	// The clients stand for many hosts, so the per-address connection cap
	// (which all of them, on 127.0.0.1, would share) is off.
	f := newFixtureWithin(t, 3*time.Minute, "", 0, func(c *config.Config) {
		d := config.Default()
		c.Timeout, c.HealthCheck, c.Failover = d.Timeout, d.HealthCheck, d.Failover
		c.WebSocket.PingInterval = d.WebSocket.PingInterval
		c.Limits.MaxConnsPerIP = 0
	})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f.jobs(n / 50) }()
	f.prompts(n, 10)
	wg.Wait()
	f.finish(fmt.Sprintf("%d concurrent submissions", n))
}
