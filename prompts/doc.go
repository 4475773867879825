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
// Every instance has one owner, a goroutine (owner.go) that runs, one
// message at a time, whatever changes the prompts at that instance: its
// socket's frames (the reader waits until each is applied), POST answers,
// instance events, timer expiries (through the pool's clock) and the
// results of the workers it starts for calls to the instance (probes,
// history reads, deletes, failovers). Only owners call lifecycle.Step
// (Table.step); a worker or a client's call sends its result to the owner
// of the prompt's instance (stepVia), and a send to another instance is a
// step on that instance's owner, so a prompt that moves is handed from one
// owner to the other. Each prompt's state is published as an immutable
// view (Prompt.State, Instance, UpstreamID read it without a lock). The
// background passes (the suspect grace, failover, reconcile, the
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
