package prompts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
	"github.com/fasthttp/websocket"
)

// featureFlags is the first frame comfygate sends on an instance socket:
// with it, v0.3.44+ instances send previews as type-4 frames that name
// their prompt_id (comfyui-api.md §2, "Binary frames").
var featureFlags = []byte(`{"type":"feature_flags","data":{"supports_preview_metadata":true}}`)

const (
	// maxEarlyFrames bounds the frames kept per instance for prompts whose
	// upstream id is not known yet (instances older than v0.3.45 name the id
	// in the POST /prompt answer, and events can come first).
	maxEarlyFrames = 1024
	// earlyFrameTTL is how long such a frame waits for its prompt's id.
	earlyFrameTTL = 30 * time.Second
	// closeWait bounds the close handshake with an instance.
	closeWait = time.Second
	// writeWait bounds one control or text write to an instance.
	writeWait = 5 * time.Second
)

// instSocket is comfygate's one WebSocket to one instance. Every prompt
// comfygate sends there carries the socket's client_id, so all their events
// arrive on it; it routes them by prompt_id.
type instSocket struct {
	t    *Table
	inst *upstream.Instance

	startOnce sync.Once
	stopOnce  sync.Once
	stopCh    chan struct{} // closed by stop
	conns     atomic.Uint64 // connections made so far (a send compares it)
	dialed    atomic.Bool   // a first dial has finished, either way (Start waits for it)
	upSince   atomic.Int64  // unix nanos the current connection came up
	ahead     atomic.Int64  // frames the reader queued for the owner and not applied yet

	// box is the instance's owner (owner.go): the fields below are its
	// own, read and written only by messages it runs, so a prompt's
	// events and the ids learned from POST answers reach its sink in the
	// instance's order.
	box      *mailbox
	running  string  // upstream id of the prompt the instance is executing
	early    []frame // frames of not yet known upstream ids, oldest first
	awaiting int     // submits to this instance waiting for their upstream id
	draining bool    // close the socket once the instance's prompts are done
	passes   *passes // the owner's background passes
	// tombs are the prompts moved off the instance, oldest first
	// (tombstones.go).
	tombs       []tomb
	ntombs      atomic.Int64 // len(tombs), written by the owner: read by anyone (mayHaveTombs)
	tombsPosted atomic.Int64 // tombstones posted to the owner and not added yet
	stopCancel  func()       // cancels run's context (set by run, called by stop)
	// connCancel ends the current connection (set by run, called by
	// redial); redialing is set when redial ended it (run dials again at
	// once) and closed once it is closed.
	connCancel func()
	redialing  chan struct{}
	// borrows are the sockets borrowed under other client_ids (borrow.go).
	borrows map[string]*borrowed
	// What the running prompt is doing, for the operator's view (Running):
	// when it started, the node executing, and that node's last progress.
	runSince time.Time
	runNode  string
	runValue float64
	runMax   float64
}

func newInstSocket(t *Table, inst *upstream.Instance) *instSocket {
	s := &instSocket{t: t, inst: inst, stopCh: make(chan struct{}), box: newMailbox(t.run, t.log)}
	s.passes = &passes{instSocket: s}
	return s
}

// passes are the background passes of an instance's owner: the grace and
// failover after the instance went down (events.go), the follow-up of an
// unanswered send (failover.go), the queue check for deleted prompts and
// the reconcile after a (re)connection, moves of waiting prompts to it
// when it is idle (steal.go), clean-up of what moved off it
// (tombstones.go) and the close of a drained instance's socket. Each runs
// its calls in a worker that reports back to the owner: one of a kind at
// a time, and a request during one runs another after it. Its fields are
// the owner's.
type passes struct {
	*instSocket
	verifying      bool // a queue check for deleted prompts is running
	verifyAgain    bool // another queue check is wanted
	cleaning       bool // a CleanUp pass of moved prompts is running
	cleanAgain     bool // another CleanUp pass is wanted
	moving         bool // a waiting prompt is being moved here (idle)
	moveAgain      bool // another look for a waiting prompt is wanted
	failing        bool // the instance went down: its grace or failover is under way (events.go)
	failAgain      bool // it went down again meanwhile: another after this one
	reconciling    bool // a reconcile after a (re)connection is running
	reconcileAgain bool // the socket connected again meanwhile: another
}

// runSocket starts s's loop once.
func (t *instances) runSocket(s *instSocket) {
	s.startOnce.Do(func() {
		ctx := t.run.context()
		t.run.goRun(func() { safely(t.log, "instance socket", func() { s.run(ctx) }) })
	})
}

// stop ends s's loop (closing its connection properly).
func (s *instSocket) stop() {
	s.stopOnce.Do(func() {
		close(s.stopCh)
		s.box.post(func() {
			if s.stopCancel != nil {
				s.stopCancel()
			}
		})
	})
}

// run keeps one connection to the instance until ctx ends or stop,
// reconnecting with jittered exponential backoff.
func (s *instSocket) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// No goroutine per instance waits for stop: stop cancels through
	// stopCancel on the owner (or stopped before run: the check below).
	s.box.do(func() { s.stopCancel = cancel })
	select {
	case <-s.stopCh:
		return
	default:
	}
	cfg := s.t.cfg.WebSocket
	minB, maxB := max(cfg.ReconnectMin, 10*time.Millisecond), max(cfg.ReconnectMax, cfg.ReconnectMin)
	backoff := minB
	everUp, lost := false, false
	clk := s.t.p.Clock() // the waits between dials: a test's fake clock drives them
	for ctx.Err() == nil {
		dialStart := clk.Now()
		id := s.inst.SocketClientID()
		conn, first, err := s.dialAs(ctx, id)
		if err == nil && id != s.inst.SocketClientID() {
			// Renewed while it dialed (redial found no connection to end).
			_ = conn.Close()
			continue
		}
		if err == nil {
			s.up()
			s.box.do(func() { s.onText(first) })
			if lost && s.t.moves.hasTombstones(s.inst) {
				// Back after a loss, maybe from a stop: it runs its queue
				// at once, so what moved off it goes first, before the
				// health check that lets it take work again.
				s.t.moves.cleanUpLater(s)
			}
		}
		s.dialed.Store(true)
		select {
		case s.t.insts.settled <- struct{}{}: // awaitSockets looks again
		default:
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			lost = true
			s.t.log.Debug("prompts: socket dial failed", "instance", s.inst.Name, "error", err, "retry_in", backoff)
			// A dial that waited out its whole timeout (a stopped or hung
			// process accepts and never answers) was its own backoff: dial
			// again at once, so that one is always waiting when the
			// process wakes, and the moved prompts are removed from it
			// before it gets far with them.
			if clk.Now().Sub(dialStart) < s.dialTimeout() && !sleepCtx(ctx, clk, jitter(backoff)) {
				return
			}
			backoff = min(backoff*2, maxB)
			continue
		}
		backoff = minB
		s.conns.Add(1)
		connCtx, connCancel := context.WithCancel(ctx)
		s.box.do(func() { s.connCancel, s.redialing = connCancel, nil })
		if lost {
			if everUp {
				s.t.m.IncUpstreamReconnect(s.inst.Name)
				s.t.log.Info("prompts: socket reconnected", "instance", s.inst.Name)
			}
			s.t.p.SocketRestored(s.inst)
		}
		// The first connection too: Start returns before it, and a prompt
		// sent meanwhile ran with nobody listening for its events.
		s.box.post(s.passes.wantReconcile)
		everUp, lost = true, false
		err = s.serve(connCtx, conn, s.onText, s.onBinary)
		s.inst.State().SetSocketUp(false)
		var redialed chan struct{}
		s.box.do(func() { s.connCancel, redialed = nil, s.redialing })
		connCancel()
		if redialed != nil {
			close(redialed)
		}
		if ctx.Err() != nil {
			return
		}
		if redialed != nil {
			s.t.log.Info("prompts: socket reconnecting under a new client_id", "instance", s.inst.Name)
			continue
		}
		lost = true
		s.t.log.Warn("prompts: socket lost", "instance", s.inst.Name, "error", err)
		s.t.p.SocketLost(s.inst)
		if !sleepCtx(ctx, clk, jitter(minB)) {
			return
		}
	}
}

// redial ends the current connection, if any, for run to dial again at
// once: under the instance's SocketClientID as it is then. The channel is
// closed once the connection it ended is closed (at once when there was
// none, or the table closed): the instance no longer holds a socket under
// the old id that could unregister a newer one when it closes.
func (s *instSocket) redial() <-chan struct{} {
	ch := make(chan struct{})
	ok := s.box.do(func() {
		switch {
		case s.connCancel == nil:
			close(ch)
		case s.redialing != nil:
			ch = s.redialing
		default:
			s.redialing = ch
			s.connCancel()
		}
	})
	if !ok {
		close(ch)
	}
	return ch
}

// up records a fresh connection. The instance executes at most one prompt;
// if comfygate believes one of its prompts is running there, the re-sync
// `executing` (without prompt_id) and previews belong to it.
func (s *instSocket) up() {
	s.upSince.Store(time.Now().UnixNano())
	s.inst.State().SetSocketUp(true)
	running := ""
	for _, pr := range s.t.idx.livePinnedTo(s.inst) {
		if v := pr.snap(); stateOf(v.life) == PromptRunning {
			running = v.life.UpstreamID
		}
	}
	s.box.do(func() { s.running = running })
}

// socketReadBuffer is each instance socket's read buffer. Most frames
// are a few hundred bytes; a larger payload (a preview) is read past the
// buffer, straight into the message.
const socketReadBuffer = 1 << 10

// socketWriteBufs holds the instance sockets' write buffers between
// writes: comfygate writes one message on a socket (the feature flags)
// and then only control frames, so a buffer per instance would sit idle.
var socketWriteBufs sync.Pool

// dialTimeout bounds one dial of the socket (health_check.timeout).
func (s *instSocket) dialTimeout() time.Duration { return s.t.cfg.HealthCheck.Timeout }

// dialAs opens a socket under clientID, sends the feature flags and
// returns the instance's first message. ComfyUI registers a socket under
// its clientId only after the handshake, then sends it its status: until
// that first message arrives, what the instance sends to that clientId
// goes nowhere (a prompt sent meanwhile would lose its first events), so
// the socket counts as up only once it came.
func (s *instSocket) dialAs(ctx context.Context, clientID string) (*websocket.Conn, []byte, error) {
	scheme := "ws://"
	if s.inst.TLS {
		scheme = "wss://"
	}
	u := scheme + s.inst.Addr + "/ws?clientId=" + url.QueryEscape(clientID)
	d := websocket.Dialer{HandshakeTimeout: s.dialTimeout(), WriteBufferPool: &socketWriteBufs, ReadBufferSize: socketReadBuffer}
	conn, resp, err := d.DialContext(ctx, u, nil)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(writeWait))
	if err := conn.WriteMessage(websocket.TextMessage, featureFlags); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	_ = conn.SetWriteDeadline(time.Time{})
	_ = conn.SetReadDeadline(time.Now().Add(s.dialTimeout()))
	for {
		mt, data, err := conn.ReadMessage()
		if err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("no status after the handshake: %w", err)
		}
		if mt == websocket.TextMessage {
			return conn, data, nil
		}
	}
}

// serve reads conn until it fails or ctx ends, handing each text and
// binary frame to text and bin on the owner, pinging it every
// failover.liveness_interval; the instance must answer (aiohttp does, from
// its event loop, even while a node runs) or send something within
// failover.liveness_timeout, else serve returns and the instance is
// suspect: a stopped or hung process is noticed in seconds. It closes conn
// fully before it returns: ComfyUI unregisters whatever socket holds our
// clientId when an old one finally closes (comfyui-api.md §2, "Close
// race"), so the next dial must come after.
func (s *instSocket) serve(ctx context.Context, conn *websocket.Conn, text, bin func([]byte)) error {
	interval, readWait := s.t.cfg.Failover.LivenessInterval, s.t.cfg.Failover.LivenessTimeout
	_ = conn.SetReadDeadline(time.Now().Add(readWait))
	conn.SetPongHandler(func(string) error {
		return conn.SetReadDeadline(time.Now().Add(readWait))
	})

	// Pings and the close on ctx's end run from timer and context
	// callbacks, not a goroutine per instance that mostly waits (its stack
	// is most of an idle instance's cost in a large fleet). WriteControl
	// may run beside the reader.
	var pingMu sync.Mutex // guards pinging
	pinging := true
	var ping *time.Timer
	ping = time.AfterFunc(interval, func() {
		if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)) != nil {
			return
		}
		pingMu.Lock()
		if pinging {
			ping.Reset(interval)
		}
		pingMu.Unlock()
	})
	stopClose := context.AfterFunc(ctx, func() {
		// Start the close handshake; the reader sees the answer.
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
		_ = conn.SetReadDeadline(time.Now().Add(closeWait))
	})

	var err error
	for {
		var mt int
		var data []byte
		mt, data, err = conn.ReadMessage()
		if err != nil {
			break
		}
		if ctx.Err() == nil {
			_ = conn.SetReadDeadline(time.Now().Add(readWait))
		}
		// Queued for the owner, in the instance's order; the reader reads
		// on meanwhile (handFrame).
		switch mt {
		case websocket.TextMessage:
			s.handFrame(func() { text(data) })
		case websocket.BinaryMessage:
			s.handFrame(func() { bin(data) })
		}
	}
	// Every frame read is applied before the loss is acted on (run reports
	// it once serve returns).
	s.box.do(func() {})
	pingMu.Lock()
	pinging = false
	ping.Stop()
	pingMu.Unlock()
	stopClose()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		// Not closed by a handshake: say goodbye anyway (best effort).
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
	}
	_ = conn.Close()
	return err
}

// maxFramesAhead bounds the frames a socket's reader queues for the owner
// before it waits for them: an owner slower than its instance holds at
// most this many frames, and the socket's own buffers the rest.
const maxFramesAhead = 64

// handFrame queues apply, one frame's handling, for the owner. The reader
// does not wait for it (the frames of a prompt that runs at once arrive
// together with its POST's answer, which waits for the same owner) unless
// maxFramesAhead are queued already.
func (s *instSocket) handFrame(apply func()) {
	f := func() {
		apply()
		s.ahead.Add(-1)
	}
	if s.ahead.Add(1) > maxFramesAhead {
		if !s.box.do(f) {
			s.ahead.Add(-1)
		}
		return
	}
	if !s.box.post(f) {
		s.ahead.Add(-1)
	}
}

// frame is one message from an instance, parsed for routing.
type frame struct {
	typ      string // JSON type; "" for binary
	binary   bool
	uid      string // upstream prompt id it belongs to ("" none)
	data     []byte
	nodeNull bool            // executing with node null
	excType  string          // execution_error's exception_type
	outputs  json.RawMessage // executed's output, {kind: [file ref], ...}
	meta     bool            // a type-4 preview: its metadata names the prompt
	at       time.Time
}

// onText routes one text frame. On the owner.
func (s *instSocket) onText(data []byte) {
	// A data that is not an object (a custom node's message) leaves the
	// fields empty: it is a broadcast.
	msg, _ := comfyapi.ParseWSText(data)
	switch msg.Type {
	case comfyapi.TypeStatus:
		if n, ok := msg.QueueRemaining(); ok {
			s.onStatus(n)
		}
		return // the proxy synthesizes the fleet's status for clients
	case comfyapi.TypeFeatureFlags:
		return // the instance's answer to ours
	}
	f := textFrame(msg, data)
	was := s.running
	defer func() { s.trackLocked(was, msg, f) }()
	s.running = runningAfter(s.running, &f)
	if f.uid == "" {
		s.broadcast(f)
		return
	}
	s.routeLocked(f)
}

// binaryFrame is the frame of binary message data: a type 4 preview's
// by the prompt_id in its metadata, any other's by running, the upstream
// id of the prompt executing for the socket.
func binaryFrame(data []byte, running string) frame {
	f := frame{binary: true, data: data, at: time.Now()}
	if md, ok := comfyapi.ParsePreviewMetadata(data); ok {
		f.uid, f.meta = md.PromptID, true
	}
	if f.uid == "" {
		f.uid = running
	}
	return f
}

// textFrame is the frame of msg, a text message (data) that is not a
// status.
func textFrame(msg comfyapi.WSMessage, data []byte) frame {
	f := frame{typ: msg.Type, data: data, at: time.Now(), excType: msg.ExceptionType(), uid: msg.PromptID(), nodeNull: msg.NodeNull()}
	if f.typ == comfyapi.TypeExecuted {
		f.outputs = msg.Data.Output
	}
	if !msg.HasPromptID() {
		f.uid = ""
	}
	return f
}

// runningAfter returns the upstream id of the prompt the instance executes
// for a socket after f, running before it; an `executing` that names no
// prompt (the re-sync after a connection) is given running's id.
func runningAfter(running string, f *frame) string {
	switch f.typ {
	case comfyapi.TypeExecutionStart:
		return f.uid
	case comfyapi.TypeExecuting:
		if f.uid == "" {
			f.uid = running // the re-sync after a reconnect names no prompt
		}
		if f.nodeNull {
			if running == f.uid {
				return ""
			}
		} else if f.uid != "" {
			return f.uid
		}
	case comfyapi.TypeExecutionSuccess, comfyapi.TypeExecutionInterrupted:
		if running == f.uid {
			return ""
		}
	case comfyapi.TypeExecutionError:
		if f.excType != comfyapi.ExceptionExecutionBlocked && running == f.uid {
			return ""
		}
	}
	return running
}

// trackLocked keeps what the running prompt is doing after f (was: the
// prompt running before it). On the owner.
func (s *instSocket) trackLocked(was string, msg comfyapi.WSMessage, f frame) {
	if s.running != was || s.running == "" {
		s.runSince, s.runNode, s.runValue, s.runMax = f.at, "", 0, 0
		if s.running == "" {
			s.runSince = time.Time{}
		}
	}
	if s.running == "" || (f.uid != "" && f.uid != s.running) {
		return
	}
	switch f.typ {
	case comfyapi.TypeExecuting:
		if n := msg.Node(); n != "" && n != s.runNode {
			s.runNode, s.runValue, s.runMax = n, 0, 0
		}
	case comfyapi.TypeProgress:
		s.runValue, s.runMax = msg.Progress()
		if n := msg.Node(); n != "" {
			s.runNode = n
		}
	}
}

// onBinary routes one binary frame: type 4 by the prompt_id in its
// metadata, anything else to the prompt the instance is executing. On
// the owner.
func (s *instSocket) onBinary(data []byte) {
	f := binaryFrame(data, s.running)
	if f.uid == "" {
		s.broadcast(f)
		return
	}
	s.routeLocked(f)
}

// broadcast hands a frame that names no prompt to the listener, with the
// prompt the instance is executing. On the owner.
func (s *instSocket) broadcast(f frame) {
	if l := s.t.events.currentListener(); l != nil {
		ev := Event{Instance: s.inst, Type: f.typ, Binary: f.binary, Data: f.data}
		if s.running != "" {
			ev.Running = s.t.idx.getUpstream(s.inst, s.running)
		}
		s.t.events.outboxFor(s.inst).push(func() { l.Broadcast(ev) })
	}
}

// routeLocked delivers f to its prompt, or keeps it while a submit to this
// instance waits for its upstream id. On the owner.
func (s *instSocket) routeLocked(f frame) {
	pr := s.t.idx.getUpstream(s.inst, f.uid)
	if pr == nil {
		if s.awaiting > 0 {
			s.keepEarlyLocked(f)
			return
		}
		// Our client_id, an id we do not know: a prompt of an earlier
		// comfygate process, or one we already moved elsewhere. A moved
		// one must not run here: stop it; one that ran here to success
		// after all ends with this run (CleanUp reclaims it).
		if (f.typ == comfyapi.TypeExecutionStart || f.typ == comfyapi.TypeExecutionSuccess) && s.isTombstoned(f.uid) {
			if f.typ == comfyapi.TypeExecutionSuccess && s.endedElsewhere(f.uid) {
				// Too late to remove: it was running here when the
				// instance stopped answering, and ran on when it woke.
				s.t.m.PromptRanTwice(s.inst.Name)
				s.t.log.Info("prompts: a moved prompt also ran to success where it was", "instance", s.inst.Name, "upstream_id", f.uid)
			}
			s.t.moves.cleanUpLater(s)
		}
		return
	}
	s.t.steps.apply(pr, s.inst, f)
}

// keepEarlyLocked buffers f, dropping expired and excess frames. On the owner.
func (s *instSocket) keepEarlyLocked(f frame) {
	cut := 0
	for cut < len(s.early) && (f.at.Sub(s.early[cut].at) > earlyFrameTTL || len(s.early)-cut >= maxEarlyFrames) {
		cut++
	}
	if cut > 0 {
		n := copy(s.early, s.early[cut:])
		clear(s.early[n:])
		s.early = s.early[:n]
	}
	s.early = append(s.early, f)
}

// endAwait ends the wait of a send that beginSend counted in awaiting:
// with uid != "" (the answer of pr's send attempt), pins pr under it and
// replays the frames that came first, in order, before any later frame of
// it.
func (s *instSocket) endAwait(pr *Prompt, uid string, attempt int) {
	s.box.do(func() { s.endAwaitOwned(pr, uid, attempt) })
}

// endAwaitOwned is endAwait, on the owner.
func (s *instSocket) endAwaitOwned(pr *Prompt, uid string, attempt int) {
	s.awaiting--
	if uid == "" {
		return
	}
	// The answer named the id: the prompt is there under it.
	s.t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Answered, UpstreamID: uid, Attempt: attempt}, nil)
	kept := s.early[:0]
	var mine []frame
	for _, f := range s.early {
		if f.uid == uid {
			mine = append(mine, f)
		} else {
			kept = append(kept, f)
		}
	}
	clear(s.early[len(kept):])
	s.early = kept
	if s.awaiting == 0 {
		clear(s.early)
		s.early = s.early[:0]
	}
	for _, f := range mine {
		s.t.steps.apply(pr, s.inst, f)
	}
}

// onStatus records the queue depth the instance reports. On the owner.
func (s *instSocket) onStatus(n int64) {
	if s.inst.Workload().QueueDepth() != n {
		s.inst.Workload().SetQueueDepth(n)
		s.t.events.notifyQueue()
	}
	s.passes.checkDeleted(n)
	if n == 0 {
		s.t.moves.idle(s)
	}
	if n > 0 && len(s.pruneTombs(time.Now())) > 0 {
		// A held POST of a moved prompt may have reached the queue.
		s.t.moves.cleanUpLater(s)
	}
}

// apply moves pr's life on by f and delivers f to pr's sink, with ids
// rewritten to the client-facing one. Called on inst's owner (for
// synthesized events too), so a prompt's events are applied and queued
// for delivery in the instance's order.
func (t *steps) apply(pr *Prompt, inst *upstream.Instance, f frame) {
	if t.letGo(pr) {
		return // its events are another replica's to deliver now
	}
	ph := pr.Life().Phase
	ended := ph == lifecycle.Ended
	if ph == lifecycle.Sending || ph == lifecycle.Unconfirmed {
		// Any event proves the instance has it.
		t.step(pr, lifecycle.Event{Kind: lifecycle.Seen, At: f.at}, nil)
	}
	switch f.typ {
	case comfyapi.TypeExecutionStart:
		t.step(pr, lifecycle.Event{Kind: lifecycle.Started, At: f.at}, nil)
	case comfyapi.TypeExecuted:
		t.files.pinOutputs(inst, comfyapi.NodeOutputFiles(f.outputs, ""))
	case comfyapi.TypeExecutionSuccess:
		t.markDone(pr, metrics.OutcomeSuccess)
	case comfyapi.TypeExecutionInterrupted:
		t.markDone(pr, metrics.OutcomeInterrupted)
	case comfyapi.TypeExecutionError:
		if f.excType != comfyapi.ExceptionExecutionBlocked { // a blocker's message: not terminal
			t.markDone(pr, metrics.OutcomeError)
		}
	case comfyapi.TypeExecuting:
		if f.nodeNull {
			defer t.step(pr, lifecycle.Event{Kind: lifecycle.End, At: f.at}, nil)
		}
	}
	if ended {
		return // its sink got its end already (synthesized): nothing more
	}
	data := f.data
	if f.binary {
		if f.meta && f.uid != pr.ID {
			data, _ = comfyapi.RewritePreviewPromptID(f.data, f.uid, pr.ID)
		}
	} else if f.uid != pr.ID {
		data = replaceID(f.data, f.uid, pr.ID)
	}
	t.events.deliver(pr, Event{Instance: inst, Type: f.typ, Binary: f.binary, PromptID: pr.ID, Data: data}, true)
}

// pinOutputs records the files named by refs (an `executed` output's or a
// history entry's) as inst's. One odd entry (a subfolder that is no
// string) costs only itself.
func (fs *fileStore) pinOutputs(inst *upstream.Instance, refs []FileRef) {
	for _, r := range refs {
		fs.PinFile(r, inst)
	}
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits d on clk or until ctx ends; false if ctx ended.
func sleepCtx(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	tm := clk.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C():
		return true
	}
}
