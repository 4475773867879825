package proxy

// The client side of the WebSocket bridge: ComfyUI's /ws and /api/ws.
//
// Every client socket is one wsClient with one reader (the hijacked
// connection's goroutine) and one writer goroutine fed by a bounded queue.
// Events reach the queue from the instances' reader goroutines through the
// Hub (ws_hub.go), which never blocks them: a full queue drops that client
// with close code 1008. While a clientId has no socket its events wait in a
// bounded backlog for a grace period (ws_backlog.go).
//
// Differences from ComfyUI, on purpose:
//   - Reconnecting with a clientId that still has a socket: ComfyUI keeps
//     the old socket open but silent, and the old socket's later close
//     unregisters the new one (comfyui-api.md §2). comfygate closes the old
//     socket with close code 4000 ("replaced by a newer connection with the
//     same clientId"), hands the frames it had not written yet to the new
//     socket, and the old socket's close never touches the new one. Browser
//     tabs that share a clientId (a duplicated tab) reconnect on every close,
//     which would make two sockets evict each other forever; after 3
//     replacements of one clientId within 10 s comfygate stops closing the
//     old socket and leaves it open and silent, as ComfyUI does.
//   - Events for a clientId without a socket are kept (backlog) instead of
//     being dropped, and replayed on reconnect right after the first status
//     message, in order, before live events. ComfyUI instead re-syncs a
//     reconnecting client with one `executing {"node": X}` (without
//     prompt_id) when its prompt is running; comfygate does not synthesize
//     that message: the replayed backlog already contains the prompt's own
//     `executing` messages (with prompt_id) and everything after them.
//   - ComfyUI never pings; comfygate pings every websocket.ping_interval and
//     drops a client that sends nothing (not even a pong) for twice that.
//   - permessage-deflate is not negotiated (ComfyUI's aiohttp does): previews
//     are already compressed and event JSON is small, so compression would
//     cost CPU and latency for little gain. Clients must accept both anyway.

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/ids"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// WebSocket close codes and limits of the client side.
const (
	// closeReplaced closes a socket whose clientId reconnected on a newer one.
	closeReplaced = 4000
	// replaceWindow and replaceLimit damp two sockets that keep evicting
	// each other (see the comment at the top of this file).
	replaceWindow = 10 * time.Second
	replaceLimit  = 3
	// writeWait bounds one frame's write to a client; a client that accepts
	// nothing for that long is gone.
	writeWait = 10 * time.Second
	// closeWait bounds the closing handshake and Close's wait for sockets.
	closeWait = 2 * time.Second
	// sendBuffer bounds the kernel send buffer of a client socket. What
	// sits there is out of the queue's sight: with Linux's autotuning (a
	// few MB) a slow client shows late, and a frame write blocked behind
	// it resumes only once much of the buffer has drained, which on a slow
	// link outlasts writeWait and cuts the client mid-frame, so it sees
	// 1006 instead of the 1008 it is dropped with. 256 KiB still carries
	// 2.5 MB/s at a 100 ms round trip.
	sendBuffer = 256 << 10
	// pingWaitFactor: a client that sends nothing for this many ping
	// intervals (pongs included) is dropped.
	pingWaitFactor = 2
)

// featureFlagsReply is ComfyUI's answer to a client's feature_flags
// message (its server flags, Oct-2025), in Python's json.dumps format.
var featureFlagsReply = []byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}`)

// Hub is the client side of the WebSocket bridge. It implements
// prompts.Sink (the events of prompts submitted through comfygate) and
// prompts.Listener (broadcasts and fleet queue changes), and serves the
// client sockets.
type Hub struct {
	ws   config.WebSocket
	lim  config.Limits  // ws_max_frame_bytes, ws_messages_per_second, ws_message_burst
	pool *upstream.Pool // nil in tests of the hub alone
	m    *metrics.Metrics
	log  *slog.Logger

	upgrader websocket.FastHTTPUpgrader

	// writeWait and closeWait are the writeWait and closeWait constants;
	// tests shorten them.
	writeWait, closeWait time.Duration

	mu       sync.Mutex             // guards the fields below
	sessions map[string]*session    // by clientId: its live socket or its backlog
	live     map[*wsClient]struct{} // the registered socket of each clientId
	conns    map[*wsClient]struct{} // every open socket (live or replaced), for Close
	closed   bool
	queueN   int    // last fleet queue_remaining from QueueChanged
	queueGen uint64 // bumped by QueueChanged

	open atomic.Int64   // open sockets, for Clients
	wg   sync.WaitGroup // socket handlers and the sweeper
	stop chan struct{}  // closed by Close
}

// newHub returns the hub; it serves nothing until routed to ServeWS. pool
// may be nil (the first status message then reports the last QueueChanged).
func newHub(cfg *config.Config, pool *upstream.Pool, m *metrics.Metrics, log *slog.Logger) *Hub {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hub{
		ws:       cfg.WebSocket,
		lim:      cfg.Limits,
		pool:     pool,
		m:        m,
		log:      log,
		sessions: make(map[string]*session),
		live:     make(map[*wsClient]struct{}),
		conns:    make(map[*wsClient]struct{}),
		stop:     make(chan struct{}),

		writeWait: writeWait,
		closeWait: closeWait,
	}
	h.upgrader = websocket.FastHTTPUpgrader{
		// Origin policy is the HTTP side's (it runs before routing here);
		// the upgrader's default would reject every cross-origin browser.
		CheckOrigin:       func(*fasthttp.RequestCtx) bool { return true },
		EnableCompression: false, // see the comment at the top of this file
	}
	if h.ws.BacklogGrace > 0 {
		h.wg.Add(1)
		go h.sweepLoop()
	}
	return h
}

// ServeWS upgrades GET /ws and /api/ws. The query's clientId names the
// socket (minted as a uuid4 hex when absent, as ComfyUI does).
func (h *Hub) ServeWS(ctx *fasthttp.RequestCtx) {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		ctx.Error("Service Unavailable", fasthttp.StatusServiceUnavailable)
		return
	}
	// Copy before Upgrade: the callback runs after this handler returned,
	// when ctx may already serve another request.
	clientID := string(ctx.QueryArgs().Peek("clientId"))
	if clientID == "" {
		clientID = newClientID()
	}
	remote := ctx.RemoteAddr().String()
	err := h.upgrader.Upgrade(ctx, func(conn *websocket.Conn) {
		h.serveConn(conn, clientID, remote)
	})
	if err != nil && h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("websocket upgrade refused", "remote", remote, "err", err)
	}
}

// Close closes every client socket (close code 1001) and waits for their
// goroutines; sockets that do not finish the closing handshake within
// closeWait are cut. Later upgrades get 503.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	conns := make([]*wsClient, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.sessions = make(map[string]*session)
	h.live = make(map[*wsClient]struct{})
	h.mu.Unlock()
	close(h.stop)
	for _, c := range conns {
		c.stop(websocket.CloseGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(h.closeWait + time.Second):
	}
	for _, c := range conns {
		c.cut()
	}
	<-done
}

// Clients returns the number of open client sockets.
func (h *Hub) Clients() int { return int(h.open.Load()) }

// serveConn runs one client socket until it closes. It is the hijacked
// connection's goroutine, so it is the socket's reader.
func (h *Hub) serveConn(conn *websocket.Conn, clientID, remote string) {
	c := newClient(h, conn, clientID)
	gen, n := h.queueSnapshot()
	if h.pool != nil {
		n = h.pool.QueueRemaining()
	}
	replayed, ok := h.register(c, gen, n)
	if !ok {
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"),
			time.Now().Add(h.closeWait))
		_ = conn.Close()
		return
	}
	defer h.wg.Done()
	h.open.Add(1)
	h.m.AddWSClients(1)
	if replayed > 0 {
		h.m.IncBacklogReplayed(replayed)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("websocket client connected", "client_id", clientID, "remote", remote, "replayed", replayed)
	}

	boundSendBuffer(conn.NetConn())
	go c.writeLoop()
	c.readLoop()

	// Stop the writer before unregistering, so that everything it did not
	// write (queued, or failed mid-write) moves to the backlog.
	c.stop(0, "")
	<-c.writerDone
	h.unregister(c)
	_ = conn.Close()
	h.open.Add(-1)
	h.m.AddWSClients(-1)
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("websocket client disconnected", "client_id", clientID, "remote", remote)
	}
}

// newClientID mints a uuid4 as 32 hex digits, like ComfyUI's uuid.uuid4().hex.
func newClientID() string { return ids.Hex() }

// boundSendBuffer sets the send buffer of the TCP connection under conn
// (under fasthttp's hijacked conn and TLS) to sendBuffer.
func boundSendBuffer(conn net.Conn) {
	for range 4 {
		switch c := conn.(type) {
		case interface{ SetWriteBuffer(int) error }:
			_ = c.SetWriteBuffer(sendBuffer)
			return
		case interface{ UnsafeConn() net.Conn }: // fasthttp's hijacked conn
			conn = c.UnsafeConn()
		case interface{ NetConn() net.Conn }: // *tls.Conn
			conn = c.NetConn()
		default:
			return
		}
	}
}
