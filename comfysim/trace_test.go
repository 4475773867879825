package comfysim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// tracesDir holds the real ComfyUI captures: a copy of shared/comfyui-traces
// kept in testdata so that a clean clone runs the comparison on its own.
const tracesDir = "testdata/comfyui-traces"

type traceFile struct {
	Scenario   string                `json:"scenario"`
	Timeline   []traceHTTP           `json:"timeline"`
	Websockets map[string]*traceSock `json:"websockets"`
}

type traceHTTP struct {
	TMS     float64 `json:"t_ms"`
	Label   *string `json:"label"`
	Request struct {
		Method string          `json:"method"`
		Path   string          `json:"path"`
		Body   json.RawMessage `json:"body"`
	} `json:"request"`
	Response struct {
		Status     int               `json:"status"`
		Headers    map[string]string `json:"headers"`
		Body       json.RawMessage   `json:"body"`
		BodyText   *string           `json:"body_text"`
		BodyBinary *struct {
			Length int `json:"length"`
		} `json:"body_binary"`
	} `json:"response"`
}

type traceSock struct {
	URLPath  string  `json:"url_path"`
	ClientID *string `json:"client_id"`
	OpenedAt float64 `json:"opened_at_ms"`
	ClosedAt float64 `json:"closed_by_client_at_ms"`
	Sent     []struct {
		TMS  float64        `json:"t_ms"`
		JSON map[string]any `json:"json"`
	} `json:"sent"`
	Messages []traceMsg `json:"messages"`
}

type traceMsg struct {
	TMS        float64         `json:"t_ms"`
	Kind       string          `json:"kind"`
	JSON       json.RawMessage `json:"json"`
	EventType  int             `json:"event_type"`
	ImageType  *int            `json:"image_type"`
	Metadata   map[string]any  `json:"metadata"`
	ImageMagic string          `json:"image_magic_hex"`
}

// TestTraceReplay replays every capture in shared/comfyui-traces against one
// simulator, in file order (they were captured from one ComfyUI instance in
// that order, so queue numbers and file counters line up), and compares:
//
//   - HTTP: status code, Content-Type, presence of Content-Disposition, and
//     the JSON body's shape (field names, nesting, list lengths of non-scalar
//     lists, JSON kinds; null matches anything) plus the values of
//     deterministic fields (see valueKeys).
//   - WebSocket, per socket: the exact sequence of non-status message types
//     and binary event types, each message's shape and deterministic values;
//     status messages must match in number and queue_remaining sequence, but
//     their position among execution messages is not compared (it depends on
//     when the HTTP request lands, in ComfyUI as here), except that the first
//     message is the status with sid.
//
// Ids (prompt ids, sids), timestamps, tracebacks and sizes are not compared.
// /object_info is compared only for the classes both servers implement
// (KSampler, CheckpointLoaderSimple, CLIPTextEncode are not simulated).
func TestTraceReplay(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(tracesDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no traces at %s: %v", tracesDir, err)
	}
	sort.Strings(files)
	// The d trace interrupts a running node: nodes must take long enough for
	// the interrupt to land mid-node, which the replay makes deterministic by
	// waiting for the same messages the real client had seen.
	sim := startForTest(t, Options{Delay: 250 * time.Millisecond})
	second := startForTest(t, Options{})
	ids := map[string]string{} // trace prompt id -> sim prompt id
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var tr traceFile
		if err := json.Unmarshal(data, &tr); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		t.Run(tr.Scenario, func(t *testing.T) {
			replay(t, &tr, sim, second, ids)
		})
	}
}

type replaySock struct {
	name  string
	tr    *traceSock
	ws    *testWS
	open  bool
	close bool
}

func replay(t *testing.T, tr *traceFile, sim, second *Server, ids map[string]string) {
	names := make([]string, 0, len(tr.Websockets))
	for n := range tr.Websockets {
		names = append(names, n)
	}
	sort.Strings(names)
	var socks []*replaySock
	for _, n := range names {
		socks = append(socks, &replaySock{name: n, tr: tr.Websockets[n]})
	}
	// expectBefore waits until every open socket holds as many messages as
	// its real counterpart had received before time tms.
	expectBefore := func(tms float64) {
		for _, s := range socks {
			if !s.open || s.close {
				continue
			}
			n := 0
			for _, m := range s.tr.Messages {
				if m.TMS < tms {
					n++
				}
			}
			s.ws.waitFor(fmt.Sprintf("%s: %d messages before t=%.1f", s.name, n, tms), func(ms []wsMsg) bool { return len(ms) >= n })
		}
	}
	type event struct {
		t  float64
		do func()
	}
	var events []event
	for _, s := range socks {
		s := s
		events = append(events, event{s.tr.OpenedAt, func() {
			expectBefore(s.tr.OpenedAt)
			cid := ""
			if s.tr.ClientID != nil {
				cid = *s.tr.ClientID
			}
			s.ws = dialWS(t, sim.URL(), cid)
			s.open = true
		}})
		for _, m := range s.tr.Sent {
			m := m
			events = append(events, event{m.TMS, func() { s.ws.send(m.JSON) }})
		}
		if s.tr.ClosedAt > 0 {
			events = append(events, event{s.tr.ClosedAt, func() {
				finishSock(t, s)
			}})
		}
	}
	for i := range tr.Timeline {
		h := &tr.Timeline[i]
		events = append(events, event{h.TMS, func() {
			target := sim
			if h.Label != nil && strings.Contains(*h.Label, "second instance") {
				target = second
			} else {
				expectBefore(h.TMS)
			}
			replayHTTP(t, h, target, ids)
		}})
	}
	sort.SliceStable(events, func(a, b int) bool { return events[a].t < events[b].t })
	for _, e := range events {
		e.do()
	}
	for _, s := range socks {
		if s.open && !s.close {
			finishSock(t, s)
		}
	}
}

// finishSock waits for the socket's full message count, compares, closes.
func finishSock(t *testing.T, s *replaySock) {
	t.Helper()
	want := s.tr.Messages
	s.ws.waitFor(fmt.Sprintf("%s: all %d messages", s.name, len(want)), func(ms []wsMsg) bool { return len(ms) >= len(want) })
	// A round trip through the server flushes anything still in flight.
	s.ws.close()
	got := s.ws.snapshot()
	s.close = true
	compareSock(t, s.name, want, got)
}

func compareSock(t *testing.T, name string, want []traceMsg, got []wsMsg) {
	t.Helper()
	wantStatus, gotStatus := []any{}, []any{}
	var wantSeq, gotSeq []string
	var wantItems, gotItems []any
	for i, m := range want {
		if m.Kind == "binary" {
			wantSeq = append(wantSeq, fmt.Sprintf("binary:%d", m.EventType))
			wantItems = append(wantItems, binaryShape(m.EventType, m.Metadata, m.ImageType))
			continue
		}
		var v map[string]any
		_ = json.Unmarshal(m.JSON, &v)
		typ, _ := v["type"].(string)
		if typ == "status" {
			if i == 0 {
				wantSeq = append(wantSeq, "status(sid)")
				wantItems = append(wantItems, v)
				continue
			}
			wantStatus = append(wantStatus, queueRemaining(v))
			continue
		}
		wantSeq = append(wantSeq, typ)
		wantItems = append(wantItems, v)
	}
	for i, m := range got {
		if m.binary {
			et := int(binary.BigEndian.Uint32(m.raw[:4]))
			gotSeq = append(gotSeq, fmt.Sprintf("binary:%d", et))
			var meta map[string]any
			var it *int
			switch et {
			case 1:
				x := int(binary.BigEndian.Uint32(m.raw[4:8]))
				it = &x
			case 4:
				n := binary.BigEndian.Uint32(m.raw[4:8])
				_ = json.Unmarshal(m.raw[8:8+n], &meta)
			}
			gotItems = append(gotItems, binaryShape(et, meta, it))
			continue
		}
		var v map[string]any
		_ = json.Unmarshal(m.raw, &v)
		if m.typ == "status" {
			if i == 0 {
				gotSeq = append(gotSeq, "status(sid)")
				gotItems = append(gotItems, v)
				continue
			}
			gotStatus = append(gotStatus, queueRemaining(v))
			continue
		}
		gotSeq = append(gotSeq, m.typ)
		gotItems = append(gotItems, v)
	}
	if !reflect.DeepEqual(wantSeq, gotSeq) {
		t.Errorf("ws %s: message order\n real: %v\n  sim: %v", name, wantSeq, gotSeq)
		return
	}
	if !reflect.DeepEqual(wantStatus, gotStatus) {
		t.Errorf("ws %s: status queue_remaining sequence\n real: %v\n  sim: %v", name, wantStatus, gotStatus)
	}
	for i := range wantItems {
		if diffs := shapeDiff("", wantItems[i], gotItems[i]); len(diffs) > 0 {
			t.Errorf("ws %s: message %d (%s) differs:\n  %s", name, i, wantSeq[i], strings.Join(diffs, "\n  "))
		}
	}
}

func queueRemaining(v map[string]any) any {
	d, _ := v["data"].(map[string]any)
	st, _ := d["status"].(map[string]any)
	ei, _ := st["exec_info"].(map[string]any)
	return ei["queue_remaining"]
}

func binaryShape(eventType int, meta map[string]any, imageType *int) any {
	out := map[string]any{"event_type": float64(eventType)}
	if meta != nil {
		m := map[string]any{}
		for k, v := range meta {
			m[k] = v
		}
		out["metadata"] = m
	}
	if imageType != nil {
		out["image_type"] = float64(*imageType)
	}
	return out
}

// valueKeys are fields whose values are deterministic and compared too.
var valueKeys = map[string]bool{
	"type": true, "number": true, "status_str": true, "completed": true, "node": true,
	"display_node": true, "state": true, "value": true, "max": true, "filename": true,
	"subfolder": true, "name": true, "node_type": true, "node_id": true, "executed": true,
	"dependent_outputs": true, "class_type": true, "message": true, "details": true,
	"input_name": true, "received_value": true, "event_type": true, "image_type": true,
	"display_node_id": true, "real_node_id": true, "parent_node_id": true,
	"queue_remaining": true, "output_node": true, "category": true, "display_name": true,
	"input_order": true, "output": true, "output_name": true,
}

// ignoredValueKeys are never compared by value, wherever they are.
var ignoredValueKeys = map[string]bool{"prompt_id": true, "sid": true, "timestamp": true, "traceback": true}

// shapeDiff compares a real JSON value with the simulator's.
func shapeDiff(path string, want, got any) []string { return shapeDiffOpt(path, want, got, true) }

// shapeDiffOpt compares shapes, and the values of valueKeys when values is set.
func shapeDiffOpt(path string, want, got any, values bool) []string {
	key := path
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		key = path[i+1:]
	}
	if want == nil || ignoredValueKeys[key] {
		return nil
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: real is an object, sim %T", path, got)}
		}
		var out []string
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s: missing in sim", path, k))
				continue
			}
			out = append(out, shapeDiffOpt(path+"."+k, wv, gv, values)...)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				out = append(out, fmt.Sprintf("%s.%s: only in sim", path, k))
			}
		}
		sort.Strings(out)
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: real is a list, sim %T", path, got)}
		}
		if values && valueKeys[key] && !reflect.DeepEqual(w, g) {
			return []string{fmt.Sprintf("%s: real %v, sim %v", path, w, g)}
		}
		if scalars(w) && scalars(g) {
			return nil
		}
		if len(w) != len(g) {
			return []string{fmt.Sprintf("%s: real has %d items, sim %d", path, len(w), len(g))}
		}
		var out []string
		for i := range w {
			out = append(out, shapeDiffOpt(fmt.Sprintf("%s[%d]", path, i), w[i], g[i], values)...)
		}
		return out
	default:
		if got == nil {
			return nil
		}
		if reflect.TypeOf(want) != reflect.TypeOf(got) {
			return []string{fmt.Sprintf("%s: real %T (%v), sim %T (%v)", path, want, want, got, got)}
		}
		if values && valueKeys[key] && !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: real %v, sim %v", path, want, got)}
		}
		return nil
	}
}

func scalars(l []any) bool {
	for _, x := range l {
		switch x.(type) {
		case map[string]any, []any:
			return false
		}
	}
	return true
}

func replayHTTP(t *testing.T, h *traceHTTP, sim *Server, ids map[string]string) {
	t.Helper()
	label := h.Request.Method + " " + h.Request.Path
	if h.Label != nil {
		label += " (" + *h.Label + ")"
	}
	path := mapIDs(h.Request.Path, ids)
	var body []byte
	hdr := map[string]string{}
	var probe map[string]json.RawMessage
	_ = json.Unmarshal(h.Request.Body, &probe)
	switch {
	case len(h.Request.Body) == 0 || string(h.Request.Body) == "null":
	case probe["omitted"] != nil:
		var o struct {
			Length int `json:"length"`
		}
		_ = json.Unmarshal(h.Request.Body, &o)
		body = []byte(strings.Repeat("{", o.Length)) // invalid JSON of that length
	case probe["multipart_fields"] != nil:
		var mp struct {
			Fields map[string]string `json:"multipart_fields"`
			File   struct {
				Field, Filename, ContentType string
			} `json:"file"`
		}
		_ = json.Unmarshal(h.Request.Body, &mp)
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for k, v := range mp.Fields {
			_ = mw.WriteField(k, v)
		}
		fw, _ := mw.CreateFormFile(mp.File.Field, mp.File.Filename)
		img := image.NewNRGBA(image.Rect(0, 0, 64, 48))
		for i := range img.Pix {
			img.Pix[i] = uint8(i * 7)
		}
		img.SetNRGBA(0, 0, color.NRGBA{1, 2, 3, 255})
		_, _ = fw.Write(pngBytes(t, img))
		_ = mw.Close()
		body = buf.Bytes()
		hdr["Content-Type"] = mw.FormDataContentType()
	default:
		body = []byte(mapIDs(string(h.Request.Body), ids))
		hdr["Content-Type"] = "application/json"
	}
	req, err := http.NewRequest(h.Request.Method, sim.URL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	gotBody, _ := readAll(resp)
	if resp.StatusCode != h.Response.Status {
		t.Errorf("%s: status %d, real %d (body %q)", label, resp.StatusCode, h.Response.Status, gotBody)
		return
	}
	if want := h.Response.Headers["Content-Type"]; want != "" && resp.Header.Get("Content-Type") != want {
		t.Errorf("%s: Content-Type %q, real %q", label, resp.Header.Get("Content-Type"), want)
	}
	if _, want := h.Response.Headers["Content-Disposition"]; want != (resp.Header.Get("Content-Disposition") != "") {
		t.Errorf("%s: Content-Disposition %q, real present=%v", label, resp.Header.Get("Content-Disposition"), want)
	}
	switch {
	case h.Response.BodyText != nil:
		if !strings.HasPrefix(h.Response.Headers["Content-Type"], "text/html") && string(gotBody) != *h.Response.BodyText {
			t.Errorf("%s: body %q, real %q", label, gotBody, *h.Response.BodyText)
		}
	case h.Response.BodyBinary != nil:
		if (h.Response.BodyBinary.Length == 0) != (len(gotBody) == 0) {
			t.Errorf("%s: body length %d, real %d", label, len(gotBody), h.Response.BodyBinary.Length)
		}
	case len(h.Response.Body) > 0:
		var want, got any
		_ = json.Unmarshal(h.Response.Body, &want)
		if err := json.Unmarshal(gotBody, &got); err != nil {
			t.Errorf("%s: sim body is not JSON: %q", label, gotBody)
			return
		}
		// Learn the simulator's ids for the real server's minted ones.
		if wm, ok := want.(map[string]any); ok {
			if gm, ok := got.(map[string]any); ok {
				if wid, ok := wm["prompt_id"].(string); ok {
					if gid, ok := gm["prompt_id"].(string); ok && gid != wid {
						ids[wid] = gid
					}
				}
			}
		}
		got = unmapKeys(got, ids)
		if strings.HasSuffix(h.Request.Path, "/object_info") {
			wm, gm := want.(map[string]any), got.(map[string]any)
			for k := range wm {
				if _, ok := gm[k]; !ok {
					delete(wm, k) // a class the simulator does not implement
				}
			}
			for k := range gm {
				if _, ok := wm[k]; !ok {
					delete(gm, k) // the capture is truncated
				}
			}
		}
		// system_stats describes the host: the simulator reports a GPU where
		// the capture machine had only a CPU, so only its shape is compared.
		values := !strings.HasSuffix(h.Request.Path, "/system_stats")
		if diffs := shapeDiffOpt("", want, got, values); len(diffs) > 0 {
			t.Errorf("%s: body differs:\n  %s", label, strings.Join(diffs, "\n  "))
		}
	}
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err := buf.ReadFrom(resp.Body)
	return buf.Bytes(), err
}

func mapIDs(s string, ids map[string]string) string {
	for real, sim := range ids {
		s = strings.ReplaceAll(s, real, sim)
	}
	return s
}

// unmapKeys renames object keys that are simulator prompt ids back to the
// real ones, so history bodies compare.
func unmapKeys(v any, ids map[string]string) any {
	rev := map[string]string{}
	for r, s := range ids {
		rev[s] = r
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			out := make(map[string]any, len(x))
			for k, e := range x {
				if r, ok := rev[k]; ok {
					k = r
				}
				out[k] = walk(e)
			}
			return out
		case []any:
			for i := range x {
				x[i] = walk(x[i])
			}
			return x
		}
		return v
	}
	return walk(v)
}
