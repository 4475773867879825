package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
)

// maxDonePrompts is how many finished prompts the table keeps so that later
// calls naming them (/history/{id}, /view of their outputs, the final
// executing-null) still find their instance. ComfyUI's own history holds
// 10000 entries; the oldest finished prompt is evicted first.
const maxDonePrompts = 10000

// upKey names a prompt by the id it has at one instance.
type upKey struct {
	inst *upstream.Instance
	id   string
}

// fleet is what the table uses of the instance pool (*upstream.Pool):
// which instances there are and which may take work, a probe and the
// clock for failover's grace, the warm-up workflows it runs, and the two
// things only the event sockets see (a socket lost, a socket back).
type fleet interface {
	WarmupWorkflow(inst *upstream.Instance) json.RawMessage
	WarmupDone(inst *upstream.Instance, took time.Duration, err error)
	Probe(ctx context.Context, inst *upstream.Instance, timeout time.Duration) error
	Clock() clock.Clock
	Instances() []*upstream.Instance
	Instance(name string) *upstream.Instance
	Healthy() []*upstream.Instance
	SelectFor(ok func(*upstream.Instance) bool, exclude ...*upstream.Instance) (*upstream.Instance, error)
	Reserve(prefer *upstream.Instance, ok func(*upstream.Instance) bool, exclude ...*upstream.Instance) (*upstream.Instance, error)
	QueueRemaining() int
	AvailWatch() <-chan struct{}
	SocketLost(inst *upstream.Instance)
	SocketRestored(inst *upstream.Instance)
}

// Table holds every prompt comfygate forwarded, the one WebSocket per
// instance that carries their events, failover, and the pins of the files
// the instances hold. It hears of the pool's instances on a subscription
// (upstream.Pool.Subscribe) and gates their comebacks
// (upstream.Pool.SetComebackGate); whoever starts the pool starts and
// closes the table too (Start after the pool's Start, Close after its Close).
type Table struct {
	p   fleet
	cfg *config.Config
	m   *metrics.Metrics
	log *slog.Logger

	idx    index  // the prompts by id, by upstream id, the live ones, the done queue (index.go)
	owners owners // the instances' owners and sockets (run.go)
	run    *run   // Start to Close: the context and the goroutines Close waits for (run.go)

	// The table's jobs beside the prompts' steps, each a type of its own
	// holding the parts it uses.
	submits *submitter // submission: pick, pin, POST, settle (submit.go)
	moves   *mover     // prompts that change instance: failover, moves to idle instances, tombstones, clean-up (failover.go, move.go, steal.go, tombstones.go)
	insts   *instances // the pool's instances: their events, sockets, owners, warm-ups (events.go, socket.go, warmup.go)
	events  *delivery  // prompts' events to their sinks, broadcasts and queue changes to the listener (outbox.go)

	steps *steps // a prompt's steps and their effects (the step rule)

	*fileStore // file pins and copies (pins.go, files.go)

	shared atomic.Pointer[sharedIndex] // the replicas' shared index (shared.go); nil in memory
	leases atomic.Pointer[leaseKeeper] // the replica's leases and adoptions (lease.go); nil in memory
}

// New returns the prompt table of pool: it subscribes to the pool's
// instance events and sets the pool's comeback gate (CleanUp), so call it
// before pool.Start; it runs from Start to Close. cfg is pool's
// configuration.
func New(pool *upstream.Pool, cfg *config.Config, m *metrics.Metrics, log *slog.Logger) *Table {
	t := &Table{
		p:   pool,
		cfg: cfg,
		m:   m,
		log: log,
		run: newRun(log),
	}
	if t.cfg == nil {
		t.cfg = config.Default()
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.fileStore = newFileStore(pool, t.cfg, t.log)
	t.events = newDelivery(pool, t.run, t.log)
	t.insts = &instances{p: pool, cfg: t.cfg, log: t.log, run: t.run, owners: &t.owners,
		sub: pool.Subscribe(), settled: make(chan struct{}, 1)}
	t.owners.mk = func(inst *upstream.Instance) *instSocket { return newInstSocket(t, inst) }
	t.steps = &steps{idx: &t.idx, m: m, files: t.fileStore, insts: t.insts, events: t.events, leases: &t.leases}
	t.submits = &submitter{p: pool, cfg: t.cfg, log: t.log, run: t.run, idx: &t.idx, owners: &t.owners, steps: t.steps, files: t.fileStore,
		leases: &t.leases}
	t.moves = &mover{p: pool, cfg: t.cfg, m: m, log: t.log, run: t.run, idx: &t.idx, owners: &t.owners,
		steps: t.steps, submits: t.submits, events: t.events, files: t.fileStore}
	t.steps.moves, t.submits.moves = t.moves, t.moves
	pool.SetComebackGate(t.CleanUp)
	return t
}

// SetListener sets who receives broadcasts and fleet queue changes.
func (t *Table) SetListener(l Listener) {
	if l == nil {
		t.events.listener.Store(nil)
		return
	}
	t.events.listener.Store(&l)
}

// safely runs f and logs a panic instead of crashing the process.
func safely(log *slog.Logger, what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("prompts: panic recovered", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	f()
}

// Start lets the table run until ctx ends or Close: it opens the socket of
// every instance announced so far, handles the pool's instance events
// from now on, and waits, at most health_check.timeout, until every
// healthy instance's socket is up or its first dial failed. Call it after
// the pool's Start, so the instances it begins with have sockets before
// Start returns.
func (t *Table) Start(ctx context.Context) {
	ctx, ok := t.run.start(ctx)
	if !ok {
		return
	}
	for _, s := range t.owners.all() {
		t.insts.runSocket(s)
	}
	if k := t.leases.Load(); k != nil {
		k.start()
	}
	t.insts.startEvents(ctx)
	t.insts.awaitSockets(ctx, t.cfg.HealthCheck.Timeout)
}

// Close stops every socket, ends the subscription to the pool's events
// and waits for the table's goroutines.
func (t *Table) Close() {
	t.run.close()
	t.insts.sub.Close()
	for _, s := range t.owners.all() {
		s.stop()
	}
	t.run.wait()
}

// InstanceAdded opens the socket of inst (at start if the table is not
// running yet). Calling it twice is harmless.
func (t *Table) InstanceAdded(inst *upstream.Instance) { t.insts.added(inst) }

// SocketSettled reports whether inst's socket is up or its first dial
// failed: either way, waiting longer for it at start-up gains nothing.
func (t *Table) SocketSettled(inst *upstream.Instance) bool { return t.insts.socketSettled(inst) }

// InstanceRemoved stops giving inst new work (the pool's draining flag does
// that) and closes its socket once its prompts are done.
func (t *Table) InstanceRemoved(inst *upstream.Instance) { t.insts.removed(inst) }

// maybeCloseDrained closes a draining instance's socket when it has no
// prompts left.
func (t *instances) maybeCloseDrained(inst *upstream.Instance) {
	if s := t.owners.get(inst); s != nil {
		s.box.post(func() { s.passes.closeIfDrained() })
	}
}

// closeIfDrained closes s when its instance is draining and has no
// prompts left. On the owner.
func (s *passes) closeIfDrained() {
	t := s.t
	if !s.draining || t.owners.get(s.inst) != s.instSocket {
		return
	}
	inst, busy := s.inst, false
	t.idx.eachLive(func(pr *Prompt) bool {
		busy = pr.Instance() == inst
		return !busy
	})
	if busy || !t.owners.remove(inst, s.instSocket) {
		return
	}
	t.log.Info("prompts: drained instance's socket closed", "instance", inst.Name)
	s.stop()
}

// steps applies the prompts' steps: the transitions of lifecycle.Step,
// what they change in the index and the in-flight counts, and their
// other effects.
type steps struct {
	idx     *index
	numbers numbering // the fleet queue numbers (Prompt.Number)
	m       *metrics.Metrics
	files   *fileStore // the outputs' pins (apply)
	// Where a step's effects go.
	moves  *mover     // tombstones; a finished prompt frees its instance
	insts  *instances // a drained instance's socket closes
	events *delivery  // events and queue changes
	// leases are the table's (lease.go): a prompt with a record takes no
	// step once the liveness lease ran out by the clock.
	leases *atomic.Pointer[leaseKeeper]
}

// letGo reports whether pr is no longer this replica's to act on: let go
// already, or recorded under a liveness lease that ran out by the clock
// (a replica waking from a pause acts on none of its recorded prompts,
// whatever its goroutines run first, before the lease's loss lets them
// go). In pr's step.
func (t *steps) letGo(pr *Prompt) bool {
	if pr.abandoned.Load() {
		return true
	}
	k := t.leases.Load()
	return k != nil && pr.recorded.Load() && !k.holding()
}

// step applies e to pr: the transition (lifecycle.Step), pr's published
// view, its keys in the index and the in-flight counts it changes, then
// the transition's other effects. to is the instance a Send or a Reclaim
// goes to (nil for other events). It returns the new state and whether e
// applied (see lifecycle.Step).
//
// The step rule: a prompt's steps run one at a time, on the owner of the
// instance its view names (stepVia from a submit); its first send, while
// it is at no instance and only its submitter holds it, on the owner of
// the instance it goes to. A step that moves it (Send, Reclaim) runs on
// the owner it leaves and hands it to the next one: its later steps run
// there. Nothing else writes a prompt's view or its keys, so step needs
// no lock: read, step, publish.
//
// Locks in this package guard only small structures of their own and are
// never held while another is taken, except an outbox's mu under queueMu
// (with the pool's own locks, QueueRemaining). No lock is held while
// waiting for an owner (do). The pool's methods take only the pool's
// locks; it calls the table only through its comeback gate (CleanUp),
// with none held, and its events wait in the subscription's queue. No
// lock is held while a Sink or Listener is called: events go through the
// per-instance outbox (outbox.go), which calls them in order from its own
// goroutine.
func (t *steps) step(pr *Prompt, e lifecycle.Event, to *upstream.Instance) (lifecycle.State, bool) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	if to != nil {
		e.Instance = to.Name
	}
	v := pr.snap()
	prev, prevInst := v.life, v.instance
	if t.letGo(pr) {
		return prev, false // another replica may act on it now (lease.go)
	}
	next, effects, ok := lifecycle.Step(prev, e)
	if !ok {
		return prev, false
	}
	nv := *v
	nv.life = next
	if to != nil {
		nv.instance = to
	}
	for _, ef := range effects {
		// Counted here, in transition order: carried out later, two
		// transitions' counts could cross and the in-flight count drift.
		switch ef.Kind {
		case lifecycle.CountIn:
			// A send: counted at the instance it goes to, unless its
			// pick counted it there already (Prompt.reserved).
			if !pr.reserved.CompareAndSwap(nv.instance, nil) {
				nv.instance.Workload().CountInflight(1)
			}
		case lifecycle.CountOut:
			prevInst.Workload().CountInflight(-1)
		}
	}
	if e.Kind == lifecycle.Send && !next.Numbered {
		// Its fleet number at its first send, in the fleet's order of
		// sends (ComfyUI counts a prompt before it validates it): a step
		// of its own, so the state holds it, and the answer need not
		// wait for the step that settles it (send). With replicas its
		// submitter drew it before this step (numbers.go).
		if numbered, _, ok := lifecycle.Step(nv.life, lifecycle.Event{Kind: lifecycle.Numbered, At: e.At, Number: t.numbers.next(pr)}); ok {
			nv.life, next = numbered, numbered
		}
	}
	// The new key first: a frame looked up by it finds the prompt as
	// soon as its view says it is there.
	t.idx.repin(pr, prevInst, prev.UpstreamID, nv.instance, next.UpstreamID)
	pr.view.Store(&nv)
	t.idx.setLive(pr, next.Live() && next.Phase != lifecycle.Submitted)
	if sh := t.files.sharer.Load(); sh != nil { // the shared index (state.url)
		sh.shareStep(pr, prev, prevInst, nv.life, nv.instance)
	}
	newInst := nv.instance
	if newInst != prevInst && newInst != nil {
		newInst.Workload().InflightChanged() // a send's count: its gauge
	}
	t.carryOut(pr, prevInst, effects)
	return next, true
}

// carryOut does what a transition of pr asked for. inst is the instance
// the transition started at: every effect names it but a send's CountIn
// (the instance it goes to; step publishes that one's count).
func (t *steps) carryOut(pr *Prompt, inst *upstream.Instance, effects []lifecycle.Effect) {
	queue := false
	for _, ef := range effects {
		switch ef.Kind {
		case lifecycle.CountIn, lifecycle.CountOut:
			// Counted by step; the gauge and a drained instance's removal
			// follow (a first send's new instance: step).
			if inst != nil {
				inst.Workload().InflightChanged()
			}
			queue = true
		case lifecycle.Unpin:
			// Done with the transition: step dropped the key.
		case lifecycle.Tombstone:
			t.moves.tombstone(inst, ef.UpstreamID, pr)
		case lifecycle.Accept:
			if inst != nil {
				t.m.PromptSubmitted(inst.Name)
			}
		case lifecycle.Record:
			t.idx.record(pr)
			if inst != nil {
				t.m.PromptFinished(inst.Name, ef.Outcome, time.Since(pr.Created))
				t.insts.maybeCloseDrained(inst)
				t.moves.finishedAt(inst)
			}
			queue = true
		case lifecycle.Forget:
			t.idx.forget(pr)
		}
	}
	if queue {
		t.events.notifyQueue()
	}
}

// stepVia is step from elsewhere than the owner of pr's instance (the
// settling of a send's answer): it runs there, by the step rule, and
// waits for it; a prompt never sent steps on the owner of to, the
// instance its first send goes to, as its submitter alone holds it. When
// pr moved meanwhile, it steps on the owner of where pr is now. It
// reports false, changing nothing, once the table closed. Not on an owner.
func (t *submitter) stepVia(pr *Prompt, e lifecycle.Event, to *upstream.Instance) (lifecycle.State, bool) {
	st, ok := pr.Life(), false
	for range 8 {
		at := pr.Instance()
		if at == nil {
			at = to
		}
		if at == nil {
			return t.steps.step(pr, e, to) // at no instance: nothing to step
		}
		ran, done := false, false
		t.owners.socketFor(at).box.do(func() {
			ran = true
			if cur := pr.Instance(); cur != at && cur != nil {
				return // it moved: step where it is now
			}
			st, ok = t.steps.step(pr, e, to)
			done = true
		})
		if !ran || done {
			break
		}
	}
	return st, ok
}

// stepLater is stepVia without the wait, for a step whose outcome its
// caller does not need (the settling of an answer that changed no id): it
// is queued on the owner of pr's instance, after what that owner has
// queued already (the frames of a prompt that ran at once arrive with
// its answer), and follows pr if it moved meanwhile. Not on an owner.
func (t *submitter) stepLater(pr *Prompt, e lifecycle.Event) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	t.postStep(pr, e, 8)
}

// postStep queues e on the owner of pr's instance, following pr at most
// hops times.
func (t *submitter) postStep(pr *Prompt, e lifecycle.Event, hops int) {
	at := pr.Instance()
	if at == nil || hops == 0 {
		return
	}
	t.owners.socketFor(at).box.post(func() {
		if cur := pr.Instance(); cur != at && cur != nil {
			t.postStep(pr, e, hops-1) // it moved: step where it is now
			return
		}
		t.steps.step(pr, e, nil)
	})
}

// markDone ends pr with outcome. It reports false if pr was already done.
// On the owner of pr's instance.
func (t *steps) markDone(pr *Prompt, outcome string) bool {
	_, ok := t.step(pr, lifecycle.Event{Kind: lifecycle.Finish, Outcome: outcome}, nil)
	return ok
}

// Prompt looks a prompt up by its client-facing id.
func (t *Table) Prompt(id string) (*Prompt, bool) { return t.idx.get(id) }

// PromptByUpstreamID looks a prompt up by the id it has at inst.
func (t *Table) PromptByUpstreamID(inst *upstream.Instance, upstreamID string) (*Prompt, bool) {
	pr := t.idx.getUpstream(inst, upstreamID)
	return pr, pr != nil
}

// Outstanding returns the prompts not yet done (for shutdown and stats).
func (t *Table) Outstanding() int { return int(t.idx.nlive.Load()) }

// LocatePrompt returns the instance that has the prompt: the pin, or on a
// miss the instance whose /history or /queue knows it. ErrUnknownPrompt if none.
//
// A prompt pinned to an instance that has left the pool (a reload removed
// it, or gave its name to another address) is at the instance now at that
// address, under whatever name; with none there it is unknown: comfygate
// talks only to the instances it has, and never asks another machine
// about it.
func (t *Table) LocatePrompt(ctx context.Context, id string) (*upstream.Instance, error) {
	if pr, ok := t.idx.get(id); ok {
		if inst := pr.Instance(); inst != nil {
			insts := t.p.Instances()
			if slices.Contains(insts, inst) {
				return inst, nil
			}
			if cur := upstream.ByEndpoint(insts, inst.Endpoint()); cur != nil {
				return cur, nil
			}
			return nil, ErrUnknownPrompt
		}
	}
	return t.locate(ctx, id)
}

// locate asks every instance whether it knows id (history first, then
// queue) and pins the first answer as an adopted prompt: comfygate did not
// submit it (another replica did, or this process before a restart), so it
// has no sink and cannot be resubmitted, but calls naming it find its
// instance.
func (t *Table) locate(ctx context.Context, id string) (*upstream.Instance, error) {
	insts := t.p.Instances()
	type found struct {
		inst  *upstream.Instance
		state PromptState
	}
	ch := make(chan found, len(insts))
	var wg sync.WaitGroup
	for _, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, ok := lookupAt(ctx, inst, id); ok {
				ch <- found{inst, st}
			}
		}()
	}
	wg.Wait()
	close(ch)
	var best *found
	for f := range ch {
		// Prefer an instance where it is still queued or running over one
		// that ran it before (a resubmitted prompt's old history).
		if best == nil || (best.state == PromptDone && f.state != PromptDone) {
			best = &f
		}
	}
	if best == nil {
		return nil, ErrUnknownPrompt
	}
	t.owners.socketFor(best.inst).box.do(func() { t.adopt(id, best.inst, best.state) })
	return best.inst, nil
}

// adopt pins a prompt comfygate learned of from an instance. On inst's owner.
func (t *Table) adopt(id string, inst *upstream.Instance, st PromptState) *Prompt {
	if pr, ok := t.idx.get(id); ok && pr.Instance() != nil {
		return pr
	}
	now := time.Now()
	found := lifecycle.Queued
	switch st {
	case PromptRunning:
		found = lifecycle.Running
	case PromptDone:
		found = lifecycle.Ended
	}
	// A new prompt: nobody else can see it until it is in the table.
	life, _, ok := lifecycle.Step(lifecycle.State{}, lifecycle.Event{Kind: lifecycle.Adopt, At: now, Instance: inst.Name, UpstreamID: id, Found: found})
	if !ok {
		return nil
	}
	pr := &Prompt{ID: id, Created: now}
	pr.view.Store(&promptView{life: life, instance: inst})
	for {
		v, loaded := t.idx.byID.LoadOrStore(id, pr)
		if !loaded {
			break
		}
		if old := v.(*Prompt); old.Instance() != nil {
			return old // another took the id meanwhile (a submit, another look)
		} else if t.idx.byID.CompareAndSwap(id, old, pr) {
			break
		}
	}
	t.idx.byUp.Store(upKey{inst, id}, pr)
	// Queued or running too: comfygate does not run it, so the entry is
	// only a cache of where it is, and clients polling ids submitted
	// elsewhere must not grow the table without bound.
	t.idx.record(pr)
	return pr
}

// lookupAt reports whether inst knows upstream id uid, and where it is.
func lookupAt(ctx context.Context, inst *upstream.Instance, uid string) (PromptState, bool) {
	if entry, ok := historyEntry(ctx, inst, uid); ok && entry != nil {
		return PromptDone, true
	}
	running, pending, err := queueIDs(ctx, inst)
	if err != nil {
		return 0, false
	}
	if running[uid] {
		return PromptRunning, true
	}
	if pending[uid] {
		return PromptQueued, true
	}
	return 0, false
}

// historyEntry returns inst's /history/{uid} entry (nil when it has none).
// ok is false when the instance did not answer.
func historyEntry(ctx context.Context, inst *upstream.Instance, uid string) (json.RawMessage, bool) {
	status, body, err := inst.Transport().Call(ctx, "GET", "/history/"+url.PathEscape(uid), nil, nil)
	if err != nil || status != 200 {
		return nil, false
	}
	h, err := comfyapi.ParseHistory(body)
	if err != nil {
		return nil, false
	}
	return h[uid], true
}

// queueIDs returns the prompt ids inst reports running and pending.
func queueIDs(ctx context.Context, inst *upstream.Instance) (running, pending map[string]bool, err error) {
	status, body, err := inst.Transport().Call(ctx, "GET", "/queue", nil, nil)
	if err != nil {
		return nil, nil, err
	}
	if status != 200 {
		return nil, nil, fmt.Errorf("queue of %s: status %d", inst.Name, status)
	}
	q, err := comfyapi.ParseQueue(body)
	if err != nil {
		return nil, nil, fmt.Errorf("queue of %s: %w", inst.Name, err)
	}
	running, pending = q.IDSets()
	return running, pending, nil
}

// Cancel cancels one prompt wherever it is: deleted from its instance's
// queue when pending there, interrupted when running. It reports whether
// anything was cancelled. A pending prompt deleted from the queue ends
// without WS events, as in ComfyUI; it is marked done ("interrupted").
func (t *Table) Cancel(ctx context.Context, id string) (bool, error) {
	pr, ok := t.idx.get(id)
	if !ok || pr.Instance() == nil {
		if _, err := t.LocatePrompt(ctx, id); err != nil {
			return false, err
		}
		if pr, ok = t.idx.get(id); !ok {
			return false, ErrUnknownPrompt
		}
	}
	c := &cancelCall{follow: newFollow(ctx, &t.owners, t.run, t.log, pr, "a cancel"), steps: t.steps}
	c.post(c.begin)
	c.wait()
	return c.ok, c.err
}

// cancelCall is one Cancel, as the owner of its prompt follows it (follow).
type cancelCall struct {
	*follow
	steps *steps
	inst  *upstream.Instance // where it was cancelled
	uid   string             // its id there
	ok    bool               // something was cancelled
	err   error
}

var cancelHeader = map[string]string{"Content-Type": "application/json"}

// begin deletes the prompt from its instance's queue when pending there
// (in a worker), or interrupts it when running. On the owner.
func (c *cancelCall) begin(at *upstream.Instance) {
	v := c.pr.snap()
	c.inst, c.uid = at, v.life.UpstreamID
	st := stateOf(v.life)
	if st == PromptDone || c.uid == "" {
		c.end()
		return
	}
	if st != PromptQueued {
		c.interrupt()
		return
	}
	inst, uid := c.inst, c.uid
	c.work(func(ctx context.Context) func(*upstream.Instance) {
		body, _ := json.Marshal(map[string][]string{"delete": {uid}})
		if _, _, err := inst.Transport().Call(ctx, "POST", "/queue", cancelHeader, body); err != nil {
			return func(*upstream.Instance) { c.fail(err) }
		}
		return func(*upstream.Instance) { c.lookAfterDelete() }
	})
}

// lookAfterDelete asks the instance's queue, in a worker, after the
// delete: one that started before it is running now, and one that did
// not is gone for good. On the owner.
func (c *cancelCall) lookAfterDelete() {
	inst := c.inst
	c.work(func(ctx context.Context) func(*upstream.Instance) {
		running, pending, err := queueIDs(ctx, inst)
		return func(*upstream.Instance) { c.looked(running, pending, err) }
	})
}

// looked acts on the queue's answer: still pending, nothing was
// cancelled; running, it started between the look and the delete and is
// interrupted; in neither, the history says whether it ran before the
// delete (asked in a worker). On the owner.
func (c *cancelCall) looked(running, pending map[string]bool, err error) {
	inst, uid := c.inst, c.uid
	switch {
	case err != nil:
		c.fail(err)
	case pending[uid]:
		c.end()
	case running[uid]:
		c.interrupt()
	default:
		c.work(func(ctx context.Context) func(*upstream.Instance) {
			entry, ok := historyEntry(ctx, inst, uid)
			return func(*upstream.Instance) { c.deleted(ok && entry != nil) }
		})
	}
}

// deleted marks the prompt done ("interrupted") unless it ran before the
// delete. A pending prompt deleted from the queue ends without WS events,
// as in ComfyUI. On the owner.
func (c *cancelCall) deleted(ran bool) {
	if !ran {
		// The queue check that follows the instance's status message may
		// have marked it done already: still this delete.
		c.steps.markDone(c.pr, metrics.OutcomeInterrupted)
		c.ok = true
	}
	c.end()
}

// interrupt interrupts the prompt at its instance, in a worker. On the owner.
func (c *cancelCall) interrupt() {
	inst, uid := c.inst, c.uid
	c.work(func(ctx context.Context) func(*upstream.Instance) {
		body, _ := json.Marshal(map[string]string{"prompt_id": uid})
		status, _, err := inst.Transport().Call(ctx, "POST", "/interrupt", cancelHeader, body)
		if err != nil {
			return func(*upstream.Instance) { c.fail(err) }
		}
		return func(*upstream.Instance) { c.ok = status == 200; c.end() }
	})
}

// fail ends the cancel with err. On the owner.
func (c *cancelCall) fail(err error) {
	c.err = fmt.Errorf("cancel %s: %w", c.pr.ID, err)
	c.end()
}

// newUUID returns a random lowercase UUIDv4.
func newUUID() string { return ids.UUID() }

// isCanonicalUUID reports a lowercase hyphenated UUID, the only form 2026
// ComfyUI accepts as prompt_id.
func isCanonicalUUID(s string) bool { return ids.IsCanonicalUUID(s) }

// quoteJSON returns s as a JSON string.
func quoteJSON(s string) []byte { return jsonobj.Quote(s) }

// replaceID rewrites every JSON string equal to from into to.
func replaceID(data []byte, from, to string) []byte {
	if from == to || from == "" {
		return data
	}
	return bytes.ReplaceAll(data, quoteJSON(from), quoteJSON(to))
}

// errorsIsAny reports whether err is any of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
