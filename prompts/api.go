package prompts

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

// ErrUnknownPrompt: the prompt id is not in the table and no instance
// knows it. The proxy maps it to a status code with the other sentinels.
var ErrUnknownPrompt = errors.New("unknown prompt id")

// Event is one message an instance sent on comfygate's socket.
type Event struct {
	// Instance that sent it.
	Instance *upstream.Instance
	// Type is the JSON "type" of a text frame; "" for binary frames.
	Type string
	// Binary reports a binary frame (previews, text frames of API nodes).
	Binary bool
	// PromptID is the client-facing prompt id the event belongs to, "" if none.
	PromptID string
	// Running, for an event that names no prompt (a Listener broadcast),
	// is the prompt comfygate submitted that the instance was executing
	// when the event came, nil when none. A custom node's message to "the
	// client of the running prompt" looks like a broadcast on comfygate's
	// socket; with API keys, only the running prompt's key may see it.
	Running *Prompt
	// Data is the whole frame as it goes to the client: for text frames the
	// JSON message with any upstream prompt_id rewritten to the client-facing
	// one; for binary frames the bytes as received.
	Data []byte
}

// Sink receives the events of the prompts submitted with it, in the order
// the instance sent them. It is called from the instance's delivery
// goroutine (see outbox), with no lock of the table or the pool held, and
// must not block.
type Sink interface {
	PromptEvent(p *Prompt, ev Event)
}

// Listener receives what belongs to no single prompt, from a delivery
// goroutine with no lock of the table or the pool held. Must not block.
type Listener interface {
	// Broadcast: an event without prompt id (custom nodes' messages, ...)
	// that ComfyUI would send to every socket.
	Broadcast(ev Event)
	// QueueChanged: the fleet-wide queue_remaining (sum over instances of
	// what they report plus prompts comfygate holds) changed.
	QueueChanged(queueRemaining int)
}

// PromptState is where an accepted prompt is in its life.
type PromptState int

// The prompt states.
const (
	PromptQueued  PromptState = iota // accepted by an instance, not started
	PromptRunning                    // execution_start seen
	PromptDone                       // success, error or interrupted: terminal
)

// Prompt is one prompt comfygate forwarded. It stays in the table after it
// finishes (bounded, oldest evicted) so later calls that name it find its instance.
type Prompt struct {
	// ID is the prompt_id the client knows.
	ID string
	// ClientID is the client's own client_id ("" when it sent none).
	ClientID string
	// Sink receives its events.
	Sink Sink
	// Created is when comfygate accepted it.
	Created time.Time

	// view is its state as the last step left it: an immutable value
	// that only steps.step replaces (on the owner of the instance the
	// step concerns, under Table.mu); readers load it without a lock.
	// nil: a Prompt not in the table yet (the zero view).
	view atomic.Pointer[promptView]
	// body is the JSON forwarded upstream last (with comfygate's
	// client_id), for resubmission: set by each send before its step.
	body atomic.Pointer[[]byte]
	// socket is the client_id its last send carried: its instance's
	// SocketClientID then (set with body), or, adopted, the one its
	// record names. ComfyUI sends its events to that id.
	socket atomic.Pointer[string]
	header map[string]string // request headers to forward again on resubmission
	owner  string            // SubmitRequest.Owner: its records carry it
	// submission is SubmitRequest.Submission: a repeat of the same POST
	// is answered as this prompt (resubmit.go).
	submission string
	// lease is SubmitRequest.Lease: its first send is made only under it.
	lease *incarnation

	// Where it prefers to run, and the graph before per-instance values
	// (SubmitRequest.Prefer, Files); graph is nil without files.
	prefer *upstream.Instance
	// eligible is SubmitRequest.Eligible: where it may run, failover included.
	eligible func(*upstream.Instance) bool
	// prepare is SubmitRequest.Prepare: run before every send.
	prepare func(context.Context, *upstream.Instance) error
	files   map[string]InstanceFile
	graph   json.RawMessage

	// reserved is the instance pick counted pr at, until its send's count
	// takes it over (step) or the try is given up (unreserve): prompts
	// picked at once see each other before any of them is sent.
	reserved atomic.Pointer[upstream.Instance]

	// How its fleet queue number is made (see Number).
	front     bool // the client asked for the front of the queue
	ownNumber bool // the client sent "number": the instance shows its value
	// drawn is the number its submitter drew from the replicas' counter
	// (sharedNumbers.draw) when hasDrawn: set before its first send's
	// step, which gives it, on the submitter's goroutine.
	drawn    int64
	hasDrawn bool

	// abandoned: this replica lost its liveness lease, so another may
	// have adopted the prompt; it takes no more steps here (lease.go).
	abandoned atomic.Bool
	// recorded: a record of it was written to the shared index, so
	// another replica can adopt it (shared.go).
	recorded atomic.Bool
}

// promptView is one prompt's state at one moment. Never modified once
// published (Prompt.view).
type promptView struct {
	life     lifecycle.State    // its phase, where it is, its fleet number
	instance *upstream.Instance // the instance life.Instance names (nil before the first send)
}

// snap returns p's current view.
func (p *Prompt) snap() *promptView {
	if v := p.view.Load(); v != nil {
		return v
	}
	return &promptView{}
}

// Instance returns the instance the prompt is pinned to now.
func (p *Prompt) Instance() *upstream.Instance { return p.snap().instance }

// UpstreamID returns the prompt's id at its instance.
func (p *Prompt) UpstreamID() string { return p.snap().life.UpstreamID }

// State returns the prompt's state.
func (p *Prompt) State() PromptState { return stateOf(p.snap().life) }

// Life returns a copy of the prompt's lifecycle state.
func (p *Prompt) Life() lifecycle.State { return p.snap().life }

// lastBody returns the body sent last (nil before the first send).
func (p *Prompt) lastBody() []byte {
	if b := p.body.Load(); b != nil {
		return *b
	}
	return nil
}

// sentSocket returns the client_id its last send carried ("" before the
// first send).
func (p *Prompt) sentSocket() string {
	if s := p.socket.Load(); s != nil {
		return *s
	}
	return ""
}

// stateOf is the coarse state of a lifecycle state.
func stateOf(s lifecycle.State) PromptState {
	ph := s.Phase
	if ph == lifecycle.Moving {
		ph = s.Resume
	}
	switch {
	case ph.Done():
		return PromptDone
	case ph == lifecycle.Running:
		return PromptRunning
	}
	return PromptQueued
}

// Number returns the prompt's queue number in the fleet, the number a
// client of the fleet sees in the POST /prompt answer and as item[0] of
// its /queue and /history tuples, and false when comfygate did not number
// it (then the instance's own number stands).
//
// Every instance numbers its prompts from 0 on its own, so through
// comfygate two prompts would share a number; instead the table numbers
// every prompt it sends from one counter, starting at 0 like ComfyUI and
// advanced once per prompt at its first send, so the numbers follow the
// order the fleet sent them in. With replicas (state.url) that counter is
// the replicas' shared one (Table.ShareNumbers), so the numbers follow the
// order of every replica's sends. A resubmitted prompt keeps its number.
// A client's "front" gives, as in ComfyUI, the counter's value negated.
// false: not accepted yet, adopted from an instance (LocatePrompt), or the
// client sent its own "number", which the instance shows as ComfyUI would
// (and which takes no fleet number, as it advances no ComfyUI counter).
func (p *Prompt) Number() (float64, bool) {
	life := p.snap().life
	if !life.Numbered || p.ownNumber {
		return 0, false
	}
	return float64(life.Number), true
}

// Attempts returns how many times it was sent to an instance (1 + resubmissions).
func (p *Prompt) Attempts() int { return p.snap().life.Attempts }

// FileRef names a file the way ComfyUI's /view and /upload do (Type ""
// means output for /view).
type FileRef = comfyapi.FileRef

// SubmitRequest is one POST /prompt as comfygate forwards it.
type SubmitRequest struct {
	// Body is the client's JSON body, parsed one level. Submit rewrites
	// client_id, extra_data.client_id and prompt_id for the instance.
	Body map[string]json.RawMessage
	// PromptID is the client-facing id (already chosen by the caller: the
	// client's valid unused one, or freshly minted).
	PromptID string
	// ClientID is the client's own client_id, "" if none.
	ClientID string
	// Owner is the name of the API key that submits it ("": keys off);
	// with a shared index, its records carry it.
	Owner string
	// Lease is Table.Lease when the request arrived: its first send is
	// made only while the replica still holds that liveness lease, since
	// a replica that lost it was paused or cut off for longer than its
	// TTL, and the client may have sent the request to another replica
	// meanwhile (then its POST gets ErrLeaseLost). Zero: no such check.
	Lease LeaseMark
	// Submission is the Fingerprint of the client's body when the client
	// chose the prompt_id: a POST that repeats it is the same submission
	// (Table.Resubmission). "": no repeat is recognised.
	Submission string
	// Sink receives the prompt's events.
	Sink Sink
	// Header holds request headers to forward (e.g. comfy-user).
	Header map[string]string
	// Prefer is the instance to send the prompt to first, when it is
	// Available and its socket is up; otherwise, or when it refuses the
	// connection, Submit selects as usual. A failover of the prompt tries
	// it first too. The proxy sets it to the instance that holds the
	// files the prompt loads (Files). nil: selection alone.
	Prefer *upstream.Instance
	// Files maps string input values of the prompt graph (Body["prompt"])
	// to the file of one instance that they name: the proxy's references
	// to outputs of earlier prompts, "@<instance>~<id>/x.png [output]". Sent to
	// that instance, such a value becomes the file's own name there
	// (InstanceFile.Value); sent to another, the file is copied to it
	// first, into a folder of copies (see Table.EnsureInputs), and the
	// value names the copy. Values not in Files go as they are.
	Files map[string]InstanceFile
	// Eligible, when not nil, limits the instances the prompt may run on,
	// on submission and on every failover: those whose catalogue has its
	// nodes and models and that carry the labels it asks for. Prefer is
	// used only when Eligible accepts it.
	Eligible func(*upstream.Instance) bool
	// Prepare, when not nil, runs before every send of the prompt to an
	// instance, the first and those of a failover, with the instance it is
	// about to go to: the submitter places there what the prompt loads
	// from a copy of its own (the job API's kept images), so a failover
	// does not need the instance the prompt leaves. An error is logged and
	// the prompt is sent anyway: the instance's own validation then says
	// what is missing, in ComfyUI's words.
	Prepare func(ctx context.Context, inst *upstream.Instance) error
}

// InstanceFile is a file of one instance that a prompt's input names.
type InstanceFile struct {
	// Instance holds the file.
	Instance *upstream.Instance
	// Value names the file as LoadImage on that instance does:
	// "x.png [output]", "sub/x.png [temp]".
	Value string
}

// SubmitResult is the instance's answer, ready to relay to the client.
type SubmitResult struct {
	// Prompt is set when the instance accepted it (status 200).
	Prompt *Prompt
	// Instance that answered.
	Instance *upstream.Instance
	// Status and Body of the instance's answer; in Body, prompt_id is the
	// client-facing id.
	Status int
	Body   []byte
}
