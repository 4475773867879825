package prompts

// Leases (state.url set): who acts on which prompt when several replicas
// share one fleet.
//
// Each replica holds a liveness lease (state.Leases, named
// "replica:<incarnation>") for as long as it renews it, every third of
// state.lease_ttl. The prompts it submits or adopts are its own while it
// holds it: every record it writes for them carries the lease's fencing
// token, and the store refuses a record whose token is not the lease's
// current one, or that another replica's lease guards now. When a renewal
// does not succeed within the TTL (the replica paused, or lost Redis),
// the replica abandons at once every live prompt that has a record: they
// take no more steps here and leave its table, since another replica may
// adopt them from then on. One that has none (its every record failed)
// nobody else can adopt: it stays, and is recorded once the replica goes
// on under a new incarnation, when Redis answers again. At the loss its
// instances' sockets reconnect under new client_ids (renewSocketIDs): the
// prompts sent under the old ones are the adopters', who listen under
// those ids (borrow.go).
//
// Each replica also takes, while alive, the leases of a share of the
// fleet's instances (the instances over the replicas alive, rounded up),
// each with a fencing token. The holder of an instance's lease adopts the
// prompts recorded at that instance whose guarding liveness lease is gone
// (adopt.go): a claim in the store, checked against its instance lease's
// token, makes one replica alone adopt each prompt.

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// incarnation is one liveness lease of this replica: the replica id it
// holds it under, the lease's name and its fencing token.
type incarnation struct {
	id    string
	lease string
	token int64
}

// instLease is an instance lease this replica holds.
type instLease struct {
	token int64
	until time.Time // it may have expired in the store after this
}

// leaseKeeper holds the replica's leases and adopts the prompts of the
// replicas that stopped. Its loop is one goroutine; held is its own.
type leaseKeeper struct {
	t       *Table
	l       state.Leases
	idx     state.PromptIndex
	ttl     time.Duration
	sinkFor func(owner string) Sink // an adopted prompt's sink, by its API key's name

	startOnce sync.Once
	self      atomic.Pointer[incarnation]
	// until is when self's lease runs out unless renewed: the sending of
	// its last successful renewal plus the TTL, as a monotonic duration
	// since base.
	until  atomic.Int64
	base   time.Time
	lossMu sync.Mutex  // guards loss
	loss   *time.Timer // abandons the prompts when the liveness lease runs out unrenewed
	held   map[string]*instLease
	// leased is the names in held, as the loop last left them, for
	// anyone to read (holdsLease).
	leased atomic.Pointer[map[string]bool]
}

// KeepLeases makes the table, which records its prompts in a shared index
// (ShareIndex), hold a liveness lease and a share of the instances' leases
// in l, each lasting ttl and renewed every third of it, and adopt the
// prompts of replicas whose liveness lease ran out at the instances whose
// lease it holds; sinkFor gives an adopted prompt's sink from the name of
// the API key that submitted it. Call it after ShareIndex; the leases are
// taken from Start on (at once when the table runs already).
func (t *Table) KeepLeases(l state.Leases, ttl time.Duration, sinkFor func(owner string) Sink) {
	sh := t.shared.Load()
	if sh == nil || l == nil || t.leases.Load() != nil {
		return
	}
	if ttl <= 0 {
		ttl = config.Default().State.LeaseTTL
	}
	k := &leaseKeeper{t: t, l: l, idx: sh.idx, ttl: ttl, sinkFor: sinkFor, held: map[string]*instLease{}, base: time.Now()}
	sh.fenced.Store(true)
	t.leases.Store(k)
	if t.run.context() != nil {
		k.start()
	}
}

// Replica is the replica's current incarnation id ("" while it holds no
// liveness lease, or without KeepLeases).
func (t *Table) Replica() string {
	if k := t.leases.Load(); k != nil {
		if inc := k.self.Load(); inc != nil {
			return inc.id
		}
	}
	return ""
}

// start runs the keeper's loop once, the liveness lease taken first so
// that the prompts submitted from now on are recorded under it.
func (k *leaseKeeper) start() {
	k.startOnce.Do(func() {
		ctx, cancel := context.WithTimeout(k.t.run.runCtx(), k.ttl/3)
		k.live(ctx)
		cancel()
		k.t.run.goBackground(k.loop)
	})
}

// loop takes and renews the leases every third of the TTL until the
// table closes, then gives them back.
func (k *leaseKeeper) loop(ctx context.Context) {
	tick := time.NewTicker(k.ttl / 3)
	defer tick.Stop()
	for {
		k.round(ctx)
		select {
		case <-ctx.Done():
			k.release()
			return
		case <-tick.C:
		}
	}
}

// round renews (or takes) the liveness lease, then the instance leases,
// then adopts at the instances held.
func (k *leaseKeeper) round(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, k.ttl/3)
	defer cancel()
	inc := k.live(cctx)
	if inc == nil {
		k.dropAll()
		return
	}
	alive, err := k.l.Live(cctx, inc.id, k.ttl)
	if err != nil {
		alive = 1
	}
	k.instances(cctx, inc, alive)
	k.publishHeld()
	for name, h := range k.held {
		if ctx.Err() != nil {
			return
		}
		k.adoptAt(ctx, inc, name, h)
	}
}

// live renews the liveness lease, or takes a new one (a new incarnation)
// when there is none; nil when the replica holds none now.
func (k *leaseKeeper) live(ctx context.Context) *incarnation {
	inc := k.self.Load()
	sent := time.Now()
	if inc == nil {
		id := newUUID()
		fresh := &incarnation{id: id, lease: "replica:" + id}
		token, ok, err := k.l.Acquire(ctx, fresh.lease, id, k.ttl)
		if err != nil || !ok {
			k.t.log.Warn("prompts: no liveness lease", "err", err)
			return nil
		}
		fresh.token = token
		k.until.Store(int64(sent.Add(k.ttl).Sub(k.base)))
		k.self.Store(fresh)
		if sh := k.t.shared.Load(); sh != nil {
			sh.guard.Store(fresh)
		}
		k.armLoss(fresh, sent)
		k.t.log.Info("prompts: liveness lease taken", "replica", id)
		k.recordKept()
		return fresh
	}
	ok, err := k.l.Renew(ctx, inc.lease, inc.id, inc.token, k.ttl)
	switch {
	case err != nil:
		// The lease may still last: the loss timer decides.
		k.t.log.Warn("prompts: liveness lease not renewed", "err", err)
		return k.self.Load()
	case !ok:
		k.lose(inc, "its renewal was refused")
		return nil
	}
	k.armLoss(inc, sent)
	return k.self.Load()
}

// LeaseMark names the liveness lease a replica held at one moment
// (Table.Lease); the zero LeaseMark names none.
type LeaseMark struct{ inc *incarnation }

// Lease is the liveness lease the replica holds now: a request marked with
// it when it arrives is sent on only while the replica still holds it
// (SubmitRequest.Lease). Zero without leases or while it holds none.
func (t *Table) Lease() LeaseMark {
	if k := t.leases.Load(); k != nil && k.holding() {
		return LeaseMark{k.self.Load()}
	}
	return LeaseMark{}
}

// mayStillSend reports whether pr may be sent now: its first send only
// under the liveness lease its request arrived under, and any send of a
// prompt with a record only while a lease lasts (another replica may
// adopt it after).
func (k *leaseKeeper) mayStillSend(pr *Prompt, resubmit bool) bool {
	if !resubmit && pr.lease != nil && k.self.Load() != pr.lease {
		return false
	}
	return !(pr.recorded.Load() || pr.lease != nil && !resubmit) || k.holding()
}

// holding reports whether the replica holds its liveness lease now, by
// the clock rather than by the loss timer: a process that was paused
// past its lease's end sees it at once on waking, before the timer runs.
func (k *leaseKeeper) holding() bool {
	return k.self.Load() != nil && int64(time.Since(k.base)) < k.until.Load()
}

// armLoss makes the prompts abandoned when inc's lease, renewed by a
// request sent at sent, runs out without another renewal.
func (k *leaseKeeper) armLoss(inc *incarnation, sent time.Time) {
	k.until.Store(int64(sent.Add(k.ttl).Sub(k.base)))
	d := time.Until(sent.Add(k.ttl))
	k.lossMu.Lock()
	defer k.lossMu.Unlock()
	if k.loss != nil {
		k.loss.Stop()
	}
	k.loss = time.AfterFunc(d, func() { k.lose(inc, "it was not renewed in time") })
}

// lose ends incarnation inc (once): the replica stops acting on its
// prompts at once, and the instance leases go with it (dropAll, on the
// loop).
func (k *leaseKeeper) lose(inc *incarnation, why string) {
	if !k.self.CompareAndSwap(inc, nil) {
		return
	}
	if sh := k.t.shared.Load(); sh != nil {
		sh.guard.CompareAndSwap(inc, nil)
	}
	k.t.log.Warn("prompts: liveness lease lost: this replica's prompts are left to the others", "replica", inc.id, "why", why)
	k.abandonAll()
	k.renewSocketIDs()
}

// renewSocketIDs gives each instance's socket a new client_id once the
// liveness lease is lost, and reconnects it under it: the prompts sent
// under the old ids are left to the replicas that adopt them, which
// borrow those ids to get their events (borrow.go), and the prompts this
// replica sends from now on must not carry them. Each id is renewed on
// its instance's owner, where every send is pinned (beginSend): a send
// under the old id was pinned before, and is seen below. The prompts it
// kept (abandonAll: none of their records was written) that are at an
// instance under an old id are followed there as adopted ones are.
func (k *leaseKeeper) renewSocketIDs() {
	t := k.t
	closed := map[*upstream.Instance]<-chan struct{}{}
	for _, inst := range t.p.Instances() {
		s := t.owners.get(inst)
		if s == nil || !s.box.do(func() { inst.RenewSocketClientID() }) {
			inst.RenewSocketClientID()
		}
		if s != nil {
			closed[inst] = s.redial()
		}
	}
	t.idx.eachLive(func(pr *Prompt) bool {
		v := pr.snap()
		if inst := v.instance; inst != nil && !pr.recorded.Load() && !pr.abandoned.Load() && !v.life.Phase.Done() {
			attempts, sock, old := v.life.Attempts, pr.sentSocket(), closed[inst]
			t.run.goBackground(func(ctx context.Context) {
				if old != nil {
					// The socket under the old id closes first: its close
					// would unregister the borrowed one.
					select {
					case <-old:
					case <-ctx.Done():
						return
					}
				}
				k.follow(ctx, pr, inst, attempts, sock, false)
			})
		}
		return true
	})
}

// holdsLease reports whether this replica held the lease of the instance
// named name after its last round.
func (k *leaseKeeper) holdsLease(name string) bool {
	m := k.leased.Load()
	return m != nil && (*m)[name]
}

// publishHeld makes the names in held what holdsLease reports. On the
// loop.
func (k *leaseKeeper) publishHeld() {
	m := make(map[string]bool, len(k.held))
	for name := range k.held {
		m[name] = true
	}
	k.leased.Store(&m)
}

// instances renews the instance leases held and takes free ones up to
// this replica's share.
func (k *leaseKeeper) instances(ctx context.Context, inc *incarnation, alive int) {
	for name, h := range k.held {
		sent := time.Now()
		ok, err := k.l.Renew(ctx, name, inc.id, h.token, k.ttl)
		switch {
		case err == nil && ok:
			h.until = sent.Add(k.ttl)
		case err == nil || !time.Now().Before(h.until):
			delete(k.held, name)
			k.t.log.Warn("prompts: instance lease lost", "instance", name, "err", err)
		}
	}
	insts := k.t.p.Instances()
	share := (len(insts) + max(alive, 1) - 1) / max(alive, 1)
	// From a random start, so that replicas starting together take
	// different instances first.
	off := 0
	if len(insts) > 0 {
		off = rand.IntN(len(insts))
	}
	for i := range insts {
		if len(k.held) >= share {
			break
		}
		name := insts[(off+i)%len(insts)].Name
		if k.held[name] != nil {
			continue
		}
		sent := time.Now()
		token, ok, err := k.l.Acquire(ctx, name, inc.id, k.ttl)
		if err != nil || !ok {
			continue
		}
		k.held[name] = &instLease{token: token, until: sent.Add(k.ttl)}
		k.t.log.Info("prompts: instance lease taken", "instance", name, "token", token)
	}
}

// dropAll forgets the instance leases (the liveness lease is gone: they
// were taken under it).
func (k *leaseKeeper) dropAll() {
	clear(k.held)
	k.publishHeld()
}

// release gives the leases back as the table closes, so that the others
// take the instances and adopt the prompts left without waiting for the
// TTL.
func (k *leaseKeeper) release() {
	k.lossMu.Lock()
	if k.loss != nil {
		k.loss.Stop()
	}
	k.lossMu.Unlock()
	inc := k.self.Load()
	if inc == nil {
		return
	}
	if sh := k.t.shared.Load(); sh != nil {
		// Its last records first: they need the liveness lease.
		sh.lastWritten(sharedWriteTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), k.ttl/3)
	defer cancel()
	for name, h := range k.held {
		_ = k.l.Release(ctx, name, inc.id, h.token)
	}
	k.dropAll()
	_ = k.l.Release(ctx, inc.lease, inc.id, inc.token)
}

// abandonAll lets go of every live prompt that has a record in the
// shared index: it takes no more steps here and leaves the index (its
// instance no longer counts it). Each is let go on the owner of its
// instance, between its steps. A prompt none of whose records was
// written (sent while Redis did not answer) no other replica can adopt:
// it stays this replica's, recorded once it holds a lease again
// (recordKept).
func (k *leaseKeeper) abandonAll() {
	t := k.t
	var live []*Prompt
	t.idx.eachLive(func(pr *Prompt) bool {
		if pr.recorded.Load() {
			live = append(live, pr)
		}
		return true
	})
	for _, pr := range live {
		k.abandon(pr)
	}
}

// abandon lets go of pr on the owner of the instance it is at.
func (k *leaseKeeper) abandon(pr *Prompt) {
	t := k.t
	inst := pr.Instance()
	if inst == nil {
		pr.abandoned.Store(true)
		t.idx.forget(pr)
		return
	}
	t.owners.socketFor(inst).box.post(func() {
		if pr.Instance() != inst {
			k.abandon(pr) // it moved meanwhile: on to its owner
			return
		}
		if pr.abandoned.Swap(true) {
			return
		}
		if pr.Life().Counted() {
			inst.Workload().CountInflight(-1)
			inst.Workload().InflightChanged()
		}
		t.idx.forget(pr)
		t.events.notifyQueue()
	})
}

// recordKept records, under the replica's new liveness lease, every live
// prompt it kept (abandonAll): whole, with its body, each on the owner of
// its instance, so that the record follows the prompt's steps in order.
func (k *leaseKeeper) recordKept() {
	t := k.t
	sh := t.shared.Load()
	if sh == nil {
		return
	}
	t.idx.eachLive(func(pr *Prompt) bool {
		if inst := pr.Instance(); inst != nil && !pr.abandoned.Load() {
			t.owners.socketFor(inst).box.post(func() {
				if v := pr.snap(); v.instance != nil && !pr.abandoned.Load() {
					sh.shareStep(pr, lifecycle.State{}, nil, v.life, v.instance)
				}
			})
		}
		return true
	})
}
