package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	var base string
	select {
	case base = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
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
