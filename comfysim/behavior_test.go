package comfysim

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/ids"
)

func emptySave(color int, prefix string) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": prefix}},
	}
}

// slowPrompt has two image nodes that each take Options.Delay.
func slowPrompt(color int) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"2", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "slow"}},
	}
}

func executingNode(id, node string) func([]wsMsg) bool {
	return func(ms []wsMsg) bool {
		for _, m := range ms {
			if m.typ == "executing" && m.data["node"] == node && m.data["prompt_id"] == id {
				return true
			}
		}
		return false
	}
}

func TestKillRestart(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: time.Minute})
	addr := s.Addr()
	ws := dialWS(t, s.URL(), "k")
	id := queuePrompt(t, s.URL(), map[string]any{"client_id": "k", "prompt": slowPrompt(1)})
	ws.waitFor("node 2 running", executingNode(id, "2"))
	s.Kill()
	select {
	case <-ws.done:
	case <-time.After(testTimeout):
		t.Fatal("websocket still open after Kill")
	}
	if _, err := http.Get(s.URL() + "/queue"); err == nil {
		t.Fatal("HTTP still answered after Kill")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	var q queueResponse
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Running)+len(q.Pending) != 0 {
		t.Fatalf("queue survived the restart: %+v", q)
	}
	var h map[string]any
	getJSON(t, s.URL()+"/history/"+id, &h)
	if len(h) != 0 {
		t.Fatalf("history survived the restart: %v", h)
	}
	code, body := postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": emptySave(2, "after")})
	if code != 200 || !strings.Contains(string(body), `"number": 0`) {
		t.Fatalf("after restart: %d %s", code, body)
	}
	if s.PromptsExecuted() > 1 {
		t.Fatalf("PromptsExecuted = %d", s.PromptsExecuted())
	}
}

func TestHangAndFail500(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	s.SetHang(true)
	short := &http.Client{Timeout: 200 * time.Millisecond}
	if _, err := short.Get(s.URL() + "/queue"); err == nil {
		t.Fatal("request answered while hanging")
	}
	done := make(chan int, 1)
	go func() {
		resp, err := httpClient.Get(s.URL() + "/prompt")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	s.SetHang(false)
	if code := <-done; code != 200 {
		t.Fatalf("after SetHang(false): %d", code)
	}
	s.SetFail500(true)
	code, _, body := doReq(t, "GET", s.URL()+"/system_stats", nil, nil)
	if code != 500 || string(body) != body500 {
		t.Fatalf("fail500: %d %q", code, body)
	}
	s.SetFail500(false)
	if code, _, _ := doReq(t, "GET", s.URL()+"/system_stats", nil, nil); code != 200 {
		t.Fatalf("after fail500 off: %d", code)
	}
}

// TestPaused: while paused the running prompt finishes and nothing else
// starts, so the queue can be looked at without racing the worker.
func TestPaused(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: 20 * time.Millisecond})
	ws := dialWS(t, s.URL(), "p")
	running := queuePrompt(t, s.URL(), map[string]any{"client_id": "p", "prompt": slowPrompt(1)})
	ws.waitFor("node 2 running", executingNode(running, "2"))
	s.SetPaused(true)
	p2 := queuePrompt(t, s.URL(), map[string]any{"client_id": "p", "prompt": slowPrompt(2)})
	p3 := queuePrompt(t, s.URL(), map[string]any{"client_id": "p", "prompt": slowPrompt(3)})
	ws.waitDone(running)
	var q queueResponse
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Running) != 0 || len(q.Pending) != 2 || s.PromptsExecuted() != 1 {
		t.Fatalf("paused: %d running, %d pending, %d executed; want 0, 2, 1", len(q.Running), len(q.Pending), s.PromptsExecuted())
	}
	s.SetPaused(false)
	ws.waitDone(p2)
	ws.waitDone(p3)
}

// TestFrozen: a frozen process finishes nothing (not the running node, not
// the queue) and carries on after the thaw; Runs counts each prompt's
// successful executions.
func TestFrozen(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: 20 * time.Millisecond, RecordRuns: true})
	ws := dialWS(t, s.URL(), "f")
	running := queuePrompt(t, s.URL(), map[string]any{"client_id": "f", "prompt": slowPrompt(1), "extra_data": map[string]any{"tag": "one"}})
	ws.waitFor("node 2 running", executingNode(running, "2"))
	s.SetFrozen(true)
	queued := queuePrompt(t, s.URL(), map[string]any{"client_id": "f", "prompt": slowPrompt(2)})
	// Ten node times pass: nothing may finish meanwhile.
	time.Sleep(200 * time.Millisecond)
	var q queueResponse
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Running) != 1 || len(q.Pending) != 1 || s.PromptsExecuted() != 0 || len(s.Runs()) != 0 {
		t.Fatalf("frozen: %d running, %d pending, %d executed, runs %v; want 1, 1, 0, none", len(q.Running), len(q.Pending), s.PromptsExecuted(), s.Runs())
	}
	s.SetFrozen(false)
	ws.waitDone(running)
	ws.waitDone(queued)
	if got := s.Runs(); len(got) != 2 || got[running] != 1 || got[queued] != 1 {
		t.Fatalf("runs = %v, want %s and %s once each", got, running, queued)
	}
	if got := s.RunsByExtra("tag"); len(got) != 1 || got["one"] != 1 {
		t.Fatalf("runs by extra_data.tag = %v, want one: 1", got)
	}
	if r, p := s.Queue(); r != 0 || p != 0 || !s.Up() {
		t.Fatalf("queue %d running, %d pending, up %v; want 0, 0, true", r, p, s.Up())
	}
}

func TestFailAfter(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{FailAfter: 1})
	queuePrompt(t, s.URL(), map[string]any{"prompt": emptySave(1, "fa")})
	short := &http.Client{Timeout: 200 * time.Millisecond}
	if _, err := short.Get(s.URL() + "/queue"); err == nil {
		t.Fatal("answered after FailAfter prompts")
	}
}

func TestOriginCheck(t *testing.T) {
	t.Parallel()
	strict := startForTest(t, Options{})
	cors := startForTest(t, Options{EnableCORSHeader: true})
	v2026 := startForTest(t, Options{Version: "0.38.0"})
	host := func(s *Server) string { return s.Addr() }
	for _, tc := range []struct {
		desc string
		s    *Server
		hdr  map[string]string
		want int
	}{
		{"same origin", strict, map[string]string{"Origin": "http://" + host(strict)}, 200},
		{"foreign origin", strict, map[string]string{"Origin": "https://evil.example"}, 403},
		{"localhost origin without port", strict, map[string]string{"Host": "localhost:1234", "Origin": "http://localhost"}, 200},
		{"non-loopback host is not checked", strict, map[string]string{"Host": "proxy.example", "Origin": "https://evil.example"}, 200},
		{"cors flag disables the check", cors, map[string]string{"Origin": "https://evil.example"}, 200},
		{"0.3.65 ignores Sec-Fetch-Site", strict, map[string]string{"Sec-Fetch-Site": "cross-site"}, 200},
		{"2026 refuses cross-site", v2026, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"2026 same-site", v2026, map[string]string{"Sec-Fetch-Site": "same-site"}, 200},
	} {
		code, hdr, body := doReq(t, "GET", tc.s.URL()+"/queue", nil, tc.hdr)
		if code != tc.want {
			t.Errorf("%s: %d, want %d", tc.desc, code, tc.want)
		}
		if code == 403 && len(body) != 0 {
			t.Errorf("%s: 403 with body %q", tc.desc, body)
		}
		if tc.s == cors && hdr.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s: no CORS header", tc.desc)
		}
	}
}

func TestVersions(t *testing.T) {
	t.Parallel()
	old := startForTest(t, Options{Version: "0.3.40"})
	cur := startForTest(t, Options{})
	v2026 := startForTest(t, Options{Version: "0.38.0"})
	if code, _, _ := doReq(t, "GET", old.URL()+"/features", nil, nil); code != 404 {
		t.Errorf("0.3.40 /features: %d", code)
	}
	if code, _, _ := doReq(t, "GET", cur.URL()+"/api/features", nil, nil); code != 200 {
		t.Errorf("0.3.65 /features: %d", code)
	}
	if id := queuePrompt(t, old.URL(), map[string]any{"prompt_id": "mine", "prompt": emptySave(1, "o")}); id == "mine" || !ids.IsCanonicalUUID(id) {
		t.Errorf("0.3.40 kept the client prompt_id: %q", id)
	}
	if id := queuePrompt(t, cur.URL(), map[string]any{"prompt_id": "mine", "prompt": emptySave(1, "c")}); id != "mine" {
		t.Errorf("0.3.65 prompt_id = %q", id)
	}
	for _, bad := range []any{"mine", "B4E409FA-D186-48D1-8E09-4CF045440E25", 42} {
		code, body := postJSON(t, v2026.URL()+"/prompt", map[string]any{"prompt_id": bad, "prompt": emptySave(1, "n")})
		if code != 400 || !strings.Contains(string(body), "invalid_prompt_id") {
			t.Errorf("2026 prompt_id %v: %d %s", bad, code, body)
		}
	}
	var stats struct {
		System struct {
			Version string `json:"comfyui_version"`
		} `json:"system"`
		Devices []map[string]any `json:"devices"`
	}
	getJSON(t, v2026.URL()+"/system_stats", &stats)
	if stats.System.Version != "0.38.0" || len(stats.Devices) != 1 {
		t.Errorf("system_stats: %+v", stats)
	}
	if code, _, _ := doReq(t, "GET", cur.URL()+"/api/jobs", nil, nil); code != 404 {
		t.Errorf("0.3.65 /api/jobs: %d", code)
	}

	// The 2026 jobs API.
	ws := dialWS(t, v2026.URL(), "j")
	const jid = "b4e409fa-d186-48d1-8e09-4cf045440e25"
	if id := queuePrompt(t, v2026.URL(), map[string]any{"prompt_id": jid, "client_id": "j", "prompt": emptySave(3, "j")}); id != jid {
		t.Fatalf("2026 prompt_id = %q", id)
	}
	ws.waitDone(jid)
	var list struct {
		Jobs []struct {
			ID, Status    string
			OutputsCount  int            `json:"outputs_count"`
			PreviewOutput map[string]any `json:"preview_output"`
		} `json:"jobs"`
		Pagination struct {
			Offset, Total int
			Limit         *int
			HasMore       bool `json:"has_more"`
		} `json:"pagination"`
	}
	if code := getJSON(t, v2026.URL()+"/api/jobs?status=completed&limit=5", &list); code != 200 {
		t.Fatalf("/api/jobs: %d", code)
	}
	if len(list.Jobs) != 1 || list.Jobs[0].ID != jid || list.Jobs[0].Status != "completed" || list.Jobs[0].OutputsCount != 1 ||
		list.Jobs[0].PreviewOutput["filename"] != "j_00001_.png" || list.Pagination.Total != 1 || list.Pagination.Limit == nil || *list.Pagination.Limit != 5 {
		t.Fatalf("/api/jobs = %+v", list)
	}
	if code, _, body := doReq(t, "GET", v2026.URL()+"/api/jobs?status=bogus", nil, nil); code != 400 || !strings.Contains(string(body), "Invalid status value") {
		t.Fatalf("bad status: %d %s", code, body)
	}
	var job map[string]any
	if code := getJSON(t, v2026.URL()+"/api/jobs/"+jid, &job); code != 200 || job["outputs"] == nil || job["workflow"] == nil {
		t.Fatalf("/api/jobs/{id}: %d %v", code, job)
	}
	if code, _, _ := doReq(t, "GET", v2026.URL()+"/api/jobs/00000000-0000-4000-8000-000000000000", nil, nil); code != 404 {
		t.Fatalf("unknown job: %d", code)
	}
	code, body := postJSON(t, v2026.URL()+"/api/jobs/"+jid+"/cancel", "")
	if code != 200 || string(body) != `{"cancelled": false}` {
		t.Fatalf("cancel finished job: %d %s", code, body)
	}
	code, body = postJSON(t, v2026.URL()+"/api/jobs/cancel", map[string]any{"job_ids": []any{"nope"}})
	if code != 400 || !strings.Contains(string(body), "invalid_ids") {
		t.Fatalf("batch cancel with bad id: %d %s", code, body)
	}
}

func TestCancelPendingJob2026(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Version: "0.38.0", Delay: time.Minute})
	ws := dialWS(t, s.URL(), "c")
	first := queuePrompt(t, s.URL(), map[string]any{"client_id": "c", "prompt": slowPrompt(1)})
	second := queuePrompt(t, s.URL(), map[string]any{"client_id": "c", "prompt": slowPrompt(2)})
	ws.waitFor("first running", executingNode(first, "2"))
	code, body := postJSON(t, s.URL()+"/api/jobs/cancel", map[string]any{"job_ids": []string{second}})
	if code != 200 || string(body) != `{"cancelled": true}` {
		t.Fatalf("cancel pending: %d %s", code, body)
	}
	var q queueResponse
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Pending) != 0 {
		t.Fatalf("pending after cancel: %v", q.Pending)
	}
}

func TestInterrupt(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: 300 * time.Millisecond})
	ws := dialWS(t, s.URL(), "i")
	first := queuePrompt(t, s.URL(), map[string]any{"client_id": "i", "prompt": slowPrompt(1)})
	second := queuePrompt(t, s.URL(), map[string]any{"client_id": "i", "prompt": slowPrompt(2)})
	ws.waitFor("first at node 2", executingNode(first, "2"))
	// Targeting the pending prompt does nothing; targeting the running one stops it.
	postJSON(t, s.URL()+"/interrupt", map[string]any{"prompt_id": second})
	postJSON(t, s.URL()+"/interrupt", map[string]any{"prompt_id": first})
	ms := ws.waitDone(second)
	p1 := forPrompt(ms, first)
	if got := types(p1); strings.Join(got[len(got)-2:], ",") != "execution_interrupted,executing" {
		t.Fatalf("first prompt ended with %v", got)
	}
	intr := p1[len(p1)-2].data
	if intr["node_id"] != "3" || intr["node_type"] != "ImageInvert" {
		t.Fatalf("interrupted at %v", intr)
	}
	e := getHistoryEntry(t, s.URL(), first)
	if e.Status.StatusStr != "error" || e.Status.Completed {
		t.Fatalf("history status %+v", e.Status)
	}
	if got := types(forPrompt(ms, second)); got[len(got)-2] != "execution_success" {
		t.Fatalf("second prompt: %v", got)
	}
}

func TestCacheAndFree(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	ws := dialWS(t, s.URL(), "cf")
	run := func() []wsMsg {
		id := queuePrompt(t, s.URL(), map[string]any{"client_id": "cf", "prompt": slowPrompt(7)})
		return forPrompt(ws.waitDone(id), id)
	}
	cachedNodes := func(ms []wsMsg) int {
		for _, m := range ms {
			if m.typ == "execution_cached" {
				return len(m.data["nodes"].([]any))
			}
		}
		return -1
	}
	if n := cachedNodes(run()); n != 0 {
		t.Fatalf("first run cached %d", n)
	}
	second := run()
	if n := cachedNodes(second); n != 4 {
		t.Fatalf("second run cached %d nodes, want 4", n)
	}
	if got := strings.Join(types(second), ","); got != "execution_start,execution_cached,executed,progress_state,execution_success,executing" {
		t.Fatalf("cached run: %s", got)
	}
	if code, _ := postJSON(t, s.URL()+"/free", map[string]any{"free_memory": true}); code != 200 {
		t.Fatal("free")
	}
	if n := cachedNodes(run()); n != 0 {
		t.Fatalf("after /free cached %d", n)
	}
}

func TestNoClientIDBroadcast(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Steps: 2})
	a := dialWS(t, s.URL(), "A")
	b := dialWS(t, s.URL(), "")
	prompt := map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": 5}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": "RealESRGAN_x2plus.pth"}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"3", 0}}},
	}
	id := queuePrompt(t, s.URL(), map[string]any{"prompt": prompt})
	finished := func(ms []wsMsg) bool {
		n := 0
		for _, m := range ms {
			if m.typ == "status" {
				n++
			}
		}
		return n >= 4 // connect, queued, dequeued, done
	}
	for _, ws := range []*testWS{a, b} {
		ms := ws.waitFor("final status", finished)
		var progress, previews int
		for _, m := range ms {
			switch {
			case m.binary:
				if binary.BigEndian.Uint32(m.raw[:4]) == 1 {
					previews++
				}
			case m.typ == "progress":
				progress++
			case m.typ == "status", m.typ == "progress_state":
			default:
				t.Errorf("socket got %s without a client_id", m.typ)
			}
		}
		if progress != 2 || previews != 2 {
			t.Errorf("progress %d previews %d, want 2 and 2", progress, previews)
		}
	}
	e := getHistoryEntry(t, s.URL(), id)
	if img := e.Outputs["4"].Images; len(img) != 1 || img[0].Type != "temp" || !strings.HasPrefix(img[0].Filename, "ComfyUI_temp_") {
		t.Fatalf("preview output %v", e.Outputs)
	}
}

func TestPreviewMetadata(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Steps: 2})
	ws := dialWS(t, s.URL(), "meta")
	ws.send(map[string]any{"type": "feature_flags", "data": map[string]any{"supports_preview_metadata": true}})
	ws.waitFor("feature_flags reply", func(ms []wsMsg) bool { return len(ms) >= 2 && ms[1].typ == "feature_flags" })
	id := queuePrompt(t, s.URL(), map[string]any{"client_id": "meta", "prompt": map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": 5}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": "4x-UltraSharp.pth"}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "m"}},
	}})
	ms := forPrompt(ws.waitDone(id), id)
	n := 0
	for _, m := range ms {
		if !m.binary {
			continue
		}
		if et := binary.BigEndian.Uint32(m.raw[:4]); et != 4 {
			t.Fatalf("binary event %d, want 4", et)
		}
		l := binary.BigEndian.Uint32(m.raw[4:8])
		var meta map[string]any
		if err := json.Unmarshal(m.raw[8:8+l], &meta); err != nil {
			t.Fatal(err)
		}
		if meta["node_id"] != "3" || meta["prompt_id"] != id || meta["image_type"] != "image/jpeg" {
			t.Fatalf("metadata %v", meta)
		}
		if img := m.raw[8+l:]; len(img) < 3 || img[0] != 0xFF || img[1] != 0xD8 {
			t.Fatal("preview is not a JPEG")
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d type-4 previews, want 2", n)
	}
}

func TestReconnectSameClientID(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: time.Minute})
	a := dialWS(t, s.URL(), "same")
	id := queuePrompt(t, s.URL(), map[string]any{"client_id": "same", "prompt": slowPrompt(1)})
	a.waitFor("node 2 running", executingNode(id, "2"))
	b := dialWS(t, s.URL(), "same")
	ms := b.waitFor("re-sync executing", func(ms []wsMsg) bool { return len(ms) >= 2 })
	if ms[0].typ != "status" || ms[1].typ != "executing" || ms[1].data["node"] != "2" {
		t.Fatalf("reconnect got %v %v", ms[0], ms[1])
	}
	if _, has := ms[1].data["prompt_id"]; has {
		t.Fatal("re-sync executing carries a prompt_id")
	}
	// Events now go to b only.
	before := len(a.snapshot())
	s.BroadcastCustom("custom.ping", map[string]any{"n": 1})
	b.waitFor("custom event", func(ms []wsMsg) bool { return ms[len(ms)-1].typ == "custom.ping" })
	if len(a.snapshot()) != before {
		t.Fatal("the replaced socket still receives")
	}
	// The close race: closing the old socket unregisters the new one.
	a.close()
	deadline := time.Now().Add(testTimeout)
	for {
		s.mu.Lock()
		in := s.inst
		s.mu.Unlock()
		in.mu.Lock()
		_, registered := in.sockets["same"]
		in.mu.Unlock()
		if !registered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("old socket's close did not unregister the sid")
		}
		time.Sleep(5 * time.Millisecond) // polling server state, bounded by deadline
	}
	n := len(b.snapshot())
	s.BroadcastCustom("custom.ping", map[string]any{"n": 2})
	c := dialWS(t, s.URL(), "observer")
	c.waitFor("observer registered", func(ms []wsMsg) bool { return len(ms) >= 1 })
	s.BroadcastCustom("custom.ping", map[string]any{"n": 3})
	c.waitFor("observer gets the broadcast", func(ms []wsMsg) bool { return len(ms) >= 2 && ms[len(ms)-1].typ == "custom.ping" })
	if len(b.snapshot()) != n {
		t.Fatal("unregistered socket still receives broadcasts")
	}
}

func TestRuntimeError(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	if code, _ := upload(t, s.URL()+"/upload/image", "broken.png", []byte("not an image"), nil); code != 200 {
		t.Fatal("upload")
	}
	ws := dialWS(t, s.URL(), "err")
	id := queuePrompt(t, s.URL(), map[string]any{"client_id": "err", "prompt": map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": "broken.png"}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": "x"}},
	}})
	ms := forPrompt(ws.waitDone(id), id)
	got := types(ms)
	if strings.Join(got[len(got)-2:], ",") != "execution_error,executing" {
		t.Fatalf("messages %v", got)
	}
	ev := ms[len(ms)-2].data
	for _, k := range []string{"node_id", "node_type", "executed", "exception_message", "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("execution_error lacks %s", k)
		}
	}
	if e := getHistoryEntry(t, s.URL(), id); e.Status.StatusStr != "error" {
		t.Fatalf("history %+v", e.Status)
	}
}

func TestRoutesAndQueueEdits(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Delay: time.Minute})
	if code, _, body := doReq(t, "GET", s.URL()+"/no/such", nil, nil); code != 404 || string(body) != "404: Not Found" {
		t.Errorf("404: %d %q", code, body)
	}
	if code, _, body := doReq(t, "GET", s.URL()+"/upload/image", nil, nil); code != 405 || string(body) != "405: Method Not Allowed" {
		t.Errorf("405: %d %q", code, body)
	}
	if code, _, _ := doReq(t, "GET", s.URL()+"/api/prompt", nil, nil); code != 200 {
		t.Errorf("/api/prompt: %d", code)
	}
	if code, _ := postJSON(t, s.URL()+"/queue", "{oops"); code != 500 {
		t.Errorf("malformed /queue: %d", code)
	}
	ws := dialWS(t, s.URL()+"/api", "r") // /api/ws works too
	running := queuePrompt(t, s.URL(), map[string]any{"client_id": "r", "prompt": slowPrompt(1)})
	p2 := queuePrompt(t, s.URL(), map[string]any{"client_id": "r", "prompt": slowPrompt(2)})
	p3 := queuePrompt(t, s.URL(), map[string]any{"client_id": "r", "prompt": slowPrompt(3)})
	ws.waitFor("running", executingNode(running, "2"))
	var q queueResponse
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Running) != 1 || len(q.Pending) != 2 {
		t.Fatalf("queue %d running %d pending", len(q.Running), len(q.Pending))
	}
	var pr struct {
		ExecInfo execInfo `json:"exec_info"`
	}
	getJSON(t, s.URL()+"/prompt", &pr)
	if pr.ExecInfo.QueueRemaining != 3 {
		t.Fatalf("queue_remaining %d", pr.ExecInfo.QueueRemaining)
	}
	postJSON(t, s.URL()+"/queue", map[string]any{"delete": []string{p2}})
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Pending) != 1 || !strings.Contains(string(pyJSON(q.Pending)), p3) {
		t.Fatalf("after delete: %v", q.Pending)
	}
	postJSON(t, s.URL()+"/queue", map[string]any{"clear": true})
	getJSON(t, s.URL()+"/queue", &q)
	if len(q.Pending) != 0 || len(q.Running) != 1 {
		t.Fatalf("after clear: %d running %d pending", len(q.Running), len(q.Pending))
	}
}

func TestHistoryListing(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	ws := dialWS(t, s.URL(), "h")
	var ids []string
	for i := range 4 {
		ids = append(ids, queuePrompt(t, s.URL(), map[string]any{"client_id": "h", "prompt": emptySave(i, "h")}))
	}
	ws.waitDone(ids[3])
	keys := func(q string) string {
		code, _, body := doReq(t, "GET", s.URL()+"/history"+q, nil, nil)
		if code != 200 {
			t.Fatalf("/history%s: %d", q, code)
		}
		// Keys in document order.
		dec := json.NewDecoder(strings.NewReader(string(body)))
		var out []string
		_, _ = dec.Token()
		for dec.More() {
			k, _ := dec.Token()
			var skip json.RawMessage
			_ = dec.Decode(&skip)
			out = append(out, k.(string))
		}
		return strings.Join(out, ",")
	}
	if got := keys("?max_items=2"); got != ids[2]+","+ids[3] {
		t.Errorf("max_items=2: %s", got)
	}
	if got := keys("?max_items=2&offset=1"); got != ids[1]+","+ids[2] {
		t.Errorf("max_items=2&offset=1: %s", got)
	}
	if code, _, _ := doReq(t, "GET", s.URL()+"/history?max_items=x", nil, nil); code != 500 {
		t.Errorf("bad max_items: %d", code)
	}
	postJSON(t, s.URL()+"/history", map[string]any{"delete": []string{ids[0]}})
	if got := keys(""); got != strings.Join(ids[1:], ",") {
		t.Errorf("after delete: %s", got)
	}
	postJSON(t, s.URL()+"/history", map[string]any{"clear": true})
	if got := keys(""); got != "" {
		t.Errorf("after clear: %s", got)
	}
}

func TestCommand(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := Command(ctx, []string{"-listen", "127.0.0.1:0", "-delay", "0s", "-comfy-version", "0.3.60"}, pw)
		_ = pw.Close()
		errc <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("no URL in %q", line)
	}
	url := strings.TrimSpace(line[i:])
	var stats struct {
		System struct {
			Version string `json:"comfyui_version"`
		} `json:"system"`
	}
	if code := getJSON(t, url+"/system_stats", &stats); code != 200 || stats.System.Version != "0.3.60" {
		t.Fatalf("system_stats %d %+v", code, stats)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Command did not return after cancel")
	}
	if err := Command(context.Background(), []string{"-comfy-version", "banana"}, io.Discard); err == nil {
		t.Fatal("bad version accepted")
	}
	_ = errors.New
}

func TestCommandInstances(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := Command(ctx, []string{"-listen", "127.0.0.1:0", "-delay", "0s", "-instances", "3"}, pw)
		_ = pw.Close()
		errc <- err
	}()
	rd := bufio.NewReader(pr)
	seen := map[string]bool{}
	for len(seen) < 3 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d URLs: %v", len(seen), err)
		}
		i := strings.Index(line, "listening on http://")
		if i < 0 {
			continue
		}
		url := strings.TrimSpace(line[i+len("listening on "):])
		if seen[url] {
			t.Fatalf("%s twice", url)
		}
		seen[url] = true
		var stats map[string]any
		if code := getJSON(t, url+"/system_stats", &stats); code != 200 {
			t.Fatalf("%s/system_stats: %d", url, code)
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Command did not return after cancel")
	}
	if err := Command(context.Background(), []string{"-instances", "0"}, io.Discard); err == nil {
		t.Fatal("-instances 0 accepted")
	}
}
