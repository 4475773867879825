package proxy

// The client side of the WebSocket bridge: ComfyUI's /ws and /api/ws.
//
// Every client socket is one wsClient with one reader goroutine and a
// bounded queue, written by a writer goroutine that runs only while there
// is something to write: an idle socket costs one goroutine, a 256-byte
// read buffer and no write buffer. Events reach the queue from the
// instances' reader goroutines through the Hub (ws_hub.go), which never
// blocks them: a full queue drops that client with close code 1008. While a clientId has no socket its events wait in a
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
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/ids"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/state"
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

	upgrader websocket.Upgrader

	// holds is the clientId owner table with isolation on, else nil
	// (ws_keys.go); set before serving.
	holds clientHolds
	// xr carries events between replicas (ws_replicas.go) when the state
	// is shared, else nil; set before serving.
	xr state.Events

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
	xgen     uint64 // the last follow's generation (ws_replicas.go)

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
	h.upgrader = websocket.Upgrader{
		// Written to the hijacked connection: a client that does not read
		// the 101 gets cut.
		HandshakeTimeout: h.writeWait,
		// Clients send next to nothing (feature flags once, pongs): the
		// smallest buffer that holds a control frame.
		ReadBufferSize: wsReadBuffer,
		// Write buffers are taken for a message and given back after it,
		// so an idle socket holds none.
		WriteBufferPool: &wsWriteBuffers,
		// Origin policy is the HTTP side's (it runs before routing here);
		// the upgrader's default would reject every cross-origin browser.
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: false, // see the comment at the top of this file
		// Handshakes are checked before the hijack (checkHandshake), where
		// errors are answered; none is left to answer after it.
		Error: func(http.ResponseWriter, *http.Request, int, error) {},
	}
	if h.ws.BacklogGrace > 0 {
		h.wg.Add(1)
		go h.sweepLoop()
	}
	return h
}

// ServeWS upgrades GET /ws and /api/ws. The query's clientId names the
// socket (minted as a uuid4 hex when absent, as ComfyUI does). With
// isolation, a socket of a non-admin key holds its clientId for its key
// while it lives (403 when another key has it; ws_keys.go).
//
// The server must keep hijacked connections (fasthttp.Server's
// KeepHijackedConns): the hijack handler only completes the handshake on
// the TCP connection itself and returns, and the socket's goroutine
// (serveConn) closes it. Run inside the hijack handler, as the websocket
// library's FastHTTPUpgrader does, every socket would hold the request's
// context and the server's request reader (limits.max_header_bytes) for
// as long as it is open.
func (h *Hub) ServeWS(ctx *fasthttp.RequestCtx) {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		ctx.Error("Service Unavailable", fasthttp.StatusServiceUnavailable)
		return
	}
	if status, reason := checkHandshake(&ctx.Request.Header); status != 0 {
		if h.log.Enabled(context.Background(), slog.LevelDebug) {
			h.log.Debug("websocket upgrade refused", "remote", clientRemote(ctx), "reason", reason)
		}
		ctx.Error(fasthttp.StatusMessage(status), status)
		ctx.Response.Header.Set("Sec-Websocket-Version", "13") // after Error, which resets the headers
		return
	}
	// Copy before Hijack: the callback runs after this handler returned,
	// when ctx may already serve another request.
	clientID := string(ctx.QueryArgs().Peek("clientId"))
	if clientID == "" {
		clientID = newClientID()
	}
	key, isolated := h.socketKey(ctx)
	if !h.holdClient(clientID, key, isolated) {
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", "this clientId belongs to another key")
		return
	}
	remote := clientRemote(ctx)
	req := handshakeRequest(&ctx.Request.Header)
	ctx.SetStatusCode(fasthttp.StatusSwitchingProtocols) // for the access log: the upgrader writes the answer
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		conn, pending := detachHijacked(c)
		ws, err := h.upgrader.Upgrade(&hijackedResponse{conn: conn, pending: pending}, req, nil)
		if err != nil { // the upgrader closed the connection
			if h.log.Enabled(context.Background(), slog.LevelDebug) {
				h.log.Debug("websocket handshake failed", "remote", remote, "err", err)
			}
			h.releaseClient(clientID, key, isolated)
			return
		}
		go func() {
			defer h.releaseClient(clientID, key, isolated)
			h.serveConn(ws, clientID, key, isolated, remote)
		}()
	})
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
	if h.xr == nil {
		h.sessions = make(map[string]*session)
		h.live = make(map[*wsClient]struct{})
	} // else each socket hands over as it closes (unregister)
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

// serveConn runs one client socket until it closes. Its goroutine is the
// socket's reader; a writer runs only while there is something to write
// (wsClient.writeLoop).
func (h *Hub) serveConn(conn *websocket.Conn, clientID, key string, isolated bool, remote string) {
	c := newClient(h, conn, clientID)
	c.key, c.isolated = key, isolated
	boundSendBuffer(conn.NetConn())
	gen, n := h.queueSnapshot()
	if h.pool != nil {
		n = h.pool.QueueRemaining()
	}
	replayed, ok := h.register(c, gen, n)
	if !ok {
		c.pinger.Stop()
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

	c.start()
	c.readLoop()

	// Stop the writer before unregistering, so that everything it did not
	// write (queued, or failed mid-write) moves to the backlog.
	c.stop(0, "")
	<-c.writerDone
	h.awaitLeave(h.unregister(c))
	_ = conn.Close()
	h.open.Add(-1)
	h.m.AddWSClients(-1)
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("websocket client disconnected", "client_id", clientID, "remote", remote)
	}
}

// wsReadBuffer is a client socket's read buffer: the smallest the
// websocket library takes (a control frame's 125 bytes), rounded up.
const wsReadBuffer = 256

// wsWriteBuffers lends write buffers to client sockets for one message at a
// time (websocket.Upgrader.WriteBufferPool).
var wsWriteBuffers sync.Pool

// checkHandshake checks a WebSocket opening handshake as the websocket
// library's upgrader does, so that its answer can be given before the
// connection is hijacked. It returns 0 for a good one, else the status to
// answer and why.
func checkHandshake(h *fasthttp.RequestHeader) (status int, reason string) {
	switch {
	case !h.IsGet():
		return fasthttp.StatusMethodNotAllowed, "request method is not GET"
	case !hasToken(h.Peek("Connection"), "upgrade"):
		return fasthttp.StatusBadRequest, "'upgrade' token not found in 'Connection' header"
	case !hasToken(h.Peek("Upgrade"), "websocket"):
		return fasthttp.StatusBadRequest, "'websocket' token not found in 'Upgrade' header"
	case !hasToken(h.Peek("Sec-Websocket-Version"), "13"):
		return fasthttp.StatusBadRequest, "unsupported version: 13 not found in 'Sec-Websocket-Version' header"
	}
	if k, err := base64.StdEncoding.DecodeString(string(h.Peek("Sec-Websocket-Key"))); err != nil || len(k) != 16 {
		return fasthttp.StatusBadRequest, "'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte in length"
	}
	return 0, ""
}

// hasToken reports whether the comma-separated list v holds token (ASCII
// case-insensitive).
func hasToken(v []byte, token string) bool {
	for t := range bytes.SplitSeq(v, []byte{','}) {
		if equalFoldASCII(bytes.TrimSpace(t), []byte(token)) {
			return true
		}
	}
	return false
}

// handshakeRequest copies what the upgrader reads of the handshake.
func handshakeRequest(h *fasthttp.RequestHeader) *http.Request {
	hdr := http.Header{}
	for _, k := range []string{"Connection", "Upgrade", "Sec-Websocket-Version", "Sec-Websocket-Key"} {
		hdr.Set(k, string(h.Peek(k)))
	}
	return &http.Request{Method: http.MethodGet, Header: hdr}
}

// aLongTimeAgo is a read deadline that has passed: a read fails at once.
var aLongTimeAgo = time.Unix(1, 0)

// detachHijacked returns the TCP connection under fasthttp's hijacked
// connection, which reads through the server's request reader, and the
// bytes that reader holds (a client must send nothing before the 101,
// RFC 6455 section 4.1, but one that does keeps its bytes). They are taken
// without blocking: with a read deadline in the past, reading the hijacked
// connection returns what the reader holds and then fails at once.
func detachHijacked(c net.Conn) (net.Conn, []byte) {
	u, ok := c.(interface{ UnsafeConn() net.Conn })
	if !ok {
		return c, nil
	}
	conn := u.UnsafeConn()
	if conn.SetReadDeadline(aLongTimeAgo) != nil {
		return c, nil
	}
	var pending []byte
	var buf [512]byte
	for range 1 << 12 { // bounded: the reader holds at most max_header_bytes
		n, err := c.Read(buf[:])
		pending = append(pending, buf[:n]...)
		if err != nil || n == 0 {
			break
		}
	}
	if conn.SetReadDeadline(time.Time{}) != nil {
		return c, nil
	}
	return conn, pending
}

// hijackedResponse is the http.ResponseWriter the upgrader completes the
// handshake on: it hands over the connection, with the bytes read ahead.
type hijackedResponse struct {
	conn    net.Conn
	pending []byte
	header  http.Header
}

func (r *hijackedResponse) Header() http.Header {
	if r.header == nil {
		r.header = http.Header{}
	}
	return r.header
}

func (r *hijackedResponse) Write([]byte) (int, error) { return 0, http.ErrHijacked }
func (r *hijackedResponse) WriteHeader(int)           {}

func (r *hijackedResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn := r.conn
	if len(r.pending) > 0 {
		conn = &readAheadConn{Conn: conn, pending: r.pending}
	}
	// Small, and empty: the upgrader uses its own buffers.
	return conn, bufio.NewReadWriter(bufio.NewReaderSize(conn, 16), bufio.NewWriterSize(conn, 16)), nil
}

// readAheadConn returns pending before reading the connection.
type readAheadConn struct {
	net.Conn
	pending []byte
}

func (c *readAheadConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn is the connection under c (to set socket options on it).
func (c *readAheadConn) NetConn() net.Conn { return c.Conn }

// newClientID mints a uuid4 as 32 hex digits, like ComfyUI's uuid.uuid4().hex.
func newClientID() string { return ids.Hex() }

// boundSendBuffer sets the send buffer of the TCP connection under conn
// (under fasthttp's hijacked conn, TLS and comfygate's listener wrappers)
// to sendBuffer. It caps what the kernel may queue for the client; the
// kernel allocates that memory only as data waits, so an idle socket
// costs nothing here.
func boundSendBuffer(conn net.Conn) {
	for range 8 {
		switch c := conn.(type) {
		case interface{ SetWriteBuffer(int) error }:
			_ = c.SetWriteBuffer(sendBuffer)
			return
		case interface{ UnsafeConn() net.Conn }: // fasthttp's hijacked conn
			conn = c.UnsafeConn()
		case interface{ NetConn() net.Conn }: // *tls.Conn, comfygate's wrappers
			conn = c.NetConn()
		default:
			return
		}
	}
}
