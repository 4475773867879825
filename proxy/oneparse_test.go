package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// chunked is a body of unknown length: net/http sends it with
// Transfer-Encoding: chunked.
type chunked struct{ r io.Reader }

func (c chunked) Read(p []byte) (int, error) { return c.r.Read(p) }

// sendRaw sends one request exactly as written (no client cleans its
// path) and returns the status code and the Location header.
func sendRaw(t *testing.T, addr, method, target, key string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, target, addr, key)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location")
}

// TestOneParseIsolation: key A tries, on B's prompts, every way a second
// parse of the same request used to let through: key case, chunked
// framing, mixed-type lists, duplicate keys, bodies that do not parse,
// and path forms. B's prompts all run to success, untouched.
func TestOneParseIsolation(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 700 * time.Millisecond})
	g := startGate(t, addrsOf(ss), withKeys)

	var own promptAnswer
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": emptyImagePrompt(0x010203, "a-own")}, &own); status != http.StatusOK {
		t.Fatalf("A's prompt: %d %s", status, raw)
	}
	// Six prompts over two instances: each runs one and holds two pending
	// while A tries (distinct colours: nothing is cached).
	var bIDs []string
	for i := range 6 {
		var a promptAnswer
		if status, raw := postJSON(t, g.base+"/prompt", bearer(keyB), map[string]any{"prompt": slowPrompt(0x405060+i, fmt.Sprintf("b%d", i))}, &a); status != http.StatusOK {
			t.Fatalf("B's prompt: %d %s", status, raw)
		}
		bIDs = append(bIDs, a.PromptID)
	}
	b0 := bIDs[len(bIDs)-1]

	post := func(path, body string, chunk bool) (int, string) {
		t.Helper()
		var r io.Reader = strings.NewReader(body)
		if chunk {
			r = chunked{r}
		}
		h := bearer(keyA)
		h.Set("Content-Type", "application/json")
		status, _, b := gateDo(t, "POST", g.base+path, h, r)
		return status, string(b)
	}
	for _, chunk := range []bool{false, true} {
		for _, tc := range []struct {
			path, body string
			want       int
		}{
			{"/interrupt", `{"PROMPT_ID": "` + own.PromptID + `"}`, http.StatusForbidden},
			{"/api/interrupt", `{"Prompt_Id": "` + own.PromptID + `"}`, http.StatusForbidden},
			{"/interrupt", `{"prompt_id": "` + own.PromptID + `", "prompt_id": "` + b0 + `"}`, http.StatusForbidden},
			{"/interrupt", `{"prompt_id": "` + b0 + `"}`, http.StatusForbidden},
			{"/interrupt", ``, http.StatusForbidden},
			{"/interrupt", `not json`, http.StatusForbidden},
			{"/interrupt", `{"prompt_id": 5}`, http.StatusOK}, // names no prompt: a no-op, as in ComfyUI
			{"/interrupt", `[1]`, http.StatusBadRequest},
			{"/queue", `{"clear": true}`, http.StatusForbidden},
			{"/history", `{"clear": 1}`, http.StatusForbidden},
			{"/queue", `{"CLEAR": false, "clear": "yes"}`, http.StatusForbidden},
			{"/queue", `{"clear": NaN}`, http.StatusBadRequest},
			{"/queue", `{"delete": ["` + b0 + `", 1]}`, http.StatusOK},
			{"/queue", `{"delete": ["` + bIDs[4] + `"], "DELETE": []}`, http.StatusOK},
			{"/queue", `{"delete": ["` + bIDs[3] + `", "` + bIDs[2] + `"]}`, http.StatusOK},
			{"/history", `{"delete": ["` + bIDs[2] + `", {"x": 1}]}`, http.StatusOK},
			{"/api/jobs/cancel", `{"job_ids": ["` + bIDs[3] + `"]}`, http.StatusOK},
			{"/api/jobs/cancel", `{"job_ids": ["` + bIDs[3] + `"], "JOB_IDS": []}`, http.StatusOK},
			{"/api/jobs/cancel", `{"job_ids": ["` + bIDs[3] + `", 2]}`, http.StatusBadRequest},
			{"/free", `{"unload_models": true}`, http.StatusForbidden},
		} {
			status, body := post(tc.path, tc.body, chunk)
			if status != tc.want {
				t.Errorf("A: POST %s %s (chunked %v) = %d %s, want %d", tc.path, tc.body, chunk, status, body, tc.want)
			}
			if tc.path == "/api/jobs/cancel" && status == http.StatusOK && !strings.Contains(body, "false") {
				t.Errorf("A cancelled B's job: %s", body)
			}
		}
	}
	// Path forms: redirected (GET, HEAD) or refused, never routed on
	// another reading; followed, they reach the guard with B's id.
	for _, tc := range []struct {
		method, target string
		want           int
	}{
		{"GET", "/api/jobs//" + b0, http.StatusPermanentRedirect},
		{"GET", "/api//jobs/" + b0 + "/status", http.StatusPermanentRedirect},
		{"GET", "/api/./jobs/" + b0 + "/outputs/0", http.StatusPermanentRedirect},
		{"GET", "/api/jobs/" + own.PromptID + "/../" + b0, http.StatusPermanentRedirect},
		{"GET", "/hist%6Fry/" + b0, http.StatusPermanentRedirect},
		{"DELETE", "/api/jobs//" + b0, http.StatusBadRequest},
		{"POST", "/api/jobs//" + b0 + "/cancel", http.StatusBadRequest},
		{"GET", "/api/jobs/x%2F..%2F" + b0, http.StatusBadRequest},
	} {
		status, loc := sendRaw(t, g.addr, tc.method, tc.target, keyA)
		if status != tc.want {
			t.Errorf("A: %s %s = %d, want %d", tc.method, tc.target, status, tc.want)
			continue
		}
		if loc == "" {
			continue
		}
		if status, _, body := gateDo(t, tc.method, g.base+loc, bearer(keyA), nil); status == http.StatusOK && strings.Contains(string(body), b0) {
			t.Errorf("A: %s %s (from %s) = %d %s: B's prompt", tc.method, loc, tc.target, status, body)
		}
	}
	for _, id := range bIDs {
		if e := waitHistory2(t, g, keyB, id); e.Status.StatusStr != "success" {
			t.Errorf("B's prompt %s: %+v, want success", id, e.Status)
		}
	}
	// Now in history: A's deletes there, in every framing, leave it whole.
	for _, chunk := range []bool{false, true} {
		for _, body := range []string{
			`{"delete": ["` + bIDs[0] + `", 1]}`,
			`{"delete": ["` + bIDs[1] + `"], "Delete": []}`,
			`{"delete": "` + bIDs[2] + `"}`,
		} {
			if status, raw := post("/history", body, chunk); status != http.StatusOK {
				t.Errorf("A: POST /history %s = %d %s", body, status, raw)
			}
		}
	}
	if status, _, body := gateDo(t, "GET", g.base+"/history", bearer(keyB), nil); status != http.StatusOK {
		t.Errorf("B's /history: %d", status)
	} else {
		for _, id := range bIDs {
			if !strings.Contains(string(body), id) {
				t.Errorf("B's prompt %s is gone from B's history", id)
			}
		}
	}
}

// waitHistory2 is waitHistory with a key.
func waitHistory2(t *testing.T, g *gate, key, id string) historyEntry {
	t.Helper()
	var e historyEntry
	testkit.Eventually(t, "history of "+id, func() bool {
		var h map[string]historyEntry
		status, _, body := gateDo(t, "GET", g.base+"/history/"+id, bearer(key), nil)
		if status != http.StatusOK || json.Unmarshal(body, &h) != nil {
			return false
		}
		var ok bool
		e, ok = h[id]
		return ok
	})
	return e
}

// TestUnparsableBodiesKeysOff: with keys off, bodies comfygate cannot
// read get ComfyUI's own answers, as before.
func TestUnparsableBodiesKeysOff(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(*config.Config) {})
	for _, tc := range []struct {
		path, body string
		want       int
	}{
		{"/queue", `{"clear": NaN}`, http.StatusInternalServerError},
		{"/history", `[]`, http.StatusInternalServerError},
		{"/interrupt", `[1]`, http.StatusInternalServerError},
		{"/interrupt", `not json`, http.StatusOK},
	} {
		if status, _, body := gateDo(t, "POST", g.base+tc.path, nil, strings.NewReader(tc.body)); status != tc.want {
			t.Errorf("POST %s %s = %d %s, want %d", tc.path, tc.body, status, body, tc.want)
		}
	}
}
