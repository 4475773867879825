package proxy

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/limits"
	"github.com/fasthttp/websocket"
)

// frame is one message for a client. A binary frame may carry a header
// written before data (the 8-byte type-1 header of a converted preview), so
// the image bytes are never copied.
type frame struct {
	binary bool
	head   []byte
	data   []byte
}

// wsClient is one client socket: the hijacked connection's goroutine reads
// it (readLoop), one writer goroutine writes it (writeLoop), and the hub
// feeds the writer through its queue without ever blocking.
type wsClient struct {
	hub  *Hub
	id   string // clientId (sid)
	conn *websocket.Conn

	q          sendQueue     // bounded by websocket.client_buffer
	hello      frame         // the first status message; set before writeLoop starts
	pending    []frame       // replay, written after hello and before q; set before writeLoop starts
	quit       chan struct{} // closed by stop
	quitOnce   sync.Once
	closeCode  int    // set by stop before quit closes; 0 = no close frame
	closeText  string // ditto
	closing    atomic.Bool
	deadlineMu sync.Mutex // orders extend's and writeClose's read deadlines
	writerDone chan struct{}
	unsent     *frame // the frame a failed write did not deliver; read after writerDone

	// metadata: the client negotiated supports_preview_metadata.
	metadata atomic.Bool
}

func newClient(h *Hub, conn *websocket.Conn, id string) *wsClient {
	return &wsClient{
		hub:        h,
		id:         id,
		conn:       conn,
		q:          sendQueue{limit: h.ws.ClientBuffer, ready: make(chan struct{}, 1)},
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
}

// offer queues f without blocking; false when the queue is full.
func (c *wsClient) offer(f frame) bool { return c.q.push(f) }

// drain moves what the writer has not taken yet onto dst.
func (c *wsClient) drain(dst []frame) []frame { return c.q.drain(dst) }

// sendQueue is a client's bounded FIFO. Unlike a buffered channel it holds
// memory only while frames wait, so idle clients cost little.
type sendQueue struct {
	mu     sync.Mutex // guards frames, head
	frames []frame    // frames[head:] wait
	head   int
	limit  int
	ready  chan struct{} // 1-buffered: a frame was added
}

// idleCap is the capacity an empty queue may keep.
const idleCap = 16

func (q *sendQueue) push(f frame) bool {
	q.mu.Lock()
	if len(q.frames)-q.head >= q.limit {
		q.mu.Unlock()
		return false
	}
	if q.head > 0 && len(q.frames) == cap(q.frames) {
		n := copy(q.frames, q.frames[q.head:])
		clear(q.frames[n:])
		q.frames, q.head = q.frames[:n], 0
	}
	q.frames = append(q.frames, f)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

func (q *sendQueue) pop() (frame, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.frames) {
		q.reset()
		return frame{}, false
	}
	f := q.frames[q.head]
	q.frames[q.head] = frame{}
	q.head++
	return f, true
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
}

// writeLoop is the socket's only writer: the first status message, the
// replay, then the queue, with a ping every ping interval. It ends on stop or a write error.
func (c *wsClient) writeLoop() {
	defer close(c.writerDone)
	ticker := time.NewTicker(c.hub.ws.PingInterval)
	defer ticker.Stop()
	if err := c.write(c.hello); err != nil {
		c.cut()
		return
	}
	for i := range c.pending {
		if c.stopped() {
			c.pending = c.pending[i:]
			c.writeClose()
			return
		}
		if err := c.write(c.pending[i]); err != nil {
			c.unsent = &c.pending[i]
			c.pending = c.pending[i+1:] // the rest goes to the backlog too
			c.cut()
			return
		}
		c.pending[i] = frame{}
	}
	c.pending = nil
	ping := func() bool {
		if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.writeWait)); err != nil {
			c.cut() // the reader fails and unregisters
			return false
		}
		return true
	}
	for {
		if c.stopped() { // a stop wins over queued frames
			c.writeClose()
			return
		}
		select { // pings go out during a long stream too
		case <-ticker.C:
			if !ping() {
				return
			}
		default:
		}
		if f, ok := c.q.pop(); ok {
			if err := c.write(f); err != nil {
				c.unsent = &f
				c.cut()
				return
			}
			continue
		}
		select {
		case <-c.quit:
		case <-c.q.ready:
		case <-ticker.C:
			if !ping() {
				return
			}
		}
	}
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
		_ = c.conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(c.closeCode, c.closeText), time.Now().Add(c.hub.closeWait))
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
