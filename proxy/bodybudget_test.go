package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestBodiesBudget: a body comfygate reads whole is charged to
// limits.max_buffered_body_bytes, whatever its framing: past it the answer
// is 429 with Retry-After; what a request held is given back when it ends.
func TestBodiesBudget(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.Limits.MaxBufferedBodyBytes = 96 << 10 })
	pad := strings.Repeat("x", 128<<10)
	big := `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}}}, "extra_data": {"pad": "` + pad + `"}}`
	small := `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 2}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}}`
	for _, chunk := range []bool{false, true} {
		var body = strings.NewReader(big)
		var r interface{ Read([]byte) (int, error) } = body
		if chunk {
			r = chunked{body}
		}
		status, hdr, b := gateDo(t, "POST", g.base+"/prompt", http.Header{"Content-Type": {"application/json"}}, r)
		var e struct {
			Error struct{ Type string } `json:"error"`
		}
		if status != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" || json.Unmarshal(b, &e) != nil || e.Error.Type != "too_many_buffered_bodies" {
			t.Errorf("a body past the budget (chunked %v): %d %s %v", chunk, status, b, hdr)
		}
		for range 3 { // each gives its share back when it ends
			if status, _, b := gateDo(t, "POST", g.base+"/prompt", http.Header{"Content-Type": {"application/json"}}, strings.NewReader(small)); status != http.StatusOK {
				t.Fatalf("a small prompt after it (chunked %v): %d %s", chunk, status, b)
			}
		}
	}
	testkit.Eventually(t, "every request's share given back", func() bool { return g.srv.submit.bodies.budget.InUse() == 0 })
}
