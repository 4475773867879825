package jobs

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Event types of a job's event log (GET /api/jobs/{id}/events, webhooks).
const (
	evQueued    = "queued"
	evStarted   = "started"
	evProgress  = "progress"
	evCompleted = "completed"
	evFailed    = "failed"
	evCancelled = "cancelled"
)

// jobEvent is one entry of a job's event log. id is its 1-based place in
// the log, so a stream resumed with Last-Event-ID n replays from n+1.
type jobEvent struct {
	id   int
	typ  string
	data []byte // JSON
	at   time.Time
}

func (e jobEvent) terminal() bool {
	return e.typ == evCompleted || e.typ == evFailed || e.typ == evCancelled
}

// eventView is the JSON body of every event.
type eventView struct {
	JobID    string `json:"job_id"`
	Status   string `json:"status"`
	Progress int    `json:"progress"`
	// queued
	QueuePosition *int `json:"queue_position,omitempty"`
	// started, progress
	Instance string `json:"comfyui_instance,omitempty"`
	Node     string `json:"node,omitempty"`
	// completed
	Outputs   []outputView `json:"outputs,omitempty"`
	ResultURL string       `json:"result_url,omitempty"`
	// failed
	Error        string        `json:"error,omitempty"`
	ErrorDetails *errorDetails `json:"error_details,omitempty"`
	Timestamp    time.Time     `json:"timestamp"`
}

// emitLocked appends an event to j's log and wakes everyone waiting on
// the job (long polls, event streams, one-request submissions). A
// terminal event also starts the webhook delivery. the engine's lock must be held.
func (s *delivery) emitLocked(j *job, typ string, node string) {
	now := s.eng.timeNow()
	v := eventView{JobID: j.id, Status: j.state.public(), Progress: j.prog.reported, Instance: j.instance, Node: node, Timestamp: now.UTC()}
	switch typ {
	case evQueued:
		pos := s.line.position(j)
		v.QueuePosition = &pos
		j.lastPos = pos
	case evCompleted:
		v.Outputs = s.outputViewsLocked(j, false)
		v.ResultURL = routeJobs + "/" + j.id + "/result"
	case evFailed:
		v.Error, v.ErrorDetails = j.errMsg, j.errDetail
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	ev := jobEvent{id: len(j.events) + 1, typ: typ, data: b, at: now}
	j.events = append(j.events, ev)
	j.notifyLocked()
	if s.eng.sh != nil {
		s.eng.sh.queueLocked(j)
	}
	if ev.terminal() && j.webhook != nil {
		j.webhook.event = ev
		j.webhook.id = webhookID(j.id, ev)
		j.webhook.started = true
		if !j.webhook.progress { // else streamHook delivers it, after the progress
			s.eng.goLocked("webhook", func() { s.deliver(j, ev) })
		}
	}
}

// notifyLocked wakes the waiters of j.
func (j *job) notifyLocked() {
	if j.changed != nil {
		close(j.changed)
	}
	j.changed = make(chan struct{})
}

// progressLocked emits a progress event when the reported percentage
// moved.
func (s *delivery) progressLocked(j *job, node string) {
	before := j.prog.reported
	if j.prog.percent() != before {
		s.emitLocked(j, evProgress, node)
	}
}

// waitJob blocks until done(j) holds (checked under the engine's lock), d passes,
// ctx ends or the service stops. It reports whether done held. Waiting
// costs no polling: every change of the job closes its changed channel.
func (s *delivery) waitJob(ctx context.Context, j *job, d time.Duration, done func(*job) bool) bool {
	if d <= 0 {
		s.eng.lock()
		ok := done(j)
		s.eng.unlock()
		return ok
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		s.eng.lock()
		if done(j) {
			s.eng.unlock()
			return true
		}
		if j.changed == nil {
			j.changed = make(chan struct{})
		}
		ch := j.changed
		s.eng.unlock()
		select {
		case <-ch:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		case <-s.ctx.Done():
			return false
		}
	}
}

// longPoll waits (?wait=Ns, capped at jobs.max_wait) until the job's
// public status differs from ?status= (default: its status now), or it
// ends. It reports false when it answered already (a bad wait, when
// report is set).
func (s *api) longPoll(ctx *fasthttp.RequestCtx, id, scope string, report bool) bool {
	wait, aerr := requestedWait(ctx, s.cfg.MaxWait)
	if aerr != nil {
		if report {
			writeError(ctx, aerr)
			return false
		}
		return true
	}
	s.eng.mirror(id)
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	if j == nil {
		s.eng.unlock()
		return true
	}
	since := string(ctx.QueryArgs().Peek("status"))
	if since == "" {
		since = j.state.public()
	}
	s.eng.unlock()
	s.del.waitJob(ctx, j, wait, func(j *job) bool { return j.state.public() != since })
	return true
}

// serveEvents streams a job's events as Server-Sent Events: the log from
// after Last-Event-ID (header, or ?last_event_id=) on, then each new
// event as it happens, a comment every heartbeat while idle, and the end
// of the stream after the terminal event. A client that reconnects with
// the id of the last event it saw misses nothing.
func (s *delivery) serveEvents(ctx *fasthttp.RequestCtx, id, scope string) {
	s.eng.mirror(id)
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	s.eng.unlock()
	if j == nil {
		notFound(ctx, id)
		return
	}
	last := string(ctx.Request.Header.Peek("Last-Event-ID"))
	if last == "" {
		last = string(ctx.QueryArgs().Peek("last_event_id"))
	}
	after, _ := strconv.Atoi(strings.TrimSpace(last))
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/event-stream; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no") // nginx in front: do not buffer
	heartbeat := s.heartbeat
	shutdown := ctx.Done() // the server's: closed when it shuts down
	// The writer runs after the handler returned: it uses only j, s and shutdown.
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		s.m.AddEventStreams(1)
		defer s.m.AddEventStreams(-1)
		if _, err := w.WriteString("retry: 1000\n\n"); err != nil || w.Flush() != nil {
			return
		}
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		for {
			s.eng.lock()
			if s.eng.jobLocked(j.id) != j {
				// A mirror whose shared record went (expired, or lost by
				// Redis): the job is gone for this replica.
				s.eng.unlock()
				return
			}
			pending := slices.Clone(j.events[min(max(after, 0), len(j.events)):])
			if j.changed == nil {
				j.changed = make(chan struct{})
			}
			ch := j.changed
			s.eng.unlock()
			for _, ev := range pending {
				fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.id, ev.typ, ev.data)
				after = ev.id
				if ev.terminal() {
					_ = w.Flush()
					return
				}
			}
			if len(pending) > 0 {
				if w.Flush() != nil {
					return // the client went away
				}
			}
			select {
			case <-ch:
			case <-t.C:
				if _, err := w.WriteString(": heartbeat\n\n"); err != nil || w.Flush() != nil {
					return
				}
			case <-s.ctx.Done():
				return
			case <-shutdown:
				return
			}
		}
	})
}
