package comfysim

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/ids"

	"github.com/fasthttp/websocket"
)

// wsConn is one accepted WebSocket with its own writer goroutine, so the
// executor never blocks on a slow client.
type wsConn struct {
	c      *websocket.Conn
	sid    string
	out    chan wsFrame
	closed chan struct{}
	once   sync.Once
}

type wsFrame struct {
	binary bool
	data   []byte
}

// wsBuffer bounds what one slow socket may queue; past it the socket is
// dropped (ComfyUI would instead stall every client behind it).
const wsBuffer = 4096

func (c *wsConn) close() {
	c.once.Do(func() {
		close(c.closed)
		_ = c.c.Close()
	})
}

func (c *wsConn) enqueue(f wsFrame) {
	select {
	case <-c.closed:
	case c.out <- f:
	default:
		c.close()
	}
}

func (c *wsConn) writer() {
	for {
		select {
		case <-c.closed:
			return
		case f := <-c.out:
			typ := websocket.TextMessage
			if f.binary {
				typ = websocket.BinaryMessage
			}
			_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.c.WriteMessage(typ, f.data); err != nil {
				c.close()
				return
			}
		}
	}
}

type wsMessage struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// wsClients are an instance's WebSocket clients: the registered sockets
// by sid, every open connection, and the feature flags each client sent.
// Its instance's mu guards it.
type wsClients struct {
	sockets  map[string]*wsConn // sid -> registered socket
	conns    map[*wsConn]struct{}
	flags    map[string]map[string]any // sid -> client feature flags
	features bool                      // the version exchanges feature flags
}

// sendLocked is PromptServer.send_sync: nil target broadcasts to every
// registered socket; an unknown sid drops the message.
func (ws *wsClients) sendLocked(event string, data any, target *string) {
	f := wsFrame{data: pyJSON(wsMessage{event, data})}
	ws.deliverLocked(f, target)
}

func (ws *wsClients) sendBinaryLocked(frame []byte, target *string) {
	ws.deliverLocked(wsFrame{binary: true, data: frame}, target)
}

func (ws *wsClients) deliverLocked(f wsFrame, target *string) {
	if target == nil {
		for _, c := range ws.sockets {
			c.enqueue(f)
		}
		return
	}
	if c := ws.sockets[*target]; c != nil {
		c.enqueue(f)
	}
}

func (ws *wsClients) supportsPreviewMetadataLocked(sid *string) bool {
	if sid == nil || !ws.features {
		return false
	}
	v, _ := ws.flags[*sid]["supports_preview_metadata"].(bool)
	return v
}

// serverFeatures is feature_flags.get_server_features().
func (s *Server) serverFeatures() ordered {
	f := ordered{{"supports_preview_metadata", true}, {"max_upload_size", maxUploadSize}}
	if s.ver.is2026() {
		f = append(f,
			kv{"supports_model_type_tags", true},
			kv{"extension", ordered{{"manager", ordered{{"supports_v4", true}}}}},
			kv{"node_replacements", true},
			kv{"assets", false},
		)
	}
	return f
}

func newSID() string { return ids.Hex() }

// socketRoutes is /ws: it registers a client's socket with the instance's
// wsClients.
type socketRoutes struct{ *instance }

// handleWS is PromptServer.websocket_handler.
func (in socketRoutes) handleWS(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = newSID()
	}
	up := websocket.Upgrader{
		// The origin middleware already ran, as in ComfyUI.
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: true,
	}
	conn, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered 400
	}
	conn.SetReadLimit(4 << 20)
	c := &wsConn{c: conn, sid: sid, out: make(chan wsFrame, wsBuffer), closed: make(chan struct{})}

	in.mu.Lock()
	if in.ctx.Err() != nil {
		in.mu.Unlock()
		c.close()
		return
	}
	in.sockWG.Add(1)
	in.conns[c] = struct{}{}
	// Reusing a clientId replaces the old socket in the table; the old one is
	// not closed, it just stops receiving.
	in.sockets[sid] = c
	in.flags[sid] = map[string]any{}
	s := sid
	c.enqueue(wsFrame{data: pyJSON(wsMessage{"status", statusData{Status: queueStatus{ExecInfo: execInfo{QueueRemaining: in.queueRemainingLocked()}}, Sid: &s}})})
	// On reconnect of the running prompt's client, re-sync the current node.
	if in.clientID != nil && *in.clientID == sid && in.lastNode != "" {
		c.enqueue(wsFrame{data: pyJSON(wsMessage{"executing", map[string]string{"node": in.lastNode}})})
	}
	in.mu.Unlock()
	in.s.log.Debug("websocket connected", "sid", sid)

	go c.writer()
	defer in.sockWG.Done()
	defer func() {
		in.mu.Lock()
		// ComfyUI pops whatever is registered under the sid: if a newer socket
		// reused the id, it is silently unregistered (the close race).
		delete(in.sockets, sid)
		delete(in.flags, sid)
		delete(in.conns, c)
		in.mu.Unlock()
		c.close()
		in.s.log.Debug("websocket closed", "sid", sid)
	}()

	first := true
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			continue
		}
		var msg struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal(data, &msg); err != nil {
			continue // JSONDecodeError: first_message stays true, as in ComfyUI
		}
		if first && msg.Type == "feature_flags" && in.s.ver.hasFeatures() {
			in.mu.Lock()
			if msg.Data == nil {
				msg.Data = map[string]any{}
			}
			in.flags[sid] = msg.Data
			in.sendLocked("feature_flags", in.s.serverFeatures(), &s)
			in.mu.Unlock()
		}
		first = false
	}
}
