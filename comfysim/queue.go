package comfysim

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// instance is the state of one ComfyUI process lifetime: Kill drops it and
// Restart builds a fresh one, exactly what a crash and restart would lose.
type instance struct {
	s          *Server
	ln         net.Listener
	hs         *http.Server
	ctx        context.Context
	cancel     context.CancelFunc
	routeTable []route
	wake       chan struct{} // nudges the worker (buffered, 1)
	workers    sync.WaitGroup
	sockWG     sync.WaitGroup

	accepted atomic.Int64 // prompts answered 200, for FailAfter
	wedged   atomic.Bool  // FailAfter reached

	mu sync.Mutex // guards every field below
	promptQueue
	history historyStore
	wsClients
	clientID    *string // server.client_id of the current/last prompt
	lastNode    string
	interrupted bool
	freeMemory  bool
	cache       map[string]*cacheEntry
}

// promptQueue is ComfyUI's PromptQueue: the pending prompts and the one
// running. Its instance's mu guards it.
type promptQueue struct {
	number  int64 // POST /prompt counter (self.number)
	seq     int64
	queue   []*queueItem // a heap laid out exactly like Python's heapq
	running *queueItem
}

// queueItem is ComfyUI's queue tuple (number, prompt_id, prompt, extra_data,
// outputs_to_execute).
type queueItem struct {
	number  prioNum
	id      string
	prompt  *parsedPrompt
	extra   *rawObj
	outputs []string
	seq     int64
}

func (q *queueItem) tuple() []any {
	return []any{q.number, q.id, q.prompt.obj, q.extra, q.outputs}
}

// prioNum is the queue priority: an int from the counter, or float(number)
// when the client sent one.
type prioNum struct {
	f       float64
	isFloat bool
}

func (p prioNum) MarshalJSON() ([]byte, error) {
	if p.isFloat {
		return []byte(pyFloatRepr(p.f)), nil
	}
	return []byte(strconv.FormatInt(int64(p.f), 10)), nil
}

func (a *queueItem) less(b *queueItem) bool {
	if a.number.f != b.number.f {
		return a.number.f < b.number.f
	}
	if a.id != b.id {
		return a.id < b.id
	}
	return a.seq < b.seq
}

// heapPush and heapPop are Python's heapq algorithms, so GET /queue lists
// pending items in the same (unsorted) heap order ComfyUI shows.
func (q *promptQueue) heapPush(it *queueItem) {
	q.queue = append(q.queue, it)
	siftDown(q.queue, 0, len(q.queue)-1)
}

func (q *promptQueue) heapPop() *queueItem {
	h := q.queue
	last := h[len(h)-1]
	h = h[:len(h)-1]
	q.queue = h
	if len(h) == 0 {
		return last
	}
	top := h[0]
	h[0] = last
	siftUp(h, 0)
	return top
}

func siftDown(h []*queueItem, start, pos int) {
	item := h[pos]
	for pos > start {
		parent := (pos - 1) >> 1
		if item.less(h[parent]) {
			h[pos] = h[parent]
			pos = parent
			continue
		}
		break
	}
	h[pos] = item
}

func siftUp(h []*queueItem, pos int) {
	end := len(h)
	start := pos
	item := h[pos]
	child := 2*pos + 1
	for child < end {
		right := child + 1
		if right < end && !h[child].less(h[right]) {
			child = right
		}
		h[pos] = h[child]
		pos = child
		child = 2*pos + 1
	}
	h[pos] = item
	siftDown(h, start, pos)
}

func heapify(h []*queueItem) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		siftUp(h, i)
	}
}

// historyStore is ComfyUI's history dict: insertion-ordered, overwriting an
// id keeps its position, capped at 10000 entries.
type historyStore struct {
	keys    []string
	entries map[string]*historyEntry
}

const maxHistory = 10000

type historyEntry struct {
	Prompt  []any       `json:"prompt"`
	Outputs ordered     `json:"outputs"`
	Status  *histStatus `json:"status"`
	Meta    ordered     `json:"meta"`
	item    *queueItem
}

type histStatus struct {
	StatusStr string  `json:"status_str"`
	Completed bool    `json:"completed"`
	Messages  [][]any `json:"messages"`
}

func (h *historyStore) put(id string, e *historyEntry) {
	if h.entries == nil {
		h.entries = map[string]*historyEntry{}
	}
	if _, ok := h.entries[id]; !ok {
		if len(h.keys) > maxHistory {
			delete(h.entries, h.keys[0])
			h.keys = h.keys[1:]
		}
		h.keys = append(h.keys, id)
	}
	h.entries[id] = e
}

func (h *historyStore) del(id string) {
	if _, ok := h.entries[id]; !ok {
		return
	}
	delete(h.entries, id)
	for i, k := range h.keys {
		if k == id {
			h.keys = append(h.keys[:i:i], h.keys[i+1:]...)
			return
		}
	}
}

func (h *historyStore) clear() { h.keys, h.entries = nil, nil }

type cacheEntry struct {
	outputs []any
	ui      *nodeUI
}

func (s *Server) newInstance(ln net.Listener) *instance {
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{
		s:      s,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		wake:   make(chan struct{}, 1),
		wsClients: wsClients{
			sockets:  map[string]*wsConn{},
			conns:    map[*wsConn]struct{}{},
			flags:    map[string]map[string]any{},
			features: s.ver.hasFeatures(),
		},
		cache: map[string]*cacheEntry{},
	}
	in.routeTable = in.routes()
	in.hs = &http.Server{
		Handler:           in,
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          nil,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	in.workers.Add(2)
	go func() {
		defer in.workers.Done()
		_ = in.hs.Serve(ln)
	}()
	go func() {
		defer in.workers.Done()
		in.worker()
	}()
	return in
}

// shutdown closes everything abruptly, as a dying process would.
func (in *instance) shutdown() {
	// A crashed process says nothing more: cut every connection before the
	// worker is cancelled, so no status or history change of the abandoned
	// prompt can reach a client in between.
	_ = in.hs.Close()
	in.mu.Lock()
	for c := range in.conns {
		c.close()
	}
	in.mu.Unlock()
	in.cancel()
	waitOrTimeout(&in.workers, shutdownTimeout)
	waitOrTimeout(&in.sockWG, shutdownTimeout)
}

// queueRemainingLocked is get_tasks_remaining: pending + running.
func (q *promptQueue) queueRemainingLocked() int {
	n := len(q.queue)
	if q.running != nil {
		n++
	}
	return n
}

type execInfo struct {
	QueueRemaining int `json:"queue_remaining"`
}

type queueStatus struct {
	ExecInfo execInfo `json:"exec_info"`
}

type statusData struct {
	Status queueStatus `json:"status"`
	Sid    *string     `json:"sid,omitempty"`
}

// queueUpdatedLocked broadcasts the status message ComfyUI sends on every
// queue change.
func (in *instance) queueUpdatedLocked() {
	in.sendLocked("status", statusData{Status: queueStatus{ExecInfo: execInfo{QueueRemaining: in.queueRemainingLocked()}}}, nil)
}

func (in *instance) putLocked(it *queueItem) {
	in.seq++
	it.seq = in.seq
	in.heapPush(it)
	in.queueUpdatedLocked()
	in.nudge()
}

// nudge wakes the worker without blocking.
func (in *instance) nudge() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// deletePendingLocked removes the first pending item with id, as
// PromptQueue.delete_queue_item does.
func (in *instance) deletePendingLocked(id string) bool {
	for i, it := range in.queue {
		if it.id != id {
			continue
		}
		if len(in.queue) == 1 {
			in.queue = nil
		} else {
			in.queue = append(in.queue[:i:i], in.queue[i+1:]...)
			heapify(in.queue)
		}
		in.queueUpdatedLocked()
		return true
	}
	return false
}

func (in *instance) wipeQueueLocked() {
	in.queue = nil
	in.queueUpdatedLocked()
}

// worker is ComfyUI's prompt_worker thread: one prompt at a time.
func (in *instance) worker() {
	for {
		in.mu.Lock()
		for len(in.queue) == 0 || in.s.paused.Load() || in.s.thawed() != nil {
			if in.freeMemory {
				in.cache = map[string]*cacheEntry{}
				in.freeMemory = false
			}
			in.mu.Unlock()
			select {
			case <-in.ctx.Done():
				return
			case <-in.wake:
			}
			in.mu.Lock()
		}
		if in.ctx.Err() != nil {
			in.mu.Unlock()
			return
		}
		it := in.heapPop()
		in.running = it
		in.queueUpdatedLocked()
		in.mu.Unlock()

		ex := newExecution(in, it)
		if !ex.run() {
			return // killed
		}
		in.mu.Lock()
		if in.freeMemory {
			in.cache = map[string]*cacheEntry{}
			in.freeMemory = false
		}
		in.mu.Unlock()
	}
}
