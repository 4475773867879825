package proxy

// Client suites against each target (targets_test.go): the web UI's
// requests, and SDK sessions.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
)

// clientDo sends one request through hc and returns its status and body.
func clientDo(t *testing.T, hc *http.Client, method, u string, header http.Header, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h // as the balancer passes it
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, u, err)
	}
	return resp.StatusCode, b
}

// statusQueue is the queue_remaining of a status message (ok false for
// another message).
func statusQueue(m wsMsg) (n int, ok bool) {
	if m.binary || m.typ() != "status" {
		return 0, false
	}
	var v struct {
		Data struct {
			Status struct {
				ExecInfo struct {
					QueueRemaining *int `json:"queue_remaining"`
				} `json:"exec_info"`
			} `json:"status"`
		} `json:"data"`
	}
	if json.Unmarshal(m.data, &v) != nil || v.Data.Status.ExecInfo.QueueRemaining == nil {
		return 0, false
	}
	return *v.Data.Status.ExecInfo.QueueRemaining, true
}

// TestWebUIFlow: what ComfyUI's web UI does (shared/comfyui-webui.md),
// against one gateway and two replicas behind a balancer. It loads
// (object_info, settings, queue, history, userdata), opens /ws without a
// clientId and, as after a reload, again with the sid it was given (from
// sessionStorage), negotiates previews, saves a setting and a workflow on
// one replica and reads them on the other, uploads an image on one
// replica and queues prompts that load it on the other (with its socket's
// sid as client_id), follows them on its socket to their end, with
// status messages that count the fleet's queue while they run and end
// at 0, and then finds them in /history and their images through /view on
// every replica.
func TestWebUIFlow(t *testing.T) {
	t.Parallel()
	forEachTarget(t, func(t *testing.T, kind targetKind) {
		ss := sims(t, 2, comfysim.Options{Delay: 150 * time.Millisecond})
		tg := startTarget(t, kind, func(opts func(*Options)) *gate {
			return startGateWith(t, addrsOf(ss), nil, opts)
		})
		front, hc := tg.front, tg.front.client()
		// The browser is on front's address: its requests carry that Host,
		// also those the test sends to one replica directly, and non-GET
		// requests that Origin.
		host := http.Header{"Host": {front.addr}}
		origin := http.Header{"Host": {front.addr}, "Origin": {"http://" + front.addr}}
		get := func(base, path string, want int) []byte {
			t.Helper()
			st, b := clientDo(t, hc, http.MethodGet, base+path, host, nil)
			if st != want {
				t.Fatalf("GET %s on %s: %d %s, want %d", path, base, st, b, want)
			}
			return b
		}
		send := func(method, base, path string, body []byte, want int) []byte {
			t.Helper()
			h := origin.Clone()
			h.Set("Content-Type", "application/json")
			st, b := clientDo(t, hc, method, base+path, h, body)
			if st != want {
				t.Fatalf("%s %s on %s: %d %s, want %d", method, path, base, st, b, want)
			}
			return b
		}

		// Load.
		var info map[string]json.RawMessage
		if err := json.Unmarshal(get(front.base, "/api/object_info", 200), &info); err != nil || info["LoadImage"] == nil || info["SaveImage"] == nil {
			t.Fatalf("object_info: %v, %d classes", err, len(info))
		}
		get(front.base, "/api/settings", 200)
		get(front.base, "/api/queue", 200)
		get(front.base, "/api/history?max_items=64", 200)
		get(front.base, "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true", 404)

		// The socket: a first connection without clientId, then a reload's
		// with the sid from sessionStorage.
		first := dialWS(t, "ws://"+front.addr+"/ws")
		sid := first.sid
		_ = first.conn.Close()
		ws := dialWS(t, front.wsURL(sid))
		if ws.sid != sid {
			t.Fatalf("the reload's socket got sid %s, want %s", ws.sid, sid)
		}
		ws.sendFlags(true)

		// A setting saved on A (the simulator keeps no settings: the
		// status only), a workflow saved on A read on B.
		send(http.MethodPost, tg.a().base, "/api/settings/Comfy.RClients.Test", []byte(`"on A"`), 200)
		get(tg.b().base, "/api/settings/Comfy.RClients.Test", 200)
		workflow := []byte(`{"nodes": [], "links": [], "version": 0.4}`)
		const wfPath = "/api/userdata/workflows%2Frclients.json"
		send(http.MethodPost, tg.a().base, wfPath+"?overwrite=true&full_info=true", workflow, 200)
		if b := get(tg.b().base, wfPath, 200); !bytes.Equal(b, workflow) {
			t.Errorf("the workflow on B: %s", b)
		}
		if b := get(tg.b().base, "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true", 200); !bytes.Contains(b, []byte("rclients.json")) {
			t.Errorf("the workflow list on B: %s", b)
		}

		// An image uploaded on B, loaded by prompts queued on A (split:
		// through the balancer, which sends them to A; the socket is on B).
		red := color.NRGBA{200, 10, 10, 255}
		name := webUIUpload(t, hc, tg.b().base, origin, fmt.Sprintf("rclients-%d.png", kind), pngOf(t, 4, 4, red))
		promptBase := tg.a().base
		if kind == split {
			promptBase = front.base
		}
		const n = 4
		var ids []string
		for i := range n {
			graph := map[string]any{
				"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": name}},
				"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
				"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": fmt.Sprintf("webui%d", i)}},
			}
			body, _ := json.Marshal(map[string]any{"client_id": sid, "prompt": graph,
				"extra_data": map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"nodes": []any{}}}}})
			var a promptAnswer
			if err := json.Unmarshal(send(http.MethodPost, promptBase, "/api/prompt", body, 200), &a); err != nil || a.PromptID == "" {
				t.Fatalf("POST /api/prompt: %v", err)
			}
			ids = append(ids, a.PromptID)
		}

		// The queue on either replica names them as the client knows them
		// (those that have not ended yet).
		for _, g := range tg.replicas {
			var q struct {
				Running [][]json.RawMessage `json:"queue_running"`
				Pending [][]json.RawMessage `json:"queue_pending"`
			}
			if err := json.Unmarshal(get(g.base, "/api/queue", 200), &q); err != nil {
				t.Fatalf("/api/queue on %s: %v", g.addr, err)
			}
			listed := 0
			for _, item := range append(q.Running, q.Pending...) {
				var id string
				if len(item) < 2 || json.Unmarshal(item[1], &id) != nil || !slices.Contains(ids, id) {
					t.Errorf("/api/queue on %s lists %s, not one of %v", g.addr, item, ids)
				}
				listed++
			}
			t.Logf("/api/queue on %s: %d of the %d prompts", g.addr, listed, n)
		}

		// The socket follows them to their end; status messages count the
		// fleet's queue.
		open := map[string]bool{}
		for _, id := range ids {
			open[id] = true
		}
		types := map[string][]string{}
		var queue []int
		for range 10000 {
			if len(open) == 0 {
				break
			}
			m := ws.read()
			if q, ok := statusQueue(m); ok {
				queue = append(queue, q)
				continue
			}
			if m.binary {
				continue
			}
			var ev struct {
				Type string `json:"type"`
				Data struct {
					PromptID string  `json:"prompt_id"`
					Node     *string `json:"node"`
				} `json:"data"`
			}
			if json.Unmarshal(m.data, &ev) != nil || ev.Data.PromptID == "" {
				continue
			}
			if !slices.Contains(ids, ev.Data.PromptID) {
				t.Fatalf("an event of a prompt not queued here: %s", m.data)
			}
			types[ev.Data.PromptID] = append(types[ev.Data.PromptID], ev.Type)
			if ev.Type == "executing" && ev.Data.Node == nil {
				delete(open, ev.Data.PromptID)
			}
		}
		for _, id := range ids {
			if ty := types[id]; len(ty) == 0 || ty[0] != "execution_start" || !slices.Contains(ty, "executed") || !slices.Contains(ty, "execution_success") {
				t.Errorf("prompt %s: events %v", id, ty)
			}
		}
		if slices.Max(append([]int{0}, queue...)) == 0 {
			t.Errorf("status messages while %d prompts ran: queue_remaining %v, never above 0", n, queue)
		}
		if len(queue) == 0 || queue[len(queue)-1] != 0 {
			// The last status may come after the last prompt's end.
			for range 100 {
				q, ok := statusQueue(ws.read())
				if ok {
					queue = append(queue, q)
					if q == 0 {
						break
					}
				}
			}
		}
		t.Logf("status queue_remaining on the socket: %v", queue)
		if queue[len(queue)-1] != 0 {
			t.Errorf("the last status message counts %d prompts, want 0", queue[len(queue)-1])
		}

		// Every replica: the queue is empty, the history lists the
		// prompts, and /view gives each one's image (the upload inverted).
		want := color.NRGBA{255 - 200, 255 - 10, 255 - 10, 255}
		for _, g := range tg.replicas {
			var q struct {
				Running, Pending []json.RawMessage
			}
			if err := json.Unmarshal(get(g.base, "/api/queue", 200), &struct {
				Running *[]json.RawMessage `json:"queue_running"`
				Pending *[]json.RawMessage `json:"queue_pending"`
			}{&q.Running, &q.Pending}); err != nil || len(q.Running)+len(q.Pending) != 0 {
				t.Errorf("/api/queue on %s: %v, %d running, %d pending", g.addr, err, len(q.Running), len(q.Pending))
			}
			var hist map[string]historyEntry
			if err := json.Unmarshal(get(g.base, "/api/history?max_items=64", 200), &hist); err != nil {
				t.Fatalf("/api/history on %s: %v", g.addr, err)
			}
			for _, id := range ids {
				e, ok := hist[id]
				if !ok || e.Status.StatusStr != "success" || len(e.Outputs["3"].Images) != 1 {
					t.Errorf("/api/history?max_items=64 on %s: prompt %s: %+v (of %d entries)", g.addr, id, e, len(hist))
					continue
				}
				ref := e.Outputs["3"].Images[0]
				qv := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}, "rand": {"0.5"}}
				img, err := png.Decode(bytes.NewReader(get(front.base, "/api/view?"+qv.Encode(), 200)))
				if err != nil {
					t.Errorf("/api/view of %s: %v", ref.Filename, err)
				} else if got := color.NRGBAModel.Convert(img.At(0, 0)).(color.NRGBA); got != want {
					t.Errorf("/api/view of %s: pixel %v, want the inverted upload %v", ref.Filename, got, want)
				}
			}
		}
		if ss[0].PromptsExecuted() == 0 || ss[1].PromptsExecuted() == 0 {
			t.Errorf("executed %d and %d: the upload was not used on both instances", ss[0].PromptsExecuted(), ss[1].PromptsExecuted())
		}

		// The workflow deleted on B is gone on A.
		send(http.MethodDelete, tg.b().base, wfPath, nil, 204)
		get(tg.a().base, wfPath, 404)
		tg.checkSpread(t)
	})
}

// webUIUpload posts an image as the web UI's upload does and returns the
// name ComfyUI gave it.
func webUIUpload(t *testing.T, hc *http.Client, base string, origin http.Header, name string, data []byte) string {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = mw.WriteField("type", "input")
	_ = mw.Close()
	h := origin.Clone()
	h.Set("Content-Type", mw.FormDataContentType())
	st, b := clientDo(t, hc, http.MethodPost, base+"/api/upload/image", h, buf.Bytes())
	var a struct {
		Name string `json:"name"`
	}
	if st != http.StatusOK || json.Unmarshal(b, &a) != nil || a.Name == "" {
		t.Fatalf("POST /api/upload/image on %s: %d %s", base, st, b)
	}
	return a.Name
}

// TestSDKSessions: clients as ComfyUI's SDKs behave (testkit.Session:
// one socket, prompts under ids the client chose, each end read from the
// socket), against one gateway and two replicas behind a balancer: every
// prompt ends on the socket, once, with nothing of another client's, and
// its /history and images are there.
func TestSDKSessions(t *testing.T) {
	t.Parallel()
	forEachTarget(t, func(t *testing.T, kind targetKind) {
		ss := sims(t, 2, comfysim.Options{Delay: 20 * time.Millisecond})
		tg := startTarget(t, kind, func(opts func(*Options)) *gate {
			return startGateWith(t, addrsOf(ss), nil, opts)
		})
		ctx, cancel := context.WithTimeout(context.Background(), gateTimeout)
		defer cancel()
		const clients, prompts = 4, 3
		errs := make(chan error, clients)
		for c := range clients {
			go func() {
				errs <- sdkSession(ctx, tg.front, c, prompts)
			}()
		}
		for range clients {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		tg.checkSpread(t)
	})
}

// sdkSession runs one session of TestSDKSessions.
func sdkSession(ctx context.Context, front *gate, c, prompts int) error {
	s, err := testkit.NewSession(ctx, front.base, fmt.Sprintf("sdk-%d-%d", c, time.Now().UnixNano()), front.client())
	if err != nil {
		return err
	}
	defer s.Close()
	var runs []*testkit.Run
	for i := range prompts {
		r := s.Submit(ctx, testkit.Workflow(0x010000*(c+1)+i, "sdk"))
		if r.Err != nil || r.Code != http.StatusOK {
			return fmt.Errorf("client %d: POST /prompt: %d %s %v", c, r.Code, r.Body, r.Err)
		}
		runs = append(runs, r)
	}
	var problems []string
	for _, r := range runs {
		res := r.Wait(ctx)
		if res.End != "execution_success" || res.Successes != 1 || res.ViaHistory {
			problems = append(problems, fmt.Sprintf("prompt %s: %+v", r.ID, res))
			continue
		}
		if err := r.CheckOutputs(ctx); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if f := s.Foreign(); len(f) > 0 {
		problems = append(problems, fmt.Sprintf("events of other clients' prompts %v", f))
	}
	if n := s.Reconnects(); n > 0 {
		problems = append(problems, fmt.Sprintf("%d reconnects", n))
	}
	if len(problems) > 0 {
		return fmt.Errorf("client %d: %s", c, strings.Join(problems, "; "))
	}
	return nil
}
