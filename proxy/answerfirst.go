package proxy

// A prompt's events never overtake its answer.
//
// An instance can send a prompt's first events (and, for a cached prompt,
// all of them) before its answer to POST /prompt, and comfygate's answer
// to the client comes later still. A client that starts listening for a
// prompt's events once it has the prompt id (@stable-canvas/comfyui-client
// registers its listener after the POST returns) would miss them and wait
// forever. So the events of a prompt submitted through POST /prompt are
// held until the answer to that POST has been written to the client's
// connection, then delivered in order.
//
// fasthttp tells when a response has been written only through the
// connection's state: a connection turns idle once the response is
// flushed (or closed, or hijacked). answerWaits.connState releases what was
// waiting for that.

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/prompts"
	"github.com/valyala/fasthttp"
)

// Bounds of what one prompt's held events may take: past them the events
// go out without waiting, rather than grow without bound.
const (
	maxHeldEvents = 1024
	maxHeldBytes  = 8 << 20
)

// heldSink passes a prompt's events to next once released, holding them
// until then.
type heldSink struct {
	next prompts.Sink

	mu       sync.Mutex // guards the fields below; held while delivering, to keep order
	released bool
	held     []heldEvent
	bytes    int
}

type heldEvent struct {
	p  *prompts.Prompt
	ev prompts.Event
}

func newHeldSink(next prompts.Sink) *heldSink { return &heldSink{next: next} }

// PromptEvent holds ev until release, or passes it on after.
func (h *heldSink) PromptEvent(p *prompts.Prompt, ev prompts.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		h.next.PromptEvent(p, ev)
		return
	}
	h.held = append(h.held, heldEvent{p, ev})
	h.bytes += len(ev.Data)
	if len(h.held) > maxHeldEvents || h.bytes > maxHeldBytes {
		h.releaseLocked()
	}
}

// release delivers what was held and lets later events through.
func (h *heldSink) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked()
}

func (h *heldSink) releaseLocked() {
	if h.released {
		return
	}
	h.released = true
	for _, e := range h.held {
		h.next.PromptEvent(e.p, e.ev)
	}
	h.held, h.bytes = nil, 0
}

// answerWaits holds, per client connection, what waits for the answer
// being written on it (the held events of the prompts it submitted).
type answerWaits struct {
	answerMu     sync.Mutex            // guards afterAnswers
	afterAnswers map[net.Conn][]func() // run once the connection's answer is out
	// answersWaiting counts the functions in afterAnswers.
	answersWaiting atomic.Int64
}

func newAnswerWaits() *answerWaits {
	return &answerWaits{afterAnswers: map[net.Conn][]func(){}}
}

// afterAnswer runs f once the answer to the request being served on
// ctx's connection has been written (or the connection has ended).
func (s *answerWaits) afterAnswer(ctx *fasthttp.RequestCtx, f func()) {
	c := ctx.Conn()
	if c == nil {
		f()
		return
	}
	s.answerMu.Lock()
	s.afterAnswers[c] = append(s.afterAnswers[c], f)
	s.answersWaiting.Add(1)
	s.answerMu.Unlock()
}

// connState is the server's ConnState hook: a connection that turned
// idle (its response flushed), closed or hijacked runs what waited for
// its answer.
func (s *answerWaits) connState(c net.Conn, st fasthttp.ConnState) {
	// Every request's connection turns idle: the lock is taken only while
	// some connection has something waiting.
	if st == fasthttp.StateNew || st == fasthttp.StateActive || s.answersWaiting.Load() == 0 {
		return
	}
	s.answerMu.Lock()
	fs, ok := s.afterAnswers[c]
	if ok {
		delete(s.afterAnswers, c)
		s.answersWaiting.Add(-int64(len(fs)))
	}
	s.answerMu.Unlock()
	for _, f := range fs {
		f()
	}
}
