package jobs

import (
	"encoding/json"
	"time"

	"github.com/comfygate/comfygate/internal/ids"

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
// rest is guarded by Service.jobsMu.
type job struct {
	s       *Service
	id      string // also the prompt_id it is submitted under
	wf      *workflow
	seq     uint64
	created time.Time
	inputs  map[string]json.RawMessage
	ext     string // extension of the uploaded image's file name

	// Guarded by Service.jobsMu.
	state       state
	image       []byte // the caller's image; dropped once the job finished
	imageName   string // the name the image has on the instances
	prompt      json.RawMessage
	holdsSlot   bool // counts against MaxConcurrent
	submitted   bool // handed to pool.Submit
	attempts    int  // failed submission attempts (not counting "no instance")
	instance    string
	dispatched  time.Time // left the wait line (last time)
	started     time.Time // execution_start (last attempt)
	finished    time.Time
	lastEvent   time.Time
	sawEvent    bool // an event of its prompt arrived (this attempt or an earlier one)
	prog        progress
	outputs     []upstream.FileRef
	outInst     *upstream.Instance
	errMsg      string
	errDetail   *errorDetails
	result      []byte
	resultType  string
	slotTimer   *time.Timer
	cancelAsked bool
}

// errorDetails is what ComfyUI said about a failure, beyond its message.
type errorDetails struct {
	NodeID        string `json:"node_id,omitempty"`
	NodeType      string `json:"node_type,omitempty"`
	ExceptionType string `json:"exception_type,omitempty"`
}

// PromptEvent receives the job's prompt events from the pool (upstream.Sink).
// It runs on the instance's reader goroutine: it parses and updates state
// under the Service's mutex and starts any slow work on its own goroutine.
func (j *job) PromptEvent(p *upstream.Prompt, ev upstream.Event) {
	if ev.Binary {
		return
	}
	switch ev.Type {
	case "execution_start", "execution_cached", "executing", "progress", "progress_state",
		"executed", "execution_success", "execution_error", "execution_interrupted":
	default:
		return
	}
	var msg struct {
		Data eventData `json:"data"`
	}
	if err := json.Unmarshal(ev.Data, &msg); err != nil {
		j.s.log.Debug("job event not understood", "job_id", j.id, "type", ev.Type, "err", err)
		return
	}
	j.s.onEvent(j, p, ev, &msg.Data)
}

// eventData holds the fields of ComfyUI's execution events that jobs use.
type eventData struct {
	PromptID    string          `json:"prompt_id"`
	Node        *string         `json:"node"`
	DisplayNode *string         `json:"display_node"`
	Value       float64         `json:"value"`
	Max         float64         `json:"max"`
	Nodes       json.RawMessage `json:"nodes"` // execution_cached: [ids]; progress_state: {id: state}
	Output      json.RawMessage `json:"output"`
	// execution_error
	NodeID           string `json:"node_id"`
	NodeType         string `json:"node_type"`
	ExceptionMessage string `json:"exception_message"`
	ExceptionType    string `json:"exception_type"`
}

// node returns the graph node an event is about: display_node when the
// node was expanded at run time, else node.
func (d *eventData) node() string {
	if d.DisplayNode != nil && *d.DisplayNode != "" {
		return *d.DisplayNode
	}
	if d.Node != nil {
		return *d.Node
	}
	return ""
}

// nodeState is one entry of progress_state's nodes.
type nodeState struct {
	Value         float64 `json:"value"`
	Max           float64 `json:"max"`
	State         string  `json:"state"`
	DisplayNodeID string  `json:"display_node_id"`
}

// outputImages reads the image refs of an executed event's output (or a
// history entry's outputs[node]).
func outputImages(out json.RawMessage) []upstream.FileRef {
	var o struct {
		Images []struct {
			Filename  string `json:"filename"`
			Subfolder string `json:"subfolder"`
			Type      string `json:"type"`
		} `json:"images"`
	}
	if len(out) == 0 || json.Unmarshal(out, &o) != nil {
		return nil
	}
	refs := make([]upstream.FileRef, 0, len(o.Images))
	for _, im := range o.Images {
		if im.Filename != "" {
			refs = append(refs, upstream.FileRef{Filename: im.Filename, Subfolder: im.Subfolder, Type: im.Type})
		}
	}
	return refs
}

// newJobID mints a canonical lowercase UUIDv4, the form ComfyUI 2026
// requires of a client-chosen prompt_id.
func newJobID() string { return ids.UUID() }
