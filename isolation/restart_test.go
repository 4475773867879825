package isolation

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// TestRestoredJobKeepsItsOwner: after comfygate restarts, a job restored
// from jobs.state_dir is still its key's: its owner reads it, another key
// gets 404, and the owner's Idempotency-Key replays it.
func TestRestoredJobKeepsItsOwner(t *testing.T) {
	t.Parallel()
	st := stack.Start(t, stack.Options{
		Jobs: true,
		Sim:  comfysim.Options{Delay: time.Millisecond},
		Config: func(c *config.Config) {
			c.Auth.Keys = []string{keyA, keyB}
			c.Jobs.CacheMaxBytes = 0
		},
	})
	body, _ := json.Marshal(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(testkit.PNG(4, 4))})
	submit := func() (int, string) {
		req, _ := http.NewRequest("POST", st.URL+"/api/remove-background", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+keyA)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "restart-idem")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a struct {
			JobID string `json:"job_id"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&a)
		return resp.StatusCode, a.JobID
	}
	code, id := submit()
	if code != http.StatusAccepted || id == "" {
		t.Fatalf("A's job: %d %q", code, id)
	}
	testkit.Eventually(t, "A's job completed", func() bool {
		_, b := doURL(t, "GET", st.URL+"/api/jobs/"+id+"/status", keyA)
		return jsonField(b, "status") == "completed"
	})
	st.Restart()
	if code, b := doURL(t, "GET", st.URL+"/api/jobs/"+id+"/status", keyA); code != http.StatusOK || jsonField(b, "job_id") != id {
		t.Errorf("A reading its restored job: %d %s", code, b)
	}
	if code, b := doURL(t, "GET", st.URL+"/api/jobs/"+id+"/status", keyB); code != http.StatusNotFound {
		t.Errorf("B reading A's restored job: %d %s, want 404", code, b)
	}
	if code, again := submit(); again != id {
		t.Errorf("A's Idempotency-Key after the restart: %d job %q, want a replay of %q", code, again, id)
	}
}

func jsonField(b []byte, name string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	var s string
	_ = json.Unmarshal(m[name], &s)
	return s
}

// doURL is do without a body.
func doURL(tb testing.TB, method, url, key string) (int, []byte) {
	tb.Helper()
	return do(tb, method, url, key, "", nil)
}
