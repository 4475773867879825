package jobs_test

// Isolation of facade jobs between API keys, through the whole gateway:
// the proxy routes and authorises on the raw path, and the job facade
// answers on that same path, so no spelling of a path reaches another
// key's job.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

const (
	isoKeyA = "iso-key-a-0123456789"
	isoKeyB = "iso-key-b-0123456789"
)

// rawGet sends one GET with target exactly as given (no client-side
// cleaning of the path) and returns the status and body.
func rawGet(t *testing.T, addr, target, key string) (int, []byte) {
	t.Helper()
	code, _, body := rawGetLocation(t, addr, target, key)
	return code, body
}

// rawGetLocation is rawGet with the answer's Location.
func rawGetLocation(t *testing.T, addr, target, key string) (int, string, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", target, addr, key)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header.Get("Location"), body
}

func isoPNG(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 4, 4))); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// TestJobPathFormsStayIsolated: B's job is reachable by B and by no
// spelling of its path from A: an empty segment, a dot segment before
// /jobs, a ".." after A's own job, escapes. A path that is not canonical
// is redirected to its canonical form (308), which answers A with 404, or
// refused (400); never B's job.
func TestJobPathFormsStayIsolated(t *testing.T) {
	t.Parallel()
	st := stack.Start(t, stack.Options{
		Jobs: true,
		Sim:  comfysim.Options{Delay: time.Millisecond},
		Config: func(c *config.Config) {
			c.Auth.Keys = []string{isoKeyA, isoKeyB}
		},
	})
	hc := &http.Client{Timeout: 30 * time.Second}
	submit := func(key string) string {
		body := `{"image_base64": "` + isoPNG(t) + `"}`
		req, _ := http.NewRequest("POST", st.URL+"/api/upscale-image?wait=20s&base64=0", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v struct {
			JobID  string `json:"job_id"`
			Status string `json:"status"`
		}
		raw, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(raw, &v) != nil || resp.StatusCode != 200 || v.Status != "completed" {
			t.Fatalf("submit: %d %s", resp.StatusCode, raw)
		}
		return v.JobID
	}
	ja, jb := submit(isoKeyA), submit(isoKeyB)

	// The canonical paths: each key reads its own job, not the other's.
	if code, body := rawGet(t, st.Addr, "/api/jobs/"+jb+"/outputs/0", isoKeyB); code != 200 {
		t.Fatalf("B reading its own output: %d %s", code, body)
	}
	if code, body := rawGet(t, st.Addr, "/api/jobs/"+jb+"/status", isoKeyA); code != 404 {
		t.Fatalf("A reading B's status: %d %s, want 404", code, body)
	}
	for _, target := range []string{
		"/api/jobs//" + jb + "/result",
		"/api/jobs//" + jb + "/status",
		"/api/./jobs/" + jb + "/outputs/0",
		"/api/jobs/./" + jb + "/result",
		"/api/jobs/" + ja + "/../" + jb + "/events",
		"/api/jobs/" + ja + "/../" + jb + "/result",
		"/api/jobs/" + ja + "/%2e%2e/" + jb + "/result",
		"/api/jobs/" + ja + "%2F..%2F" + jb + "/result",
		"/api/jobs/" + ja + "/..%2F" + jb + "/outputs/0",
		"/api/jobs/%2e/" + jb + "/status",
		"/api/jobs/" + jb + "/result",
		"/api/jobs/" + jb + "/outputs",
		"/api/jobs/" + jb + "/outputs/0",
		"/api/jobs/" + jb + "/events",
	} {
		code, loc, body := rawGetLocation(t, st.Addr, target, isoKeyA)
		if code == http.StatusPermanentRedirect {
			if code, body = rawGet(t, st.Addr, loc, isoKeyA); code != 404 {
				t.Errorf("A: GET %s, redirected to %s: %d %.200s, want 404", target, loc, code, body)
			}
			continue
		}
		if code != 404 && code != 400 {
			t.Errorf("A: GET %s: %d %.200s, want 404 or 400", target, code, body)
		}
		if bytes.Contains(body, []byte(jb)) && !bytes.Contains(body, []byte(`"not_found"`)) && !bytes.Contains(body, []byte(`"non_canonical_path"`)) {
			t.Errorf("A: GET %s shows B's job: %.200s", target, body)
		}
	}
	// The job list shows each key its own jobs only, counted after the filter.
	code, body := rawGet(t, st.Addr, "/api/jobs?source=comfygate", isoKeyA)
	var list struct {
		Jobs []struct {
			JobID string `json:"job_id"`
		} `json:"jobs"`
		Total int `json:"total"`
	}
	if code != 200 || json.Unmarshal(body, &list) != nil || list.Total != 1 || len(list.Jobs) != 1 || list.Jobs[0].JobID != ja {
		t.Fatalf("A's job list: %d %s, want only %s", code, body, ja)
	}
}
