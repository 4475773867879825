package proxy_test

// Adoption between replicas: a replica that stops (or pauses past its
// liveness lease) leaves its prompts to the replica holding their
// instances' leases.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/comfygate/comfygate/state"
	"github.com/redis/go-redis/v9"
)

// adoptTTL is the replicas' lease TTL in these tests.
const adoptTTL = time.Second

// adoptStore opens a store on url, closed when the test ends (Close is
// harmless twice).
func adoptStore(t *testing.T, url string) *state.Store {
	t.Helper()
	st, err := state.Open(context.Background(), config.State{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// adoptPair starts replica A (instances simulators with sim, behind
// fault proxies when faults) and replica B in front of the same
// simulators, sharing one redis-server with the lease TTL adoptTTL. A's
// store is returned too: closing it first stops A without a word to
// Redis.
func adoptPair(t *testing.T, instances int, faults bool, sim comfysim.Options) (a, b *stack.Stack, stA *state.Store) {
	t.Helper()
	url := testkit.Redis(t)
	ttl := func(c *config.Config) { c.State.LeaseTTL = adoptTTL }
	stA = adoptStore(t, url)
	a = stack.Start(t, stack.Options{Instances: instances, Faults: faults, Config: ttl, State: stA, Sim: sim})
	addrs := make([]string, len(a.Sims))
	for i, s := range a.Sims {
		addrs[i] = s.Addr()
	}
	b = stack.Start(t, stack.Options{Addrs: addrs, Config: ttl, State: adoptStore(t, url)})
	return a, b, stA
}

// adoptSubmit posts a prompt with id and tag (extra_data.tag, which the
// simulators count runs by) for clientID, and returns the status code.
func adoptSubmit(st *stack.Stack, clientID, id, tag string, prompt map[string]any, timeout time.Duration) (int, error) {
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "client_id": clientID, "prompt_id": id,
		"extra_data": map[string]any{"tag": tag}})
	c := &http.Client{Timeout: timeout}
	resp, err := c.Post(st.URL+"/prompt", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// runsOf sums the simulators' successful runs of tag.
func runsOf(sims []*comfysim.Server, tag string) int {
	n := 0
	for _, s := range sims {
		n += s.RunsByExtra("tag")[tag]
	}
	return n
}

// guardOf is the guard field of id's shared record.
func guardOf(rdb *redis.Client, id string) string {
	sum := sha256.Sum256([]byte(id))
	g, _ := rdb.HGet(context.Background(), state.Prefix+"prompt:"+hex.EncodeToString(sum[:]), "guard").Result()
	return g
}

// TestAdoptionAfterReplicaStops: replica A takes prompts (running,
// waiting, and one whose POST to its instance is held on the way) and
// stops without a word to Redis; replica B adopts them once A's liveness
// lease has run out. Each prompt runs to success exactly once, the
// client's socket, reconnected to B, gets the end of every prompt (the
// whole run of the one B sent), and B answers /history for each.
func TestAdoptionAfterReplicaStops(t *testing.T) {
	t.Parallel()
	a, b, stA := adoptPair(t, 2, true, comfysim.Options{Delay: 300 * time.Millisecond, Steps: xSteps, RecordRuns: true})

	const client = "adopt-client"
	c := xDial(t, a, client, "")
	var promptIDs, tags []string
	for i := range 3 {
		id, tag := ids.UUID(), fmt.Sprintf("adopt-%d", i)
		if code, err := adoptSubmit(a, client, id, tag, xUpscale(i), testkit.WaitBound); err != nil || code != 200 {
			t.Fatalf("submit %d on A: %d %v", i, code, err)
		}
		promptIDs, tags = append(promptIDs, id), append(tags, tag)
	}
	// One runs before A stops.
	c.until(func(m xMsg) bool { return m.typ() == "execution_start" })

	// A's POST of the last prompt is held on the way to its instance.
	for _, f := range a.Faults {
		f.Hang()
	}
	held, heldTag := ids.UUID(), "adopt-held"
	heldDone := make(chan struct{})
	go func() {
		defer close(heldDone)
		_, _ = adoptSubmit(a, client, held, heldTag, xUpscale(9), 10*time.Second)
	}()
	testkit.Eventually(t, "the held prompt recorded", func() bool {
		_, ok := b.Prompts().SharedPrompt(context.Background(), held)
		return ok
	})
	promptIDs, tags = append(promptIDs, held), append(tags, heldTag)

	// A stops: its Redis client first, so that nothing it does on the
	// way out reaches the shared state.
	_ = stA.Close()
	a.Stop()
	<-heldDone

	c2 := xDial(t, b, client, "")
	ended := map[string]bool{}
	c2.until(func(m xMsg) bool {
		for _, id := range promptIDs {
			if m.end(id) {
				ended[id] = true
			}
		}
		return len(ended) == len(promptIDs)
	})
	for i, tag := range tags {
		id := promptIDs[i]
		// B holds each as a prompt it runs, not as a note of where it is.
		if pr, ok := b.Prompts().Prompt(id); !ok || pr.Life().Adopted || pr.Attempts() == 0 {
			t.Errorf("B's table does not run prompt %s (%v)", id, ok)
		}
		testkit.Eventually(t, "its run counted", func() bool { return runsOf(a.Sims, tag) > 0 })
		if n := runsOf(a.Sims, tag); n != 1 {
			t.Errorf("prompt %s ran %d times", id, n)
		}
		resp, err := http.Get(b.URL + "/history/" + id)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(raw), `"`+id+`"`) || !strings.Contains(string(raw), "success") {
			t.Errorf("B's /history/%s: %d %s", id, resp.StatusCode, raw)
		}
	}
}

// TestPausedReplicaIsFenced: replica A, cut from Redis past its liveness
// lease while its prompt runs, stops acting on it; B adopts it. When A
// reaches Redis again, what it had queued meanwhile is refused (the
// record stays B's), it goes on under a new liveness lease and a new
// socket client_id, and its new prompts run as before, their events on
// its own socket. The adopted prompt runs once.
func TestPausedReplicaIsFenced(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	cut := testkit.NewFaultProxy(t, strings.TrimPrefix(url, "redis://"))
	ttl := func(c *config.Config) { c.State.LeaseTTL = adoptTTL }
	stA := adoptStore(t, "redis://"+cut.Addr())
	a := stack.Start(t, stack.Options{Instances: 1, Config: ttl, State: stA,
		Sim: comfysim.Options{Delay: 3 * time.Second, Steps: xSteps, RecordRuns: true}})
	b := stack.Start(t, stack.Options{Addrs: []string{a.Sims[0].Addr()}, Config: ttl, State: adoptStore(t, url)})
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })

	const client = "fenced-client"
	c := xDial(t, b, client, "")
	first := a.Prompts().Replica()
	id := ids.UUID()
	if code, err := adoptSubmit(a, client, id, "fenced-0", xUpscale(1), testkit.WaitBound); err != nil || code != 200 {
		t.Fatalf("submit on A: %d %v", code, err)
	}
	firstGuard := guardOf(rdb, id)
	if first == "" || !strings.HasPrefix(firstGuard, "replica:"+first+" ") {
		t.Fatalf("A's record guarded by %q; A is %q", firstGuard, first)
	}
	firstToken, _ := strconv.ParseInt(strings.TrimPrefix(firstGuard, "replica:"+first+" "), 10, 64)

	c.until(func(m xMsg) bool { return m.typ() == "execution_start" })
	sockA := a.Pool().Instances()[0].SocketClientID()
	cut.Hang()
	testkit.Eventually(t, "A lets go of its prompt", func() bool { return a.Prompts().Outstanding() == 0 })
	testkit.Eventually(t, "B adopts it", func() bool {
		pr, ok := b.Prompts().Prompt(id)
		return ok && pr.Instance() != nil
	})
	adopter := b.Prompts().Replica()
	if pr, _ := b.Prompts().Prompt(id); pr.Life().Adopted || pr.Attempts() == 0 {
		t.Fatalf("B holds the prompt as %+v", pr.Life())
	}
	if g := guardOf(rdb, id); !strings.HasPrefix(g, "replica:"+adopter+" ") {
		t.Fatalf("adopted record guarded by %q; B is %q", g, adopter)
	}

	cut.Resume()
	testkit.Eventually(t, "A under a new liveness lease", func() bool {
		r := a.Prompts().Replica()
		return r != "" && r != first
	})
	// A's new prompts carry a client_id of its own again: the one it sent
	// the adopted prompt with is B's to listen under.
	if sockA == a.Pool().Instances()[0].SocketClientID() {
		t.Errorf("A's socket client_id is still %q", sockA)
	}
	testkit.Eventually(t, "A's socket under its new client_id", func() bool {
		return slices.Contains(a.Sims[0].SocketIDs(), a.Pool().Instances()[0].SocketClientID())
	})
	// A write under A's first lease, as one held in its connection would
	// arrive, is refused.
	late := state.PromptRecord{ID: id, Endpoint: a.Sims[0].Addr(), Instance: "sim0", UpstreamID: "late",
		Life: []byte(`{}`), Guard: "replica:" + first, Token: firstToken}
	if err := stA.PromptIndex().PutPrompts(context.Background(), []state.PromptRecord{late}); !errors.Is(err, state.ErrStaleToken) {
		t.Errorf("a write under A's lost lease: %v", err)
	}
	c.until(func(m xMsg) bool { return m.end(id) })
	if g := guardOf(rdb, id); !strings.HasPrefix(g, "replica:"+adopter+" ") {
		t.Errorf("after A came back the record is guarded by %q, not B (%q)", g, adopter)
	}
	if sp, ok := b.Prompts().SharedPrompt(context.Background(), id); !ok || sp.UpstreamID == "late" {
		t.Errorf("the record after A's late write: %+v %v", sp, ok)
	}
	testkit.Eventually(t, "its run counted", func() bool { return runsOf(a.Sims, "fenced-0") > 0 })
	if n := runsOf(a.Sims, "fenced-0"); n != 1 {
		t.Errorf("the adopted prompt ran %d times", n)
	}

	// A goes on: a new prompt runs and is recorded under its new lease.
	id2 := ids.UUID()
	if code, err := adoptSubmit(a, client, id2, "fenced-1", xUpscale(2), testkit.WaitBound); err != nil || code != 200 {
		t.Fatalf("submit on A after it came back: %d %v", code, err)
	}
	c.until(func(m xMsg) bool { return m.end(id2) })
	// Under A's lease after it came back: neither its first (lost) one nor
	// B's. (A loaded machine can cost A this 1 s lease again meanwhile, so
	// the record may be under an incarnation of A's that is not its
	// current one.)
	if g := guardOf(rdb, id2); !strings.HasPrefix(g, "replica:") || strings.HasPrefix(g, "replica:"+first+" ") ||
		strings.HasPrefix(g, "replica:"+b.Prompts().Replica()+" ") {
		t.Errorf("A's new record guarded by %q; A was %q, B is %q", g, first, b.Prompts().Replica())
	}
}

// TestUnrecordedPromptStaysWithItsReplica: replica A sends a prompt while
// Redis does not answer, so none of its records is written, and then
// loses its liveness lease. No replica can adopt a prompt it has no
// record of: A keeps it, its end reaches its client's socket on A once
// (A's socket to the instance reconnected under a new client_id, so the
// prompt's events come on the one A borrows under the old id, or its end
// from the history), A records it under its next lease once Redis
// answers, and its history answers on A; it runs once.
func TestUnrecordedPromptStaysWithItsReplica(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	cut := testkit.NewFaultProxy(t, strings.TrimPrefix(url, "redis://"))
	ttl := func(c *config.Config) { c.State.LeaseTTL = adoptTTL }
	a := stack.Start(t, stack.Options{Instances: 1, Config: ttl, State: adoptStore(t, "redis://"+cut.Addr()),
		Sim: comfysim.Options{Delay: 2 * time.Second, RecordRuns: true}})
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })

	first := a.Prompts().Replica()
	const client = "unrecorded-client"
	c := xDial(t, a, client, "")
	cut.Hang()
	id := ids.UUID()
	if code, err := adoptSubmit(a, client, id, "unrecorded-0", xUpscale(1), testkit.WaitBound); err != nil || code != 200 {
		t.Fatalf("submit on A with Redis silent: %d %v", code, err)
	}
	testkit.Eventually(t, "A loses its liveness lease", func() bool { return a.Prompts().Replica() == "" })
	if pr, ok := a.Prompts().Prompt(id); !ok || a.Prompts().Outstanding() != 1 {
		t.Fatalf("A let go of a prompt nobody has a record of: found %v, outstanding %d", ok, a.Prompts().Outstanding())
	} else if pr.Instance() == nil {
		t.Fatal("the kept prompt is at no instance")
	}
	cut.Pass()
	testkit.Eventually(t, "A recorded it under its next lease", func() bool {
		r := a.Prompts().Replica()
		return r != "" && r != first && strings.HasPrefix(guardOf(rdb, id), "replica:"+r+" ")
	})
	ends := 0
	for _, m := range c.until(func(m xMsg) bool { return m.end(id) }) {
		if namesPrompt(m, "execution_success", id) {
			ends++
		}
	}
	if ends != 1 {
		t.Errorf("the kept prompt's execution_success came %d times before its end", ends)
	}
	testkit.Eventually(t, "its history on A", func() bool {
		resp, err := http.Get(a.URL + "/history/" + id)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h map[string]json.RawMessage
		return json.NewDecoder(resp.Body).Decode(&h) == nil && h[id] != nil
	})
	if n := runsOf(a.Sims, "unrecorded-0"); n != 1 {
		t.Errorf("the kept prompt ran %d times", n)
	}
}

// TestAdoptedPromptFailsOver: replica A stops while its prompts wait at
// their instances, and one of those instances dies before B adopts them:
// its prompt fails over at B as B's own would, the other stays where it
// waits, and each runs to success once, their ends reaching the client's
// socket on B.
func TestAdoptedPromptFailsOver(t *testing.T) {
	t.Parallel()
	a, b, stA := adoptPair(t, 2, false, comfysim.Options{Delay: 100 * time.Millisecond, Steps: xSteps, RecordRuns: true})
	for _, s := range a.Sims {
		s.SetPaused(true)
	}

	const client = "failover-client"
	c := xDial(t, b, client, "")
	var promptIDs, tags []string
	for i := range 2 {
		id, tag := ids.UUID(), fmt.Sprintf("failover-%d", i)
		if code, err := adoptSubmit(a, client, id, tag, xUpscale(i), testkit.WaitBound); err != nil || code != 200 {
			t.Fatalf("submit %d on A: %d %v", i, code, err)
		}
		promptIDs, tags = append(promptIDs, id), append(tags, tag)
	}
	sp, ok := b.Prompts().SharedPrompt(context.Background(), promptIDs[0])
	if !ok || sp.Instance == nil {
		t.Fatalf("the first prompt's record: %+v %v", sp, ok)
	}
	_ = stA.Close()
	a.Stop()
	var dead *comfysim.Server
	for i, s := range a.Sims {
		if b.Pool().Instances()[i] == sp.Instance {
			dead = s
			s.Kill()
		} else {
			s.SetPaused(false)
		}
	}
	if dead == nil {
		t.Fatalf("no simulator for instance %s", sp.Instance.Name)
	}

	ended := map[string]bool{}
	c.until(func(m xMsg) bool {
		for _, id := range promptIDs {
			if m.end(id) {
				ended[id] = true
			}
		}
		return len(ended) == len(promptIDs)
	})
	for i, tag := range tags {
		testkit.Eventually(t, "its run counted", func() bool { return runsOf(a.Sims, tag) > 0 })
		if n := runsOf(a.Sims, tag); n != 1 {
			t.Errorf("prompt %s ran %d times", promptIDs[i], n)
		}
	}
	if n := dead.RunsByExtra("tag")[tags[0]]; n != 0 {
		t.Errorf("the first prompt ran %d times at the instance that died", n)
	}
	if pr, ok := b.Prompts().Prompt(promptIDs[0]); !ok || pr.Attempts() < 2 || pr.Instance() == sp.Instance {
		t.Errorf("the first prompt did not fail over at B (%v)", ok)
	}
}
