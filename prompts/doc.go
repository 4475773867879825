// Package prompts owns the life of every prompt comfygate forwards to the
// instances of an upstream.Pool: submission (selecting through the pool,
// pinning before the POST leaves), the prompt table whose transitions are
// the pure state machine of internal/lifecycle, the one event WebSocket
// per instance that routes events to each prompt's sink in order (through
// per-instance outboxes), failover of the prompts of a dead or hung
// instance, the tombstones that keep a moved prompt from running twice,
// and the pins of the files instances hold (outputs, uploads, copies
// between instances).
//
// Every instance has one owner, one goroutine at a time (owner.go), that
// runs, one message at a time, whatever changes the prompts at that
// instance: its socket's frames (queued by its reader in the instance's
// order), POST answers, instance events, timer expiries (through the
// pool's clock) and the results of the workers it starts for calls to
// the instance (probes, history reads, deletes, sends). Only owners call
// lifecycle.Step (steps.step), under the step rule: a prompt's steps run
// on the owner of the instance it is at (stepVia and stepLater from a
// submit), and a step that moves it (a send to another instance, a
// reclaim) runs on the owner it leaves and hands it to the next (a first
// send runs on the owner of its target). So a prompt's steps never run at
// once, and no lock guards them. Each prompt's state is an immutable view
// behind an atomic pointer (Prompt.State, Instance, UpstreamID read it
// without a lock); lifecycle.State holds all a next owner needs to go on
// with it.
//
// Who owns what:
//   - a prompt's view and its keys in the index: its steps (the step rule);
//   - the index (index.go): concurrent maps, by client-facing id (claimed
//     with a compare-and-swap, so one id has one live prompt), by
//     (instance, upstream id), and the live prompts with their count; the
//     done queue (the last maxDonePrompts finished prompts; older ones are
//     evicted from the maps) has a lock of its own for a push;
//   - the instances' owners and sockets (owners, run.go): a copy-on-write
//     map behind an atomic pointer, replaced with a compare-and-swap when
//     an instance is first used or its drained socket closes;
//   - an instance's routing state (its running prompt, early frames,
//     awaited ids), tombstones and background passes (passes): its owner;
//   - a failover (move.go), a reclaim of a moved prompt that ran where it
//     was (tombstones.go) and a client's cancel (follow.go): the owner of
//     the prompt they act on, each call to an instance a worker reporting
//     back to it;
//   - a check of an instance's queue for deleted prompts: that instance's
//     owner, each call a worker reporting back to it;
//   - the table's run (run.go): its context and the goroutines Close
//     waits for, counted without a lock;
//   - event delivery (outbox.go): one outbox per instance, in order;
//   - with a shared index (state.url): the records of its prompts
//     (shared.go), written by one writer and fenced by the replica's
//     liveness lease, and the replica's leases (lease.go): its liveness,
//     whose loss abandons its prompts at once, and a share of the
//     instances' leases, whose holder adopts the prompts of a replica
//     whose liveness ran out (adopt.go: a claim in the store, then a
//     TakeOver step on the owner of the prompt's instance), and the
//     sockets an adopter borrows under the socket id an adopted prompt
//     was sent with (borrow.go): its instance's owner, a frame at a time
//     as from the instance's own socket.
//
// The background passes (the suspect grace, failover, reconcile, the
// deleted-prompt check, moves to an idle instance, clean-up of moved
// prompts, an unanswered send's follow-up) are states of the owner: one
// of a kind at a time, a request during one running another after it.
//
// It depends on upstream, never the reverse: Table subscribes to the
// pool's instance events (upstream.Pool.Subscribe) and reacts: it opens
// an added instance's socket, closes a removed one's once its prompts are
// done, runs warm-up workflows the pool asks for, and when an instance is
// down decides when its prompts move (failover.suspect_grace, probing it
// meanwhile). It is the pool's comeback gate (CleanUp: what moved off an
// instance is removed before it gets work again). The pool does not start
// or close it: main does, Start after the pool's Start (it waits for the
// start-up sockets), Close after the pool's Close.
package prompts
