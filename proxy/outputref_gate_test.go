package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/upstream"
)

// TestSameNamesOwnImage is the file-name collision the issue names: two
// instances with separate output folders both write demo_00001_.png (and
// more), every prompt finishes before any image is read, and then every
// reference a client got — from /history/{id}, /api/jobs/{id} and the
// WebSocket `executed` events — gives that prompt's own image.
func TestSameNamesOwnImage(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Version: "0.38.0"})
	g := startGate(t, addrsOf(ss), nil)
	const clientID = "own-images"
	ws := dialWS(t, "ws://"+g.addr+"/ws?clientId="+clientID)

	const n = 8
	ids := make([]string, n)
	colour := map[string]int{}
	for i := range n {
		c := 0x1f0000*(i+1) + 0x00203f*(n-i) // distinct per prompt
		ids[i] = submit(t, g, map[string]any{"prompt": emptyImagePrompt(c, "demo"), "client_id": clientID})
		colour[ids[i]] = c
	}
	for _, id := range ids {
		if e := waitHistory(t, g, "", id); e.Status.StatusStr != "success" {
			t.Fatalf("prompt %s: %s", id, e.Status.StatusStr)
		}
	}
	for i, s := range ss {
		if _, err := os.Stat(filepath.Join(s.OutputDir(), "demo_00001_.png")); err != nil {
			t.Fatalf("instance %d wrote no demo_00001_.png (executed %d): the test proves nothing", i, s.PromptsExecuted())
		}
	}
	t.Logf("split: %d / %d", ss[0].PromptsExecuted(), ss[1].PromptsExecuted())

	// The executed events, collected once everything finished.
	executed := map[string][]fileRef{}
	for len(executed) < n {
		m := ws.read()
		if m.binary {
			continue
		}
		var ev struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
				Output   *struct {
					Images []fileRef `json:"images"`
				} `json:"output"`
			} `json:"data"`
		}
		if json.Unmarshal(m.data, &ev) != nil || ev.Type != "executed" || ev.Data.Output == nil {
			continue
		}
		executed[ev.Data.PromptID] = ev.Data.Output.Images
	}

	check := func(where, id string, ref fileRef) {
		t.Helper()
		tok, orig, ok := decodeSubfolder(ref.Subfolder)
		if !ok || (tokenName(tok) != "i0" && tokenName(tok) != "i1") || orig != "" {
			t.Errorf("%s of %s: subfolder %q does not name its instance", where, id, ref.Subfolder)
		}
		if got, want := viewPixel(t, g, "", ref), rgbOf(colour[id]); got != want {
			t.Errorf("%s of %s: /view of %s in %q gives %v, want the prompt's own %v", where, id, ref.Filename, ref.Subfolder, got, want)
		}
	}
	// Every reference is read first and viewed after: a table of "which
	// instance wrote demo_00001_.png last" could only be right for one of
	// the two prompts that wrote it.
	for _, id := range ids {
		ev := executed[id]
		if len(ev) != 1 {
			t.Fatalf("executed event of %s: %v", id, ev)
		}
		check("executed", id, ev[0])
	}
	type refs struct{ history, jobOutput, jobPreview fileRef }
	got := map[string]refs{}
	for _, id := range ids {
		e := waitHistory(t, g, "", id)
		img := e.Outputs["2"].Images
		if len(img) != 1 {
			t.Fatalf("history of %s: images %v", id, img)
		}
		var job struct {
			PreviewOutput fileRef `json:"preview_output"`
			Outputs       map[string]struct {
				Images []fileRef `json:"images"`
			} `json:"outputs"`
		}
		status, _, body := gateDo(t, "GET", g.base+"/api/jobs/"+url.PathEscape(id), nil, nil)
		if status != 200 || json.Unmarshal(body, &job) != nil || len(job.Outputs["2"].Images) != 1 {
			t.Fatalf("GET /api/jobs/%s = %d %s", id, status, body)
		}
		got[id] = refs{img[0], job.Outputs["2"].Images[0], job.PreviewOutput}
	}
	collisions := 0
	for _, id := range ids {
		r := got[id]
		if r.history.Filename == "demo_00001_.png" {
			collisions++
		}
		if r.history != executed[id][0] {
			t.Errorf("%s: history ref %v, executed event ref %v", id, r.history, executed[id][0])
		}
		check("history", id, r.history)
		check("job outputs", id, r.jobOutput)
		check("job preview_output", id, r.jobPreview)
	}
	if collisions != 2 {
		t.Errorf("%d prompts report demo_00001_.png, want one per instance", collisions)
	}
}

// TestHistoryUnchangedButSubfolder: a history entry through comfygate is
// the instance's own entry except for the subfolders of its file
// references (and the client_id, which comfygate rewrites anyway).
func TestHistoryUnchangedButSubfolder(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x336699, "same/sub"), "client_id": "mine"})
	waitHistory(t, g, "", id)

	_, _, viaGate := gateDo(t, "GET", g.base+"/history/"+id, nil, nil)
	_, _, direct := gateDo(t, "GET", ss[0].URL()+"/history/"+id, nil, nil)
	var a, b any
	if err := json.Unmarshal(viaGate, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(direct, &b); err != nil {
		t.Fatal(err)
	}
	// Upstream holds comfygate's own client_id for the instance.
	entry, ok := b.(map[string]any)[id].(map[string]any)
	if !ok {
		t.Fatalf("instance's history: %s", direct)
	}
	entry["prompt"].([]any)[3].(map[string]any)["client_id"] = "mine"
	if !equalModuloSubfolders(b, a, "i0") {
		t.Errorf("history through comfygate differs from the instance's beyond subfolders:\n%s\n%s", viaGate, direct)
	}
	want := `"subfolder": "@i0~` + (&upstream.Instance{Addr: ss[0].Addr()}).ID() + `/same"`
	if !strings.Contains(string(viaGate), want) {
		t.Errorf("subfolder not encoded: %s", viaGate)
	}
	if reflect.DeepEqual(a, b) {
		t.Error("history through comfygate is the instance's own: nothing was encoded")
	}
}

// TestViewTokens: /view with an encoded subfolder of no instance is a
// missing file; without a token it works as before (pin table, then
// asking the instances); HEAD answers the encoded file's headers.
func TestViewTokens(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x0a0b0c, "tok")}))
	ref := e.Outputs["2"].Images[0]
	_, orig, ok := decodeSubfolder(ref.Subfolder)
	if !ok {
		t.Fatalf("subfolder %q not encoded", ref.Subfolder)
	}

	tok, _, _ := decodeSubfolder(ref.Subfolder)
	for _, sub := range []string{"@nobody", "@nobody/x", "@", "@" + tokenName(tok), "@" + tokenName(tok) + "~00000000"} {
		q := url.Values{"filename": {ref.Filename}, "subfolder": {sub}, "type": {"output"}}.Encode()
		status, h, body := gateDo(t, "GET", g.base+"/view?"+q, nil, nil)
		if status != 404 || len(body) != 0 || h.Get("Content-Type") != "application/octet-stream" {
			t.Errorf("subfolder %q: %d %q %q; want ComfyUI's empty 404", sub, status, h.Get("Content-Type"), body)
		}
	}
	raw := fileRef{Filename: ref.Filename, Subfolder: orig, Type: ref.Type}
	if got, want := viewPixel(t, g, "/api", raw), rgbOf(0x0a0b0c); got != want {
		t.Errorf("/view without token: %v, want %v", got, want)
	}

	q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}, "channel": {"rgb"}}.Encode()
	_, _, body := gateDo(t, "GET", g.base+"/view?"+q, nil, nil)
	if img, err := png.Decode(bytes.NewReader(body)); err != nil || color.NRGBAModel.Convert(img.At(0, 0)) != rgbOf(0x0a0b0c) {
		t.Fatalf("/view with other parameters: %v", err)
	}
	q = url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}.Encode()
	_, _, body = gateDo(t, "GET", g.base+"/view?"+q, nil, nil)
	resp, err := gateClient.Head(g.base + "/view?" + q)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) {
		t.Errorf("HEAD /view = %d, length %d; want 200 and %d", resp.StatusCode, resp.ContentLength, len(body))
	}
}

// TestPromptLoadsEncodedOutput: an output loaded as an input by the
// reference comfygate handed out ("@i0/name [output]") runs.
func TestPromptLoadsEncodedOutput(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x102030, "src")}))
	ref := e.Outputs["2"].Images[0]
	value := fmt.Sprintf("%s/%s [output]", ref.Subfolder, ref.Filename)
	e = waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": value}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "inv"}},
	}}))
	if e.Status.StatusStr != "success" {
		t.Fatalf("prompt loading %q: %s", value, e.Status.StatusStr)
	}
	want := color.NRGBA{0xff - 0x10, 0xff - 0x20, 0xff - 0x30, 0xff}
	if got := viewPixel(t, g, "", e.Outputs["3"].Images[0]); got != want {
		t.Errorf("inverted output: %v, want %v", got, want)
	}
}
