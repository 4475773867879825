// Package jobs is comfygate's async job facade: "upload an image to a named
// workflow, get a job id at once, poll its status and progress, download
// the result". It runs ComfyUI API-format workflows on the same instance
// pool, load balancing and pinning as the proxied API, keeps jobs in
// memory, and limits how many of them are at the instances at once; the
// rest wait in comfygate, each API key's in order, the keys taking turns.
//
// For back ends it also answers in one request (wait), streams each job's
// events (Server-Sent Events, webhooks signed the Standard Webhooks way),
// keeps every output file past the instance, remembers Idempotency-Keys,
// checks named typed parameters, and validates without running (dry run).
//
// A job's id is the prompt_id it is submitted under, so ComfyUI's own
// GET /api/jobs/{id} and POST /api/jobs/{id}/cancel work on facade jobs too.
//
// Service is a facade that wires the parts and keeps the exported API;
// each part has one job and talks to the others by method calls:
//
//   - engine (service.go): the jobs map and the lock that guards it and
//     every job's mutable fields, the jobs' states, the slots, dispatch to
//     the prompt table, retries, cancellation, and the events that move a
//     job on. The other parts take its lock with lock and unlock.
//   - waitLine (waitline.go): the wait line, the jobs taken from it, and
//     the run-time estimates; the engine owns it, the API reads places and
//     estimates from it under the engine's lock.
//   - watchdog (watchdog.go): expiry of finished jobs, and jobs at an
//     instance whose end no event reported.
//   - runner (runner.go): the service's goroutines, their panics, and the
//     wait for them at Close.
//   - store (store.go, persist.go, idempotency.go, cache.go): the records
//     in jobs.state_dir and the restore and reconciling of a restarted
//     process, the Idempotency-Keys, and the result cache.
//   - delivery (delivery.go, events.go, webhook.go, outputs.go, s3.go):
//     the event log and the waits on it (long polls, Server-Sent Events),
//     webhooks, the outputs fetched from the instance and kept, S3
//     uploads, and the images uploaded to the instance a job runs on.
//   - api (api.go, http.go, dryrun.go, input.go, the spooling in keep.go):
//     ServeJobs and the route handlers, the parsing of submissions, and
//     the views of jobs (status, result, list, Line).
//   - catalog (placement.go): the workflows, reloaded whole, and the
//     placement policy.
//   - sharedJobs (replicas.go), with state.url set: the wait line and the
//     jobs' records in the shared store; claims from the line for the
//     engine, writes of the jobs it runs, mirrors of the others.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/limits"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// Tuning that configuration does not expose.
const (
	// noUpstreamBackoff pauses dispatch after the pool had no instance.
	noUpstreamBackoff = 500 * time.Millisecond
	// maxSubmitAttempts bounds how often one job's upload or submission
	// may fail (other than for lack of any instance) before it fails.
	maxSubmitAttempts = 5
	// dispatchTick re-runs dispatch when nothing woke it (backoff ended).
	dispatchTick = 250 * time.Millisecond
	// fetchAttempts bounds the failed downloads of a finished job's
	// result from an instance in the fleet.
	fetchAttempts = 4
	// fetchPatience bounds how long a finished job's result download
	// waits for its instance to come back to the fleet.
	fetchPatience = 5 * time.Minute
)

// Service runs async jobs. Create it with New, start it with Start. It
// wires the parts (see the package documentation) and holds none of the
// jobs' state itself.
type Service struct {
	eng    *engine
	cat    *catalog
	api    *api
	bodies *limits.BodyBudget
	// The engine's other parts, which tests reach.
	del *delivery
	st  *store
	wd  *watchdog
}

// engine runs the jobs: their states, the wait line (waitLine), the
// slots, dispatch to the prompt table, retries and cancellation. It owns
// the lock that guards the jobs map, the line and every job's mutable
// fields; the other parts take it with lock and unlock.
type engine struct {
	cfg config.Jobs
	be  backend
	m   *metrics.Metrics
	log *slog.Logger
	cat *catalog  // the workflows and the placement policy
	wd  *watchdog // expiry, and jobs whose end went unseen

	now func() time.Time
	// cancelGrace is how long a cancelled running job keeps its slot
	// while the interrupt takes effect, if the instance never confirms.
	cancelGrace time.Duration
	// sweepEvery is the period of the loop that expires finished jobs and
	// watches those at the instances.
	sweepEvery time.Duration
	// retryDelay holds dispatch back after a failed submission.
	retryDelay time.Duration

	inputs *inputStore // the images of unfinished jobs
	del    *delivery   // events, webhooks, outputs
	st     *store      // records, Idempotency-Keys, result cache
	sh     *sharedJobs // the wait line and records the replicas share; nil in memory

	run     *runner // the goroutines
	runCtx  context.Context
	stop    context.CancelFunc
	started sync.Once

	jobsMu    sync.Mutex // guards the fields below and every job's mutable fields
	jobs      map[string]*job
	line      *waitLine // the wait line, the active jobs, the estimates
	inFlight  int       // jobs holding a slot (≤ MaxConcurrent)
	holdUntil time.Time // dispatch paused until then (no instance)
	closed    bool
	seq       uint64
}

// New loads and validates the workflows (built-in ones and cfg.Workflows)
// and returns the service. It fails with an error naming the workflow,
// the file and the node when a workflow is unusable. table is the prompt
// table attached to pool. shared is the state store the replicas share
// (the Idempotency-Keys live there); nil: this process's memory.
func New(cfg *config.Config, pool *upstream.Pool, table *prompts.Table, shared *sharedstate.Store, m *metrics.Metrics, log *slog.Logger) (*Service, error) {
	return newService(cfg, poolBackend{pool, table}, shared, m, log)
}

// Check reports every error New would refuse cfg for, each starting with
// its key, without building anything that runs: the workflows (files
// read and parsed), the S3 store and the default webhook URL. The state
// directory is not opened.
func Check(cfg *config.Config) error {
	_, err := prepare(cfg)
	return err
}

// prepared is what a Service is built from besides the configuration.
type prepared struct {
	wfs   map[string]*workflow
	store *s3Store
	hooks *outboundClient
}

// prepare builds what New needs from cfg, with every error it finds.
func prepare(cfg *config.Config) (prepared, error) {
	var p prepared
	var errs []error
	var err error
	if p.wfs, err = loadWorkflows(cfg); err != nil {
		errs = append(errs, err)
	}
	if p.store, err = newS3Store(cfg.Jobs.S3); err != nil {
		errs = append(errs, err)
	}
	p.hooks = newWebhookClient(cfg.Webhooks)
	if u := cfg.Webhooks.DefaultURL; u != "" {
		if err := p.hooks.check(u); err != nil {
			errs = append(errs, fmt.Errorf("webhooks.default_url: %w", err))
		}
	}
	return p, errors.Join(errs...)
}

func newService(cfg *config.Config, be backend, shared *sharedstate.Store, m *metrics.Metrics, log *slog.Logger) (*Service, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if shared == nil {
		shared = sharedstate.Memory()
	}
	p, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	run := &runner{ctx: runCtx, wake: make(chan struct{}, 1), log: log}
	cat := &catalog{be: be, wfs: p.wfs}
	line := newWaitLine(cfg.Jobs.MaxWaiting, cfg.Jobs.MaxWaitingBytes)
	inputs := newInputStore(cfg.Jobs.InputMemoryBytes, cfg.Jobs.StateDir)
	bodies := limits.NewBodyBudget(cfg.Limits.MaxBufferedBodyBytes)
	eng := &engine{
		cfg:         cfg.Jobs,
		be:          be,
		m:           m,
		log:         log,
		cat:         cat,
		now:         time.Now,
		cancelGrace: max(cfg.Timeout, time.Second),
		sweepEvery:  min(max(cfg.Jobs.Timeout/4, 10*time.Millisecond), time.Second),
		retryDelay:  200 * time.Millisecond,
		run:         run,
		runCtx:      runCtx,
		stop:        stop,
		jobs:        map[string]*job{},
		line:        line,
		inputs:      inputs,
	}
	del := &delivery{eng: eng, line: line, ctx: runCtx, cfg: cfg.Jobs, log: log, m: m, be: be,
		heartbeat: 15 * time.Second, webhookBackoff: time.Second, retryDelay: eng.retryDelay, hooks: p.hooks, s3: p.store}
	wd := &watchdog{eng: eng, del: del, be: be, ctx: runCtx, staleAfter: 30 * time.Second}
	st := &store{eng: eng, run: run, del: del, wd: wd, cat: cat, be: be, inputs: inputs, ctx: runCtx,
		cfg: cfg.Jobs, log: log, m: m, idem: shared.Idempotency(maxIdempotencyKeys, func() time.Time { return eng.timeNow() })}
	del.st = st
	eng.del, eng.st, eng.wd = del, st, wd
	if shared.Shared() {
		eng.sh = newSharedJobs(eng, shared.Jobs(), shared.Results(), log)
	}
	a := &api{eng: eng, del: del, st: st, cat: cat, line: line, ctx: runCtx, cfg: cfg.Jobs, log: log, be: be,
		inputs: inputs, bodies: bodies, imageURLs: newImageClient(cfg.ImageURLs), hooks: p.hooks}
	if err := st.open(); err != nil {
		return nil, err
	}
	return &Service{eng: eng, cat: cat, api: a, bodies: bodies, del: del, st: st, wd: wd}, nil
}

// Start runs the dispatcher (moves jobs from the wait line to the
// instances) and the expiry loop until ctx ends or Close.
func (s *Service) Start(ctx context.Context) { s.eng.start(ctx) }

// Close stops the loops and waits for the goroutines the service started.
// Jobs still running on instances are left to them; with a state
// directory their records are written, and a restarted comfygate carries
// on with them. With the shared line (state.url), the jobs' last changes
// are written and their claims end: another replica carries on with them.
func (s *Service) Close() { s.eng.close() }

// CancelJob cancels a facade job wherever it is: removed from the wait
// line, deleted from its instance's queue, or interrupted when running.
// A cancelled job reports "cancelled" at once; a running one keeps its
// slot until the instance confirms the interrupt (or cancelGrace passes),
// so MaxConcurrent holds for the GPUs too. known is false when id is no
// facade job (or it expired).
//
// With scope not "", a job whose owner is not scope is never cancelled;
// it still reports known (and not cancelled), so that the caller does not
// go on to cancel the job's prompt, which has the job's id, by another way.
func (s *Service) CancelJob(ctx context.Context, id, scope string) (known, cancelled bool) {
	return s.eng.cancel(ctx, id, scope)
}

// JobOwner returns the owner (the submitting key's name, "" with keys
// off) of facade job id; known is false when id is no facade job (or it
// expired). A job restored from the state directory keeps its owner.
func (s *Service) JobOwner(id string) (owner string, known bool) {
	s.eng.mirror(id)
	s.eng.lock()
	defer s.eng.unlock()
	j := s.eng.lookupLocked(id, "")
	if j == nil {
		return "", false
	}
	return j.meta.owner, true
}

// start is Service.Start.
func (s *engine) start(ctx context.Context) {
	s.started.Do(func() {
		context.AfterFunc(ctx, s.stop)
		s.run.goLoop("dispatch", dispatchTick, s.dispatch)
		s.run.goLoop("expiry", s.sweepEvery, s.wd.sweep)
		s.run.goPlain(s.st.writer)
		if s.sh != nil {
			s.run.goPlain(s.sh.writer)
			s.run.goPlain(s.sh.loop)
		}
		s.jobsMu.Lock()
		s.st.startReconcilingLocked()
		s.jobsMu.Unlock()
	})
}

// close is Service.Close.
func (s *engine) close() {
	s.stop()
	s.jobsMu.Lock()
	s.closed = true
	s.jobsMu.Unlock()
	s.run.wait()
	if s.sh != nil {
		s.sh.release() // once its last changes are written
	}
	s.st.close()
	s.inputs.close()
	s.del.close()
}

// goLocked starts fn on a goroutine the service waits for in Close. It
// reports false once the service is closed. s.jobsMu must be held.
func (s *engine) goLocked(what string, fn func()) bool {
	if s.closed {
		return false
	}
	s.run.spawn(what, fn)
	return true
}

// dispatch moves jobs from the head of the wait line to the instances
// while slots are free.
func (s *engine) dispatch() {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	now := s.now()
	moved := false
	defer func() {
		if moved {
			s.positionsLocked()
		}
	}()
	for s.inFlight < s.cfg.MaxConcurrent && s.line.len() > 0 && !now.Before(s.holdUntil) {
		moved = true
		j := s.line.pop()
		j.state = stSubmitting
		j.dispatched = now
		j.holdsSlot = true
		s.inFlight++
		if !s.goLocked("submit", func() { s.submit(j) }) {
			s.finishLocked(j, stFailed, "comfygate is shutting down")
			s.releaseLocked(j)
		}
	}
	s.gaugesLocked()
}

func (s *engine) gaugesLocked() {
	if s.sh == nil {
		// With the shared line the gauge is the fleet's (sharedJobs.gauge).
		s.m.SetWaitLine(s.line.len())
	}
	s.m.SetJobsInFlight(s.inFlight)
}

// releaseLocked frees the job's slot, if it holds one.
func (s *engine) releaseLocked(j *job) {
	if !j.holdsSlot {
		return
	}
	j.holdsSlot = false
	if j.slotTimer != nil {
		j.slotTimer.Stop()
		j.slotTimer = nil
	}
	s.inFlight--
	s.gaugesLocked()
	s.run.kick()
	if s.sh != nil {
		s.sh.kick()
	}
}

// submit submits the job's prompt; the prompt table picks the instance, and the
// job's images are uploaded there (and only there) just before the prompt
// goes (placeImages, as the request's Prepare, which a failover runs
// again for the instance it moves the prompt to). Runs on its own
// goroutine, holding the job's slot.
func (s *engine) submit(j *job) {
	ctx := s.runCtx
	s.jobsMu.Lock()
	if j.state != stSubmitting { // cancelled meanwhile
		s.releaseLocked(j)
		s.jobsMu.Unlock()
		return
	}
	j.submitted = true
	prompt := j.prompt
	refused := maps.Clone(j.refusedBy)
	s.jobsMu.Unlock()

	pl, why, runnable := s.cat.place(j, prompt)
	eligible := pl.Eligible
	if !runnable {
		s.jobsMu.Lock()
		j.submitted = false
		s.log.Warn("job has no instance that can run it", "job_id", j.id, "workflow", j.wf.name, "error", why)
		s.finishLocked(j, stFailed, why)
		s.releaseLocked(j)
		s.jobsMu.Unlock()
		return
	}
	if len(refused) > 0 {
		base := eligible
		eligible = func(inst *upstream.Instance) bool {
			return !refused[inst.Name] && (base == nil || base(inst))
		}
	}
	var prepare func(context.Context, *upstream.Instance) error
	if len(j.images) > 0 {
		prepare = func(ctx context.Context, inst *upstream.Instance) error { return s.del.placeImages(ctx, j, inst) }
	}
	s.st.persist(j)
	if s.sh != nil {
		if err := s.sh.sendable(j); err != nil {
			if !errors.Is(err, errClaimLost) { // lost: given up already
				s.retryLater(j, err)
			}
			return
		}
	}
	extra, _ := json.Marshal(map[string]any{"comfygate_job": map[string]string{"workflow": j.wf.name}})
	res, err := s.be.Submit(ctx, prompts.SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": prompt, "extra_data": extra},
		PromptID: j.id,
		Sink:     j,
		Eligible: eligible,
		Prefer:   pl.Prefer,
		Prepare:  prepare,
	})
	if err == nil && res.Prompt != nil {
		s.cat.ran(res.Instance, pl)
	}
	switch {
	case err != nil && res.Instance != nil:
		// Sent, but no answer in time: the instance may have taken it. The
		// prompt table keeps it pinned and settles it (its events, /queue,
		// /history); if the instance never took it the table forgets it and
		// the watchdog (sweep) puts the job back in line.
		s.log.Warn("job submission unconfirmed", "job_id", j.id, "instance", res.Instance.Name, "err", err)
	case err != nil:
		s.jobsMu.Lock()
		j.submitted = false
		if errors.Is(err, upstream.ErrNoUpstream) && len(refused) > 0 {
			// Every instance left refused it: the instances' answers say why.
			msg := j.refuseMsg
			s.finishLocked(j, stFailed, msg)
			s.releaseLocked(j)
			s.jobsMu.Unlock()
			return
		}
		s.jobsMu.Unlock()
		s.retryLater(j, err)
		return
	case res.Status != 200 || res.Prompt == nil:
		msg := submitError(res.Status, res.Body)
		s.jobsMu.Lock()
		j.submitted = false
		inst := instName(res.Instance)
		if res.Instance != nil && (res.Status >= 500 || j.uploadFailed[inst]) {
			// The instance is to blame (a 5xx to a workflow comfygate
			// built, or it did not take the images): another instance
			// may run it. When none is left, the answers are the error.
			if j.refusedBy == nil {
				j.refusedBy = map[string]bool{}
			}
			j.refusedBy[inst] = true
			j.refuseMsg = msg
			if j.uploadFailed[inst] {
				j.refuseMsg = "comfygate could not upload the job's image to any ComfyUI instance"
			}
			s.log.Warn("job refused by instance, trying another", "job_id", j.id, "workflow", j.wf.name, "instance", inst, "status", res.Status, "error", msg)
			if j.state == stSubmitting {
				s.requeueLocked(j, errRefused)
			} else {
				s.releaseLocked(j)
			}
			s.jobsMu.Unlock()
			return
		}
		s.log.Warn("job rejected by instance", "job_id", j.id, "workflow", j.wf.name, "instance", inst, "status", res.Status, "error", msg)
		s.finishLocked(j, stFailed, msg)
		s.releaseLocked(j)
		s.jobsMu.Unlock()
		return
	}
	s.jobsMu.Lock()
	if j.instance == "" && res.Instance != nil {
		j.instance = res.Instance.Name
	}
	if j.state == stSubmitting {
		j.state = stQueued
	}
	cancelled := j.state == stCancelled && j.holdsSlot
	s.jobsMu.Unlock()
	s.st.persist(j)
	if cancelled {
		// Cancelled while the prompt was being submitted: take it back.
		if _, err := s.be.Cancel(ctx, j.id); err != nil {
			s.log.Warn("cancel job after submit", "job_id", j.id, "err", err)
		}
		s.jobsMu.Lock()
		s.releaseLocked(j)
		s.jobsMu.Unlock()
	}
}

// errRefused puts back in line a job an instance refused through its own
// fault: it is retried at once, elsewhere, without counting an attempt.
var errRefused = errors.New("the instance refused the job")

// retryLater puts a job whose submission failed back at the head of the
// wait line. Failures other than "no instance" count; past
// maxSubmitAttempts the job fails.
func (s *engine) retryLater(j *job, err error) {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	if j.state != stSubmitting {
		s.releaseLocked(j)
		return // cancelled meanwhile
	}
	s.requeueLocked(j, err)
}

// requeueLocked takes a job that has not run back to the head of the line.
func (s *engine) requeueLocked(j *job, err error) {
	s.releaseLocked(j)
	j.submitted = false
	noUpstream := errors.Is(err, upstream.ErrNoUpstream)
	if !noUpstream && !errors.Is(err, errRefused) {
		j.attempts++
		if j.attempts >= maxSubmitAttempts || s.runCtx.Err() != nil {
			s.log.Warn("job submission failed", "job_id", j.id, "workflow", j.wf.name, "attempts", j.attempts, "err", err)
			s.finishLocked(j, stFailed, "comfygate could not submit the job to any ComfyUI instance")
			return
		}
	}
	s.log.Debug("job submission deferred", "job_id", j.id, "err", err)
	j.state = stWaiting
	s.st.saveLocked(j)
	s.line.pushFront(j)
	s.positionsLocked()
	backoff := s.retryDelay
	if noUpstream {
		backoff = noUpstreamBackoff
	}
	if !errors.Is(err, errRefused) {
		s.holdUntil = s.now().Add(backoff)
	}
	s.run.kick()
	s.gaugesLocked()
}

// submitError turns an instance's non-200 answer to POST /prompt into a
// message: ComfyUI's error message plus every node error.
func submitError(status int, body []byte) string {
	r, ok := comfyapi.ParsePromptError(body)
	if !ok || r.Message == "" {
		return fmt.Sprintf("ComfyUI rejected the workflow (status %d)", status)
	}
	msg := r.Message
	if r.Details != "" {
		msg += ": " + r.Details
	}
	// Every node's errors, in node id order, so the message is the same each time.
	for _, id := range slices.Sorted(maps.Keys(r.NodeErrors)) {
		ne := r.NodeErrors[id]
		for _, e := range ne.Errors {
			msg += fmt.Sprintf("; node %s (%s): %s", id, ne.ClassType, e.Message)
			if e.Details != "" {
				msg += ": " + e.Details
			}
		}
	}
	return msg
}

// onEvent applies one execution event of the job's prompt.
func (s *engine) onEvent(j *job, p *prompts.Prompt, ev prompts.Event, d *comfyapi.WSMessage) {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	if j.remote {
		return // another replica runs it now
	}
	now := s.now()
	j.lastEvent = now
	j.sawEvent = true
	endOfRun := d.Ends()
	if j.state.terminal() || j.state == stFetching {
		if endOfRun {
			s.releaseLocked(j) // a cancelled job's interrupt took effect
		}
		return
	}
	if ev.Instance != nil {
		j.instance = ev.Instance.Name
	}
	if j.state < stRunning && ev.Type != comfyapi.TypeExecutionError {
		j.state = stRunning
		if j.started.IsZero() {
			j.started = now
		}
		s.del.emitLocked(j, evStarted, "")
	} else if ev.Type == "execution_start" {
		s.del.emitLocked(j, evStarted, "") // resubmitted: started again, maybe elsewhere
	}
	switch ev.Type {
	case comfyapi.TypeExecutionStart:
		// A resubmitted prompt starts over: node progress restarts, the
		// reported number stays where it was.
		j.prog.restart()
		j.started = now
		j.outRefs, j.outInst = nil, nil
	case comfyapi.TypeExecutionCached:
		j.prog.cached(d.CachedNodes())
	case comfyapi.TypeExecuting:
		if !d.NodeNull() {
			j.prog.executing(d.Node())
		}
	case comfyapi.TypeProgress:
		value, max := d.Progress()
		j.prog.step(d.Node(), value, max)
	case comfyapi.TypeProgressState:
		for id, ns := range d.NodeStates() {
			if ns.DisplayNodeID != "" {
				id = ns.DisplayNodeID
			}
			switch ns.State {
			case "finished":
				j.prog.finish(id)
			case "running":
				j.prog.step(id, ns.Value, ns.Max)
			}
		}
	case comfyapi.TypeExecuted:
		id := d.Node()
		j.prog.finish(id)
		if refs := outputRefs(id, d.Data.Output); len(refs) > 0 {
			j.addOutputsLocked(refs)
			j.outInst = ev.Instance
		}
	case comfyapi.TypeExecutionError:
		if !d.Terminal() {
			return // ExecutionBlocked: the job may still succeed
		}
		msg := d.ExceptionMessage()
		if msg == "" {
			msg = "the workflow failed on ComfyUI"
		}
		nodeID, _ := comfyapi.String(d.Data.NodeID)
		nodeType, _ := comfyapi.String(d.Data.NodeType)
		j.errDetail = &errorDetails{NodeID: nodeID, NodeType: nodeType, ExceptionType: d.ExceptionType()}
		s.log.Warn("job failed on instance", "job_id", j.id, "workflow", j.wf.name, "instance", j.instance, "node", nodeID, "exception_type", d.ExceptionType())
		s.finishLocked(j, stFailed, msg)
		s.releaseLocked(j)
		return
	case comfyapi.TypeExecutionInterrupted:
		s.finishLocked(j, stCancelled, "")
		s.releaseLocked(j)
		return
	}
	if ev.Type == comfyapi.TypeExecutionSuccess || (ev.Type == comfyapi.TypeExecuting && d.NodeNull()) {
		s.succeededLocked(j, p, ev.Instance)
		return
	}
	s.del.progressLocked(j, d.Node())
}

// succeededLocked handles the end of a successful run: the slot is free,
// the run time feeds the estimate, and the result is fetched eagerly (so
// it outlives the instance).
func (s *engine) succeededLocked(j *job, p *prompts.Prompt, inst *upstream.Instance) {
	now := s.now()
	j.state = stFetching
	j.prog.percent()
	s.releaseLocked(j)
	s.st.saveLocked(j)
	if !j.started.IsZero() {
		s.line.measured(j.wf.name, now.Sub(j.started))
	}
	refs, from := slices.Clone(j.outRefs), j.outInst
	if from == nil {
		from = inst
	}
	upstreamID := j.id
	if p != nil {
		upstreamID = p.UpstreamID()
	}
	if !s.goLocked("fetch", func() { s.del.fetch(j, from, refs, upstreamID) }) {
		s.finishLocked(j, stFailed, "comfygate is shutting down")
	}
}

// finishLocked moves a job to a terminal state and records it.
func (s *engine) finishLocked(j *job, st state, msg string) {
	if j.state.terminal() {
		return
	}
	now := s.now()
	if j.state == stWaiting && s.line.remove(j) {
		s.positionsLocked()
	}
	j.state = st
	j.finished = now
	j.errMsg = msg
	for _, im := range j.images {
		s.inputs.release(im)
	}
	j.images = nil
	if st == stCompleted {
		j.prog.complete()
	}
	s.line.done(j)
	var run, wait time.Duration
	if j.dispatched.IsZero() {
		wait = now.Sub(j.created)
	} else {
		wait = j.dispatched.Sub(j.created)
		run = now.Sub(j.dispatched)
	}
	s.m.JobFinished(j.wf.name, st.public(), run, wait)
	s.gaugesLocked()
	if s.log.Enabled(context.Background(), slog.LevelInfo) {
		s.log.Info("job finished", "job_id", j.id, "workflow", j.wf.name, "status", st.public(),
			"instance", j.instance, "run_ms", run.Milliseconds(), "wait_ms", wait.Milliseconds())
	}
	s.st.saveLocked(j)
	switch st {
	case stCompleted:
		s.del.emitLocked(j, evCompleted, "")
	case stFailed:
		s.del.emitLocked(j, evFailed, "")
	default:
		s.del.emitLocked(j, evCancelled, "")
	}
}

// positionEvents is how far down the wait line jobs get a queued event
// each time their place changes: further back, places change on every
// dispatch and nobody watches them move one by one.
const positionEvents = 50

// positionsLocked emits a queued event for each job near the head of the
// line whose place changed since its last one.
func (s *engine) positionsLocked() {
	for i, x := range s.line.head(positionEvents) {
		if x.lastPos != i+1 {
			s.del.emitLocked(x, evQueued, "")
		}
	}
}

// cancel is Service.CancelJob.
func (s *engine) cancel(ctx context.Context, id, scope string) (known, cancelled bool) {
	if s.sh != nil {
		s.mirror(id)
		s.jobsMu.Lock()
		j := s.lookupLocked(id, "")
		remote := j != nil && j.remote
		if remote && !inScope(j, scope) {
			s.jobsMu.Unlock()
			return true, false
		}
		s.jobsMu.Unlock()
		if remote {
			if known, cancelled, handled := s.cancelRemote(ctx, id); handled {
				return known, cancelled
			}
		}
	}
	s.jobsMu.Lock()
	j := s.lookupLocked(id, "")
	if j == nil {
		s.jobsMu.Unlock()
		return false, false
	}
	if !inScope(j, scope) {
		s.jobsMu.Unlock()
		return true, false
	}
	switch j.state {
	case stWaiting, stSubmitting:
		// In the line: gone. Being submitted: submit() sees the state and
		// takes the prompt back (and frees the slot) itself.
		j.cancelAsked = true
		s.finishLocked(j, stCancelled, "")
		s.jobsMu.Unlock()
		return true, true
	case stQueued, stRunning:
	default:
		s.jobsMu.Unlock()
		return true, false
	}
	j.cancelAsked = true
	s.jobsMu.Unlock()

	ok, err := s.be.Cancel(ctx, id)
	if err != nil {
		s.log.Warn("cancel job", "job_id", id, "err", err)
	} else if !ok && s.wd.deletedUnseen(ctx, j) {
		// The prompt table's queue check (after the instance's status broadcast)
		// marked the prompt done between its delete and its own look, and
		// Cancel then took "done" for "finished first". The instance has
		// no history of it: it was deleted, so it is cancelled.
		ok = true
	}
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	if j.state.terminal() || j.state == stFetching {
		return true, j.state == stCancelled
	}
	if !ok {
		return true, false
	}
	running := j.state == stRunning
	s.finishLocked(j, stCancelled, "")
	if !running {
		s.releaseLocked(j) // deleted from the instance's queue: it never runs
	} else if j.holdsSlot {
		j.slotTimer = time.AfterFunc(s.cancelGrace, func() {
			s.jobsMu.Lock()
			s.releaseLocked(j)
			s.jobsMu.Unlock()
		})
	}
	return true, true
}

// lookupLocked returns the job, nil when unknown, expired, or (scope not
// "") owned by another than scope.
func (s *engine) lookupLocked(id, scope string) *job {
	j := s.jobs[id]
	if j == nil || s.expiredLocked(j, s.now()) || !inScope(j, scope) {
		return nil
	}
	return j
}

// inScope reports whether j exists for a request of scope: every job when
// scope is "", else only scope's own.
func inScope(j *job, scope string) bool { return scope == "" || j.meta.owner == scope }

func (s *engine) expiredLocked(j *job, now time.Time) bool {
	return j.state.terminal() && now.Sub(j.finished) >= s.cfg.Timeout
}

// sweepLocked forgets expired Idempotency-Keys, removes expired jobs and
// returns the jobs at the instances.
func (s *engine) sweepLocked(now time.Time) (watch []*job) {
	s.st.sweepIdem()
	for id, j := range s.jobs {
		if s.expiredLocked(j, now) && !j.holdsSlot {
			s.del.dropOutputsLocked(j)
			s.st.forgetLocked(j)
			delete(s.jobs, id)
			continue
		}
		if atInstance(j) && !j.remote { // a mirror's replica watches it
			watch = append(watch, j)
		}
	}
	return watch
}

func instName(inst *upstream.Instance) string {
	if inst == nil {
		return ""
	}
	return inst.Name
}

// itoa is strconv.Itoa, named for brevity in headers.
func itoa(n int) string { return strconv.Itoa(n) }

// lock takes the lock that guards every job's mutable fields, the jobs
// map and the wait line. The other parts take it through lock and unlock.
func (s *engine) lock() { s.jobsMu.Lock() }

func (s *engine) unlock() { s.jobsMu.Unlock() }

// timeNow is the service's clock (tests set now).
func (s *engine) timeNow() time.Time { return s.now() }

// jobLocked returns job id as held, expired or not; nil when unknown.
func (s *engine) jobLocked(id string) *job { return s.jobs[id] }

// jobsLocked returns the unexpired jobs of scope that keep accepts, and
// how many of scope's jobs wait in line and hold a slot.
func (s *engine) jobsLocked(scope string, keep func(*job) bool) (js []*job, waiting, inFlight int) {
	now := s.now()
	js = make([]*job, 0, len(s.jobs))
	for _, j := range s.jobs {
		if !s.expiredLocked(j, now) && inScope(j, scope) && keep(j) {
			js = append(js, j)
		}
	}
	waiting, inFlight = s.line.len(), s.inFlight
	if scope != "" {
		// Counted over the scope's own jobs: the others do not exist here.
		waiting, inFlight = s.line.count(scope)
	}
	return js, waiting, inFlight
}

// accept puts a validated submission in the wait line.
func (s *engine) accept(wf *workflow, sub *submission, values map[string]json.RawMessage, images map[string][]byte, hook string, meta jobMeta) (*job, *apiError) {
	healthy := s.be.Healthy()
	parallel := max(1, min(len(healthy), s.cfg.MaxConcurrent))
	j := &job{
		s:      s,
		id:     newJobID(),
		wf:     wf,
		inputs: sub.inputs,
		params: values,
		meta:   meta,
	}
	var data [][]byte
	if wf.needsImage() {
		j.images = append(j.images, &jobImage{name: j.id + extension(sub.format)})
		data = append(data, sub.image)
	}
	size := int64(0)
	if sub.spool != nil {
		size = sub.spool.size
	}
	for _, name := range slices.Sorted(maps.Keys(images)) {
		format, _, _, _ := sniffImage(images[name])
		j.images = append(j.images, &jobImage{param: name, name: j.id + "-" + name + extension(format)})
		data = append(data, images[name])
	}
	prompt, err := wf.buildWith(imageNames(j.images), sub.inputs, values)
	if err != nil {
		return nil, badRequest(errInvalidOverride, "cannot apply the inputs: %v", err)
	}
	for _, d := range data {
		size += int64(len(d))
	}
	// May the job join the wait line now: 503 when no instance is
	// available, 429 with Retry-After when the line is full by count or
	// by bytes. Asked before the images are written anywhere.
	s.jobsMu.Lock()
	aerr := s.line.check(wf, size, parallel, len(healthy))
	s.jobsMu.Unlock()
	if aerr != nil {
		return nil, aerr
	}
	for i, im := range j.images {
		var err error
		if i == 0 && sub.spool != nil {
			err = s.inputs.keepSpooled(im, j.id, sub.spool)
		} else {
			err = s.inputs.keep(im, j.id, data[i])
		}
		if err != nil {
			for _, kept := range j.images[:i] {
				s.inputs.release(kept)
			}
			s.log.Error("job image not kept", "err", err)
			return nil, &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream,
				msg: "comfygate cannot store the image now", retryAfter: 5}
		}
	}
	j.prompt = prompt
	j.prog = newProgress(wf.nodes)
	if hook != "" {
		j.webhook = &webhookState{url: hook, progress: sub.webhookProgress}
	}

	s.jobsMu.Lock()
	aerr = s.line.check(wf, j.imageBytes(), parallel, len(healthy))
	if s.closed {
		aerr = &apiError{status: fasthttp.StatusServiceUnavailable, typ: errShuttingDown, msg: "comfygate is shutting down", retryAfter: 1}
	}
	if aerr != nil {
		s.jobsMu.Unlock()
		for _, im := range j.images {
			s.inputs.release(im)
		}
		return nil, aerr
	}
	s.seq++
	j.seq = s.seq
	j.created = s.now()
	j.state = stWaiting
	if s.sh != nil {
		return s.acceptShared(j)
	}
	s.jobs[j.id] = j
	s.line.push(j)
	s.m.JobSubmitted(wf.name)
	s.gaugesLocked()
	s.run.kick()
	s.del.emitLocked(j, evQueued, "")
	// A key's first waiting job goes ahead of other keys' later ones:
	// their places change.
	s.positionsLocked()
	if j.webhook != nil && j.webhook.progress {
		s.goLocked("webhook", func() { s.del.streamHook(j) })
	}
	s.jobsMu.Unlock()
	s.st.persist(j)
	s.log.Debug("job accepted", "job_id", j.id, "workflow", wf.name, "bytes", size)
	return j, nil
}

// acceptShared puts j, accepted with its images kept, in the shared wait
// line (the engine's lock held, and released). Here it is a mirror until a
// replica, maybe this one, claims it.
func (s *engine) acceptShared(j *job) (*job, *apiError) {
	j.remote, j.adding = true, true
	s.jobs[j.id] = j
	s.jobsMu.Unlock()
	aerr := s.sh.add(j)
	s.jobsMu.Lock()
	j.adding = false
	if aerr != nil {
		delete(s.jobs, j.id)
		for _, im := range j.images {
			s.inputs.release(im)
		}
		j.images = nil
		s.jobsMu.Unlock()
		return nil, aerr
	}
	s.m.JobSubmitted(j.wf.name)
	s.jobsMu.Unlock()
	s.sh.kick()
	s.log.Debug("job accepted into the shared wait line", "job_id", j.id, "workflow", j.wf.name)
	return j, nil
}

// addCompletedLocked adds j, completed at once from the result cache, to
// the jobs; false once the service is closed.
func (s *engine) addCompletedLocked(j *job) bool {
	if s.closed {
		return false
	}
	now := s.now()
	s.seq++
	j.seq = s.seq
	j.created, j.dispatched = now, now
	s.jobs[j.id] = j
	s.m.JobSubmitted(j.wf.name)
	if j.webhook != nil && j.webhook.progress {
		s.goLocked("webhook", func() { s.del.streamHook(j) })
	}
	s.finishLocked(j, stCompleted, "")
	return true
}

// adoptLocked adds j, restored from the state directory, to the jobs:
// in the wait line when it waits, holding a slot when it is at an
// instance.
func (s *engine) adoptLocked(j *job) {
	s.seq = max(s.seq, j.seq)
	s.jobs[j.id] = j
	switch {
	case j.state == stWaiting:
		s.line.push(j)
	case j.state == stQueued && j.restored:
		j.holdsSlot = true
		s.inFlight++
		s.line.activate(j)
	}
}

// backInLineLocked puts j, taken from the line, back at its head.
func (s *engine) backInLineLocked(j *job) {
	s.line.pushFront(j)
	s.positionsLocked()
	s.gaugesLocked()
	s.run.kick()
}
