package proxy

import (
	"errors"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/limits"
	"github.com/comfygate/comfygate/state"
	"github.com/fasthttp/websocket"
)

// frame is one message for a client. A binary frame may carry a header
// written before data (the 8-byte type-1 header of a converted preview), so
// the image bytes are never copied.
type frame struct {
	binary bool
	head   []byte
	data   []byte
	// pos is the stream entry the frame came from (events between
	// replicas, ws_replicas.go); nil otherwise.
	pos *state.Position
}

// wsClient is one client socket: serveConn's goroutine reads it
// (readLoop), a writer goroutine writes it (writeLoop), and the hub feeds
// the writer through its queue without ever blocking. The writer runs only
// while there is something to write (a frame, a ping that is due, the
// close): an idle socket has no goroutine but its reader, and no write
// buffer (the upgrader lends one per message).
type wsClient struct {
	hub  *Hub
	id   string // clientId (sid)
	conn *websocket.Conn

	key      string // the API key's name ("" with keys off)
	isolated bool   // sees only key's prompts (ws_keys.go)

	q          sendQueue     // bounded by websocket.client_buffer; also who writes
	hello      frame         // the first status message; set before a writer starts
	pending    []frame       // replay, written after hello and before q; set before a writer starts
	greeted    bool          // hello and pending are written; writers only
	pinger     *time.Timer   // marks a ping due every ping interval
	quit       chan struct{} // closed by stop
	quitOnce   sync.Once
	closeCode  int    // set by stop before quit closes; 0 = no close frame
	closeText  string // ditto
	closing    atomic.Bool
	deadlineMu sync.Mutex    // orders extend's and writeClose's read deadlines
	writerDone chan struct{} // closed when writing ended for good
	unsent     *frame        // the frame a failed write did not deliver; read after writerDone

	// metadata: the client negotiated supports_preview_metadata.
	metadata atomic.Bool
	// seen is the last stream entry written (events between replicas).
	seen atomic.Pointer[state.Position]
}

func newClient(h *Hub, conn *websocket.Conn, id string) *wsClient {
	c := &wsClient{
		hub:        h,
		id:         id,
		conn:       conn,
		q:          sendQueue{limit: h.ws.ClientBuffer},
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	// Armed once the socket is registered (start): a ping must not start
	// a writer before the first status message is set.
	c.pinger = time.AfterFunc(math.MaxInt64, c.pingDue)
	return c
}

// offer queues f without blocking; false when the queue is full.
func (c *wsClient) offer(f frame) bool {
	ok, start := c.q.push(f)
	if start {
		go c.writeLoop()
	}
	return ok
}

// start arms the pings and starts the first writer (the first status
// message and the replay). The socket is registered.
func (c *wsClient) start() {
	c.pinger.Reset(c.hub.ws.PingInterval)
	c.kick()
}

// kick starts a writer unless one runs or writing ended.
func (c *wsClient) kick() {
	c.q.mu.Lock()
	start := c.q.claimLocked()
	c.q.mu.Unlock()
	if start {
		go c.writeLoop()
	}
}

// pingDue is the ping timer's: a ping goes out before the next frame.
func (c *wsClient) pingDue() {
	c.q.mu.Lock()
	c.q.ping = true
	start := c.q.claimLocked()
	c.q.mu.Unlock()
	if start {
		go c.writeLoop()
	}
}

// drain moves what the writer has not taken yet onto dst.
func (c *wsClient) drain(dst []frame) []frame { return c.q.drain(dst) }

// sendQueue is a client's bounded FIFO and the state of its writer. Unlike
// a buffered channel it holds memory only while frames wait, so idle
// clients cost little.
//
// At most one writer runs: whoever gives it work (push, a due ping, stop)
// starts one when none runs (claimLocked), and a writer leaves only after
// finding, under mu, nothing to do (next), so no work is left unseen.
type sendQueue struct {
	mu      sync.Mutex // guards the fields below
	frames  []frame    // frames[head:] wait
	head    int
	limit   int
	writing bool // a writer runs
	ended   bool // writing ended for good (the close, or a failed write)
	ping    bool // a ping is due
}

// claimLocked reports whether the caller must start a writer, and marks one
// running. q.mu is held.
func (q *sendQueue) claimLocked() bool {
	if q.writing || q.ended {
		return false
	}
	q.writing = true
	return true
}

// What a writer does next (sendQueue.next).
const (
	writeIdle  = iota // nothing: the writer leaves
	writeStop         // the close stop asked for, then the end
	writePing         // a ping
	writeFrame        // the frame returned
)

// next tells the running writer what to do. quit closed wins over a due
// ping, which wins over queued frames. With nothing to do, the writer is
// marked gone (and an emptied queue gives back a large array).
func (q *sendQueue) next(quit <-chan struct{}) (frame, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-quit:
		return frame{}, writeStop
	default:
	}
	if q.ping {
		q.ping = false
		return frame{}, writePing
	}
	if q.head == len(q.frames) {
		q.reset()
		q.writing = false
		return frame{}, writeIdle
	}
	f := q.frames[q.head]
	q.frames[q.head] = frame{}
	q.head++
	return f, writeFrame
}

// idleCap is the capacity an empty queue may keep.
const idleCap = 16

// push queues f (ok false when the queue is full) and reports whether the
// caller must start a writer.
func (q *sendQueue) push(f frame) (ok, start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames)-q.head >= q.limit {
		return false, false
	}
	if q.head > 0 && len(q.frames) == cap(q.frames) {
		n := copy(q.frames, q.frames[q.head:])
		clear(q.frames[n:])
		q.frames, q.head = q.frames[:n], 0
	}
	q.frames = append(q.frames, f)
	return true, q.claimLocked()
}

func (q *sendQueue) drain(dst []frame) []frame {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = append(dst, q.frames[q.head:]...)
	clear(q.frames[q.head:])
	q.head = len(q.frames)
	q.reset()
	return dst
}

// reset empties the drained queue, releasing a large array. q.mu is held.
func (q *sendQueue) reset() {
	if cap(q.frames) > idleCap {
		q.frames = nil
	} else {
		q.frames = q.frames[:0]
	}
	q.head = 0
}

// stop asks the writer to send a close frame with code (none when 0) and
// end. Only the first call counts. It never blocks.
func (c *wsClient) stop(code int, text string) {
	c.quitOnce.Do(func() {
		c.closeCode, c.closeText = code, text
		close(c.quit)
	})
	c.kick()
}

// writeLoop writes until there is nothing to write, then leaves (the next
// push, due ping or stop starts another): first, once, the first status
// message and the replay, then the close stop asked for, due pings and
// the queue. Writing ends for good (writerDone) with the close or a failed
// write.
func (c *wsClient) writeLoop() {
	if !c.greeted {
		c.greeted = true
		if !c.greet() {
			c.finish()
			return
		}
	}
	for {
		f, what := c.q.next(c.quit)
		switch what {
		case writeIdle:
			return
		case writeStop:
			c.writeClose()
			c.finish()
			return
		case writePing:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.writeWait)); err != nil {
				c.cut() // the reader fails and unregisters
				c.finish()
				return
			}
			c.pinger.Reset(c.hub.ws.PingInterval)
		case writeFrame:
			if err := c.write(f); err != nil {
				c.unsent = &f
				c.cut()
				c.finish()
				return
			}
			if f.pos != nil {
				c.seen.Store(f.pos)
			}
		}
	}
}

// greet writes the first status message and the replay. It reports false
// when writing ended (a failed write, or a stop, whose close it wrote).
func (c *wsClient) greet() bool {
	if err := c.write(c.hello); err != nil {
		c.cut()
		return false
	}
	for i := range c.pending {
		if c.stopped() {
			c.pending = c.pending[i:]
			c.writeClose()
			return false
		}
		if err := c.write(c.pending[i]); err != nil {
			c.unsent = &c.pending[i]
			c.pending = c.pending[i+1:] // the rest goes to the backlog too
			c.cut()
			return false
		}
		if p := c.pending[i].pos; p != nil {
			c.seen.Store(p)
		}
		c.pending[i] = frame{}
	}
	c.pending = nil
	return true
}

// finish ends writing for good: no writer starts again, and writerDone
// tells whoever waits that unsent and pending may be read.
func (c *wsClient) finish() {
	c.q.mu.Lock()
	c.q.writing, c.q.ended = false, true
	c.q.mu.Unlock()
	c.pinger.Stop()
	close(c.writerDone)
}

func (c *wsClient) stopped() bool {
	select {
	case <-c.quit:
		return true
	default:
		return false
	}
}

// write sends one frame within writeWait.
func (c *wsClient) write(f frame) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.hub.writeWait))
	mt := websocket.TextMessage
	if f.binary {
		mt = websocket.BinaryMessage
	}
	if f.head == nil {
		return c.conn.WriteMessage(mt, f.data)
	}
	w, err := c.conn.NextWriter(mt)
	if err != nil {
		return err
	}
	if _, err := w.Write(f.head); err != nil {
		_ = w.Close()
		return err
	}
	if _, err := w.Write(f.data); err != nil {
		_ = w.Close()
		return err
	}
	return w.Close()
}

// cut ends the connection now. Closing alone is not enough: fasthttp's
// hijacked conn ignores Close (it closes the socket itself once its handler
// returns), so an expired deadline is what makes the blocked reader fail.
func (c *wsClient) cut() {
	_ = c.conn.NetConn().SetDeadline(time.Now())
	_ = c.conn.Close()
}

// writeClose sends the close frame stop asked for, then gives the client
// closeWait to answer it before the reader gives up.
func (c *wsClient) writeClose() {
	// Under deadlineMu: a concurrent extend either ran before (and this
	// deadline wins) or sees closing and leaves it alone.
	c.deadlineMu.Lock()
	c.closing.Store(true)
	_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.closeWait))
	c.deadlineMu.Unlock()
	if c.closeCode != 0 {
		// The close frame waits behind what is in flight to a slow client
		// like any frame: it gets writeWait to go out, as they do.
		_ = c.conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(c.closeCode, c.closeText), time.Now().Add(max(c.hub.writeWait, c.hub.closeWait)))
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(c.hub.closeWait))
}

// readLoop reads until the socket fails or closes: the client's first text
// frame may negotiate feature flags, everything else is ignored (ComfyUI
// reads nothing more), but reading processes pongs, pings and close.
func (c *wsClient) readLoop() {
	wait := pingWaitFactor * c.hub.ws.PingInterval
	c.conn.SetReadLimit(c.hub.lim.WSMaxFrameBytes)
	rate := limits.Bucket{Rate: c.hub.lim.WSMessagesPerSecond, Burst: c.hub.lim.WSMessageBurst}
	extend := func() {
		c.deadlineMu.Lock()
		defer c.deadlineMu.Unlock()
		if !c.closing.Load() {
			_ = c.conn.SetReadDeadline(time.Now().Add(wait))
		}
	}
	extend()
	c.conn.SetPongHandler(func(string) error { extend(); return nil })
	// On the client's close frame, stop the writer before answering: every
	// frame written before the answer reaches a client that reads until it,
	// and every frame not written goes to the backlog (unregister).
	c.conn.SetCloseHandler(func(code int, _ string) error {
		initiated := c.closing.Load() // our close frame went out already
		c.stop(0, "")
		<-c.writerDone
		if c.hub.xr != nil {
			// A reconnect on another replica, once this close is answered,
			// starts where this socket left (ws_replicas.go).
			c.hub.awaitLeave(c.hub.unregister(c))
		}
		if initiated {
			return nil
		}
		_ = c.conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(code, ""), time.Now().Add(c.hub.closeWait))
		return nil
	})
	first := true
	for {
		mt, r, err := c.conn.NextReader()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.hub.m.LimitRefused("ws_frame_too_large")
			}
			return
		}
		extend()
		if ok, _ := rate.Take(time.Now()); !ok {
			// Over limits.ws_messages_per_second: closed like a slow client;
			// reading goes on (discarding) to finish the closing handshake.
			if !c.stopped() {
				c.hub.m.LimitRefused("ws_message_rate")
				c.stop(websocket.ClosePolicyViolation, "policy violation: too many messages")
			}
			continue
		}
		if mt != websocket.TextMessage || !first {
			continue // NextReader discards the unread rest
		}
		first = false
		data, err := io.ReadAll(r)
		if err != nil {
			return
		}
		if flags, ok := comfyapi.ParseFeatureFlags(data); ok {
			c.hub.featureFlags(c, flags)
		}
	}
}
