package jobs

import (
	"crypto/sha256"
	"encoding/json"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/ids"

	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// state is where a job is in its life.
type state int

// The job states; the order matters (terminal states last).
const (
	stWaiting    state = iota // in comfygate's wait line
	stSubmitting              // taken from the line: image upload and POST /prompt under way
	stQueued                  // accepted by an instance, not started there
	stRunning                 // execution_start seen
	stFetching                // execution succeeded; the result is being downloaded
	stCompleted
	stFailed
	stCancelled
)

// Public job statuses.
const (
	statusPending    = "pending"
	statusProcessing = "processing"
	statusCompleted  = "completed"
	statusFailed     = "failed"
	statusCancelled  = "cancelled"
)

// Statuses of a submission's other 200 answers, which are no job's state.
const (
	statusValid   = "valid"   // a dry run that passed
	statusExpired = "expired" // an Idempotency-Key whose job expired
)

func (s state) terminal() bool { return s >= stCompleted }

// public is the status clients see.
func (s state) public() string {
	switch s {
	case stWaiting, stSubmitting, stQueued:
		return statusPending
	case stRunning, stFetching:
		return statusProcessing
	case stCompleted:
		return statusCompleted
	case stFailed:
		return statusFailed
	}
	return statusCancelled
}

// job is one async job. Its immutable fields are set at accept time; the
// rest is guarded by engine.jobsMu.
type job struct {
	s       *engine
	id      string // also the prompt_id it is submitted under
	wf      *workflow
	seq     uint64
	created time.Time
	inputs  map[string]json.RawMessage
	params  map[string]json.RawMessage // checked parameter values, by name
	cached  bool                       // completed from the result cache, without running
	meta    jobMeta

	// Guarded by engine.jobsMu.
	state     state
	images    []*jobImage // the caller's images, kept until the job ends (inputStore)
	prompt    json.RawMessage
	holdsSlot bool // counts against MaxConcurrent
	submitted bool // handed to prompts.Table.Submit
	restored  bool // read from the state directory, its prompt not yet found (reconcile)
	attempts  int  // failed submission attempts (not counting "no instance")
	// refusedBy names the instances that answered the job's POST /prompt
	// with a 5xx, or failed to take its images: it is tried elsewhere.
	refusedBy    map[string]bool
	refuseMsg    string          // the last such refusal, the job's error when no instance is left
	uploadFailed map[string]bool // instances the last upload of its images to failed
	instance     string
	dispatched   time.Time // left the wait line (last time)
	started      time.Time // execution_start (last attempt)
	finished     time.Time
	lastEvent    time.Time
	sawEvent     bool // an event of its prompt arrived (this attempt or an earlier one)
	prog         progress
	outRefs      []outRef // files the prompt's nodes reported (this attempt)
	outInst      *upstream.Instance
	files        []*outputFile // fetched outputs, once completed; files[0] is the result
	errMsg       string
	errDetail    *errorDetails
	slotTimer    *time.Timer
	cancelAsked  bool
	events       []jobEvent    // the job's event log
	changed      chan struct{} // closed (and replaced) on every event
	lastPos      int           // queue_position of its last queued event
	webhook      *webhookState // nil: no webhook
	cacheKey     string        // its result's key in the result cache ("" when not cached)

	// With the shared job line (sharedJobs): remote is a mirror of a job
	// this replica does not run (waiting in the shared line, or held by
	// another replica), brought to its record; it runs nothing here.
	remote         bool
	remotePos      int  // a mirrored waiting job's place in the shared line
	adding         bool // accepted here, being added to the shared line
	shared         int  // events handed to the shared record's writer
	mirrored       int  // events of the shared log applied to the mirror
	mirrorFetching bool // a mirrored completed job's outputs are being fetched here
	sharedCancel   bool // a cancel asked on another replica is under way
}

// jobMeta is who submitted a job and with which Idempotency-Key: kept
// with the job, and in its record, so a restarted comfygate keeps both.
type jobMeta struct {
	owner  string // the submitting API key's name; "" with keys off
	idem   string // the Idempotency-Key it came with ("" when none)
	idemFP [sha256.Size]byte
}

// imageBytes is the size of the images the job holds.
func (j *job) imageBytes() int64 {
	var n int64
	for _, im := range j.images {
		n += im.size
	}
	return n
}

// imageNames maps parameter names to the images' names as the prompt
// loads them.
func imageNames(imgs []*jobImage) map[string]string {
	m := make(map[string]string, len(imgs))
	for _, im := range imgs {
		m[im.param] = im.value()
	}
	return m
}

// errorDetails is what ComfyUI said about a failure, beyond its message.
type errorDetails struct {
	NodeID        string `json:"node_id,omitempty"`
	NodeType      string `json:"node_type,omitempty"`
	ExceptionType string `json:"exception_type,omitempty"`
}

// PromptEvent receives the job's prompt events from the prompt table (prompts.Sink).
// It runs on the instance's reader goroutine: it parses and updates state
// under the engine's mutex and starts any slow work on its own goroutine.
func (j *job) PromptEvent(p *prompts.Prompt, ev prompts.Event) {
	if ev.Binary {
		return
	}
	switch ev.Type {
	case comfyapi.TypeExecutionStart, comfyapi.TypeExecutionCached, comfyapi.TypeExecuting,
		comfyapi.TypeProgress, comfyapi.TypeProgressState, comfyapi.TypeExecuted,
		comfyapi.TypeExecutionSuccess, comfyapi.TypeExecutionError, comfyapi.TypeExecutionInterrupted:
	default:
		return
	}
	msg, err := comfyapi.ParseWSText(ev.Data)
	if err != nil {
		j.s.log.Debug("job event not understood", "job_id", j.id, "type", ev.Type, "err", err)
		return
	}
	j.s.onEvent(j, p, ev, &msg)
}

// newJobID mints a canonical lowercase UUIDv4, the form ComfyUI 2026
// requires of a client-chosen prompt_id.
func newJobID() string { return ids.UUID() }
