package isolation

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// TestJobResultCacheIsPerKey: through the whole gateway, a job result
// cached for one key never answers another key's identical job (which
// runs); the first key's own repeat is answered from it.
func TestJobResultCacheIsPerKey(t *testing.T) {
	t.Parallel()
	st := stack.Start(t, stack.Options{
		Instances: 1,
		Sim:       comfysim.Options{Delay: 5 * time.Millisecond, RecordRuns: true},
		Jobs:      true,
		Config: func(c *config.Config) {
			c.Auth.Keys = []string{keyA, keyB}
			c.Jobs.CacheMaxBytes = 1 << 30
		},
	})
	body, _ := json.Marshal(map[string]string{"image_base64": base64.StdEncoding.EncodeToString(testkit.PNG(16, 16))})
	runs := func() int {
		n := 0
		for _, c := range st.Sims[0].Runs() {
			n += c
		}
		return n
	}
	submit := func(key string) bool {
		t.Helper()
		code, b := do(t, "POST", st.URL+"/api/upscale-image?wait=20s", key, "application/json", body)
		var v struct {
			Status string `json:"status"`
			Cached bool   `json:"cached"`
		}
		if code != 200 || json.Unmarshal(b, &v) != nil || v.Status != "completed" {
			t.Fatalf("POST as %s: %d %.300s", key[:15], code, b)
		}
		return v.Cached
	}
	if submit(keyA) {
		t.Fatal("A's first job was answered from the cache")
	}
	if submit(keyB) {
		t.Fatal("B's job was answered from A's cached result")
	}
	// A run is recorded just after the instance sends its end.
	testkit.Eventually(t, "one run per key recorded", func() bool { return runs() == 2 })
	if !submit(keyA) {
		t.Fatal("A's repeat was not answered from A's cached result")
	}
	if got := runs(); got != 2 {
		t.Fatalf("%d runs after A's repeat, want 2", got)
	}
}
