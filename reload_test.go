package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestReloadAddsRemovesAndRefuses: a reload (POST /admin/reload, and
// SIGHUP) that adds a third instance puts it into rotation, one that
// removes an instance takes it out once its work is done, and a bad file
// is refused with start-up's errors while the running configuration stays.
func TestReloadAddsRemovesAndRefuses(t *testing.T) {
	ss := testkit.Sims(t, 3, comfysim.Options{Delay: 0})
	dir := t.TempDir()
	path := filepath.Join(dir, "comfygate.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	instances := func(n ...int) string {
		var b strings.Builder
		b.WriteString("log: {level: warn}\nhealth_check: {interval: 100ms, unhealthy_threshold: 1}\n")
		fmt.Fprintf(&b, "jobs: {state_dir: %q}\ninstances:\n", filepath.Join(dir, "jobs"))
		for _, k := range n {
			fmt.Fprintf(&b, "  - {name: gpu%d, address: %s}\n", k, ss[k].Addr())
		}
		return b.String()
	}
	write(instances(0, 1))
	base := serveFile(t, path)
	health := func() map[string]bool {
		_, body := httpDo(t, "GET", base+"/health", nil)
		var h struct {
			Instances []struct {
				Name     string `json:"name"`
				Draining bool   `json:"draining"`
			} `json:"comfyui_instances"`
		}
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatalf("/health: %s", body)
		}
		out := map[string]bool{}
		for _, i := range h.Instances {
			out[i.Name] = !i.Draining
		}
		return out
	}

	if _, body := httpDo(t, "GET", base+"/api/workflows", nil); strings.Contains(string(body), "my-invert") {
		t.Fatalf("workflow listed before it was configured: %s", body)
	}
	wf := `{"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
		"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
		"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}`
	if err := os.WriteFile(filepath.Join(dir, "invert.json"), []byte(wf), 0o600); err != nil {
		t.Fatal(err)
	}
	write(instances(0, 1, 2) + "workflows: {my-invert: {file: invert.json, image_node: \"1\", output_node: \"3\"}}\n" +
		"routing: {affinity_margin: 0}\ntimeout: 10s\n")
	status, body := httpDo(t, "POST", base+"/admin/reload", []byte("{}"))
	if status != 200 || !strings.Contains(string(body), `"added":["gpu2"]`) || strings.Contains(string(body), "workflows") ||
		strings.Contains(string(body), "routing") || !strings.Contains(string(body), `"restart_needed":["timeout"]`) {
		t.Fatalf("reload = %d %s, want gpu2 added, workflows and routing applied, timeout needing a restart", status, body)
	}
	if _, body := httpDo(t, "GET", base+"/api/workflows", nil); !strings.Contains(string(body), "my-invert") {
		t.Fatalf("reloaded workflow not listed: %s", body)
	}
	prompt := func(k int) []byte {
		return []byte(fmt.Sprintf(`{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": %d}},
			"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}}}}`, k))
	}
	testkit.Eventually(t, "the added instance runs prompts", func() bool {
		for k := range 3 {
			if s, b := httpDo(t, "POST", base+"/prompt", prompt(k)); s != 200 {
				t.Fatalf("POST /prompt = %d %s", s, b)
			}
		}
		return ss[2].PromptsExecuted() > 0
	})

	// A workflow file that does not exist is refused like at start-up.
	write(instances(0, 1, 2) + "workflows: {gone: {file: absent.json, image_node: \"1\", output_node: \"3\"}}\n")
	if status, body = httpDo(t, "POST", base+"/admin/reload", []byte("{}")); status != 400 || !strings.Contains(string(body), "absent.json") {
		t.Fatalf("reload with a missing workflow file = %d %s, want 400 naming it", status, body)
	}
	if _, body := httpDo(t, "GET", base+"/api/workflows", nil); !strings.Contains(string(body), "my-invert") {
		t.Fatalf("a refused reload changed the workflows: %s", body)
	}

	// A bad file is refused whole: its errors are start-up's, and nothing changes.
	write(instances(0, 1) + "timeout: -5s\nbreaker: {consecutive_failures: 0}\n")
	status, body = httpDo(t, "POST", base+"/admin/reload", []byte("{}"))
	if status != 400 || !strings.Contains(string(body), "timeout") || !strings.Contains(string(body), "breaker.consecutive_failures") {
		t.Fatalf("bad reload = %d %s, want 400 naming both keys", status, body)
	}
	if h := health(); !h["gpu0"] || !h["gpu1"] || !h["gpu2"] {
		t.Fatalf("after a refused reload: %v, want all three in rotation", h)
	}

	// SIGHUP removes gpu1: it leaves the pool (it has nothing running).
	write(instances(0, 2))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "gpu1 removed after SIGHUP", func() bool {
		h := health()
		_, has := h["gpu1"]
		return !has && h["gpu0"] && h["gpu2"]
	})
	if s, b := httpDo(t, "POST", base+"/prompt", prompt(9)); s != 200 {
		t.Fatalf("POST /prompt after removal = %d %s", s, b)
	}
}

// TestReloadUnderTheSameNameIsANewInstance: a reload that gives an
// instance's name to another address makes a new instance for every pin.
// An output reference handed out before it names the old machine: /view
// answers 404 while that machine is out of the configuration, never with
// the new machine's file of the same name, and serves the old file again
// once its address is back under another name. An empty file is refused
// on reload, and the fleet stays.
func TestReloadUnderTheSameNameIsANewInstance(t *testing.T) {
	ss := testkit.Sims(t, 2, comfysim.Options{Delay: 0})
	dir := t.TempDir()
	path := filepath.Join(dir, "comfygate.yaml")
	write := func(instances string) {
		t.Helper()
		body := fmt.Sprintf("log: {level: warn}\njobs: {state_dir: %q}\ninstances:\n%s", filepath.Join(dir, "jobs"), instances)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("  - {name: gpuX, address: %s}\n", ss[0].Addr()))
	base := serveFile(t, path)

	type fileRef struct{ Filename, Subfolder, Type string }
	// run sends a prompt writing same_00001_.png in colour c and returns
	// its id and its output reference as comfygate hands it out.
	run := func(c int) (string, fileRef) {
		t.Helper()
		prompt := []byte(fmt.Sprintf(`{"prompt": {
			"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": %d}},
			"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "same"}}}}`, c))
		var status int
		var body []byte
		testkit.Eventually(t, "an instance takes the prompt", func() bool {
			status, body = httpDo(t, "POST", base+"/prompt", prompt)
			return status != 503 // a reloaded instance takes work after its first health check
		})
		var a struct {
			PromptID string `json:"prompt_id"`
		}
		if status != 200 || json.Unmarshal(body, &a) != nil || a.PromptID == "" {
			t.Fatalf("POST /prompt = %d %s", status, body)
		}
		var ref fileRef
		testkit.Eventually(t, "the prompt's output in its history", func() bool {
			_, body := httpDo(t, "GET", base+"/history/"+a.PromptID, nil)
			var h map[string]struct {
				Outputs map[string]struct {
					Images []fileRef `json:"images"`
				} `json:"outputs"`
			}
			if json.Unmarshal(body, &h) != nil || len(h[a.PromptID].Outputs["2"].Images) == 0 {
				return false
			}
			ref = h[a.PromptID].Outputs["2"].Images[0]
			return true
		})
		if ref.Filename != "same_00001_.png" {
			t.Fatalf("output %+v, want same_00001_.png", ref)
		}
		return a.PromptID, ref
	}
	view := func(ref fileRef) (int, []byte) {
		t.Helper()
		q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
		return httpDo(t, "GET", base+"/view?"+q.Encode(), nil)
	}
	reload := func(want string) {
		t.Helper()
		if status, body := httpDo(t, "POST", base+"/admin/reload", []byte("{}")); status != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("reload = %d %s, want %s", status, body, want)
		}
	}

	firstID, first := run(0xc80000)
	_, firstFile := view(first)
	write(fmt.Sprintf("  - {name: gpuX, address: %s}\n", ss[1].Addr())) // gpuX moves to the second machine
	reload(`"changed":["gpuX"]`)
	_, second := run(0x0000c8)
	_, secondFile := view(second)
	if first.Subfolder == second.Subfolder || string(firstFile) == string(secondFile) {
		t.Fatalf("the two machines' outputs look alike: %+v %+v", first, second)
	}
	if status, body := view(first); status != 404 || len(body) != 0 {
		t.Fatalf("/view of the first prompt's output after gpuX moved = %d (%d bytes; the new machine's file: %v), want 404",
			status, len(body), string(body) == string(secondFile))
	}
	if status, body := httpDo(t, "GET", base+"/history/"+firstID, nil); status != 200 || string(body) != "{}" {
		t.Fatalf("/history of the first prompt after gpuX moved = %d %s, want ComfyUI's {} for an unknown prompt", status, body)
	}
	bare := fileRef{Filename: first.Filename, Subfolder: "@gpuX", Type: first.Type}
	if status, body := view(bare); status != 404 || string(body) == string(secondFile) {
		t.Fatalf("/view with a token without machine id = %d, want 404", status)
	}

	// An empty file is refused; gpuX stays on the second machine.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if status, body := httpDo(t, "POST", base+"/admin/reload", []byte("{}")); status != 400 || !strings.Contains(string(body), "empty") {
		t.Fatalf("reload of an empty file = %d %s, want 400 saying it is empty", status, body)
	}
	// Two names for one address (written another way) are refused, naming both.
	write(fmt.Sprintf("  - {name: gpuX, address: %s}\n  - {name: gpuY, address: \"http://%s/\"}\n", ss[1].Addr(), ss[1].Addr()))
	if status, body := httpDo(t, "POST", base+"/admin/reload", []byte("{}")); status != 400 ||
		!strings.Contains(string(body), `\"gpuX\"`) || !strings.Contains(string(body), `\"gpuY\"`) {
		t.Fatalf("reload with one address twice = %d %s, want 400 naming gpuX and gpuY", status, body)
	}
	if status, body := view(second); status != 200 || string(body) != string(secondFile) {
		t.Fatalf("after refused reloads: /view of gpuX's output = %d", status)
	}

	// The first machine back under another name: its file is served again.
	write(fmt.Sprintf("  - {name: gpuX, address: %s}\n  - {name: gpuOld, address: %s}\n", ss[1].Addr(), ss[0].Addr()))
	reload(`"added":["gpuOld"]`)
	if status, body := view(first); status != 200 || string(body) != string(firstFile) {
		t.Fatalf("/view of the first prompt's output with its machine back as gpuOld = %d (the first file: %v)",
			status, string(body) == string(firstFile))
	}
	if _, body := httpDo(t, "GET", base+"/history/"+firstID, nil); !strings.Contains(string(body), `"subfolder": "@gpuOld~`) {
		t.Fatalf("/history of the first prompt with its machine back as gpuOld: %s", body)
	}
	if status, body := view(second); status != 200 || string(body) != string(secondFile) {
		t.Fatalf("/view of the second prompt's output = %d (its file: %v)", status, string(body) == string(secondFile))
	}
}

// serveFile runs comfygate on the configuration file at path (reloads
// read it again) on a free loopback port until the test ends, and returns
// its base URL.
func serveFile(t *testing.T, path string) string {
	t.Helper()
	load := func() (*config.Config, error) { return config.Load(path, []string{}) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, load, ln, &lockedBuffer{}, func(url string) { ready <- url }) }()
	ended := false // serve returned before it was ready
	t.Cleanup(func() {
		cancel()
		if ended {
			return
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	select {
	case base := <-ready:
		return base
	case err := <-done:
		ended = true
		t.Fatalf("serve: %v", err)
	}
	return ""
}
