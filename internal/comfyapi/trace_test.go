package comfyapi

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// The real ComfyUI 0.3.65 captures (see their README); the simulator keeps
// the copy.
const traceDir = "../../comfysim/testdata/comfyui-traces"

type trace struct {
	Timeline []struct {
		Label   string `json:"label"`
		Request struct {
			Method string          `json:"method"`
			Path   string          `json:"path"`
			Body   json.RawMessage `json:"body"`
		} `json:"request"`
		Response struct {
			Status int             `json:"status"`
			Body   json.RawMessage `json:"body"`
		} `json:"response"`
	} `json:"timeline"`
	Websockets map[string]struct {
		Messages []struct {
			Kind           string          `json:"kind"`
			JSON           json.RawMessage `json:"json"`
			Length         int             `json:"length"`
			HeaderHex      string          `json:"header_hex"`
			EventType      uint32          `json:"event_type"`
			MetadataLength int             `json:"metadata_length"`
			Metadata       json.RawMessage `json:"metadata"`
			ImageMagicHex  string          `json:"image_magic_hex"`
			ImageBytes     int             `json:"image_bytes"`
		} `json:"messages"`
	} `json:"websockets"`
}

func loadTraces(t *testing.T) map[string]trace {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(traceDir, "*.json"))
	if err != nil || len(files) < 8 {
		t.Fatalf("traces: %v (%d files)", err, len(files))
	}
	out := map[string]trace{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var tr trace
		if err := json.Unmarshal(b, &tr); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = tr
	}
	return out
}

// pyJSON re-encodes a captured JSON value with Python's separators and its
// key order, the bytes ComfyUI sent.
func pyJSON(t *testing.T, raw json.RawMessage) []byte {
	t.Helper()
	ms, err := jsonobj.Members(raw)
	if err != nil {
		t.Fatalf("metadata %s: %v", raw, err)
	}
	for i := range ms {
		if s, ok := String(ms[i].Val); ok {
			ms[i].Val = jsonobj.Quote(s)
		}
	}
	return jsonobj.Append(nil, ms)
}

func TestTracesHTTP(t *testing.T) {
	t.Parallel()
	for name, tr := range loadTraces(t) {
		for _, e := range tr.Timeline {
			req, resp := e.Request, e.Response
			path, _, _ := strings.Cut(req.Path, "?")
			where := name + ": " + req.Method + " " + req.Path
			switch {
			case req.Method == "POST" && path == "/prompt" && resp.Status == 200:
				a, err := ParsePromptAnswer(resp.Body)
				if err != nil || a.ID() == "" {
					t.Errorf("%s: answer %s: %v", where, resp.Body, err)
					continue
				}
				if _, ok := a.QueueNumber(); !ok {
					t.Errorf("%s: no number in %s", where, resp.Body)
				}
				r, err := ParsePromptRequest(req.Body)
				if err != nil {
					t.Fatalf("%s: %v", where, err)
				}
				if pid := ClientPromptID(r.PromptID); pid != "" && pid != a.ID() {
					t.Errorf("%s: sent prompt_id %s, answer names %q", where, r.PromptID, a.ID())
				}
			case req.Method == "GET" && path == "/queue":
				q, err := ParseQueue(resp.Body)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				for _, raw := range append(q.Running, q.Pending...) {
					if _, ok := ItemID(raw); !ok {
						t.Errorf("%s: item without a string id %s", where, raw)
					}
				}
				for _, raw := range append(q.Running, q.Pending...) {
					it, _ := ParseQueueItem(raw)
					if _, ok := it.Number(); !ok || len(it) < 5 {
						t.Errorf("%s: item %s", where, raw)
					}
				}
			case req.Method == "GET" && strings.HasPrefix(path, "/history"):
				h, err := ParseHistory(resp.Body)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				for id, raw := range h {
					e, err := ParseHistoryEntry(raw)
					if err != nil {
						t.Fatalf("%s: %v", where, err)
					}
					if got, ok := ItemID(e.Prompt); !ok || got != id {
						t.Errorf("%s: entry %s holds prompt %q", where, id, got)
					}
					m, ok := e.Status.Terminal()
					if !ok {
						t.Errorf("%s: entry %s has no terminal message", where, id)
					}
					want := map[string]Outcome{"success": OutcomeSuccess, "error": OutcomeError}[e.Status.StatusStr]
					got := e.Outcome()
					if got == OutcomeInterrupted && e.Status.StatusStr == "error" && m.Type == TypeExecutionInterrupted {
						continue // ComfyUI stores an interrupt as "error"
					}
					if got != want {
						t.Errorf("%s: entry %s outcome %v, status_str %q", where, id, got, e.Status.StatusStr)
					}
				}
			case req.Method == "GET" && strings.HasSuffix(path, "/system_stats"):
				sv := SystemStatsVersion(resp.Body)
				v, ok := ParseVersion(sv)
				if !ok || v != (Version{0, 3, 65}) || !SupportsClientPromptID(sv) || !AtLeast(sv, VersionFeatures) {
					t.Errorf("%s: version %q read as %v %v", where, sv, v, ok)
				}
			}
		}
	}
}

func TestTracesWebSocket(t *testing.T) {
	t.Parallel()
	var texts, binaries, type4 int
	for name, tr := range loadTraces(t) {
		for wsName, ws := range tr.Websockets {
			ends := map[string]int{}
			terminals := map[string]int{}
			for i, m := range ws.Messages {
				where := name + "/" + wsName
				switch m.Kind {
				case "text":
					texts++
					msg, err := ParseWSText(m.JSON)
					if err != nil {
						t.Errorf("%s #%d: %v", where, i, err)
						continue
					}
					var want struct {
						Type string `json:"type"`
						Data struct {
							PromptID *string `json:"prompt_id"`
						} `json:"data"`
					}
					_ = json.Unmarshal(m.JSON, &want)
					if msg.Type != want.Type || (want.Data.PromptID != nil) != msg.HasPromptID() ||
						(want.Data.PromptID != nil && *want.Data.PromptID != msg.PromptID()) {
						t.Errorf("%s #%d: read %q %q from %s", where, i, msg.Type, msg.PromptID(), m.JSON)
					}
					if msg.Type == TypeStatus {
						if _, ok := msg.QueueRemaining(); !ok {
							t.Errorf("%s #%d: status without queue_remaining: %s", where, i, m.JSON)
						}
					}
					if msg.Type == TypeExecuting && msg.NodeNull() {
						ends[msg.PromptID()]++
					}
					if msg.Terminal() {
						terminals[msg.PromptID()]++
					}
				case "binary":
					binaries++
					head, err := hex.DecodeString(m.HeaderHex)
					if err != nil || len(head) != 8 {
						t.Fatalf("%s #%d: header %q", where, i, m.HeaderHex)
					}
					typ, ok := BinaryType(head)
					if !ok || typ != m.EventType {
						t.Errorf("%s #%d: type %d, want %d", where, i, typ, m.EventType)
					}
					if typ != BinPreviewImageWithMetadata {
						continue
					}
					type4++
					meta := pyJSON(t, m.Metadata)
					if len(meta) != m.MetadataLength || binary.BigEndian.Uint32(head[4:]) != uint32(len(meta)) {
						t.Fatalf("%s #%d: rebuilt metadata is %d bytes, captured %d: %s", where, i, len(meta), m.MetadataLength, meta)
					}
					magic, _ := hex.DecodeString(m.ImageMagicHex)
					img := append(magic, make([]byte, m.ImageBytes-len(magic))...)
					frame := append(append(append([]byte{}, head...), meta...), img...)
					if len(frame) != m.Length {
						t.Fatalf("%s #%d: rebuilt frame %d bytes, captured %d", where, i, len(frame), m.Length)
					}
					var want PreviewMetadata
					_ = json.Unmarshal(m.Metadata, &want)
					md, ok := ParsePreviewMetadata(frame)
					if !ok || md != want {
						t.Errorf("%s #%d: metadata %+v, want %+v", where, i, md, want)
					}
					out, ok := RewritePreviewPromptID(frame, want.PromptID, "client-"+want.PromptID)
					if md2, _ := ParsePreviewMetadata(out); !ok || md2.PromptID != "client-"+want.PromptID || md2.NodeID != want.NodeID {
						t.Errorf("%s #%d: rewritten metadata %+v", where, i, md2)
					}
					h1, img1, ok := PreviewToType1(frame)
					if !ok || binary.BigEndian.Uint32(h1[4:]) != FormatPNG || len(img1) != m.ImageBytes {
						t.Errorf("%s #%d: type 1 %x with %d bytes", where, i, h1, len(img1))
					}
				}
			}
			// Every run this socket saw end has one terminal message and
			// one executing-null (a reused prompt_id runs again: e-).
			for id, n := range ends {
				if id == "" || n != terminals[id] {
					t.Errorf("%s/%s: prompt %q: %d executing-null, %d terminal", name, wsName, id, n, terminals[id])
				}
			}
		}
	}
	if texts == 0 || binaries == 0 || type4 == 0 {
		t.Errorf("traces read %d text, %d binary (%d type 4) messages", texts, binaries, type4)
	}
}
