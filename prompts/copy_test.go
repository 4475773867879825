package prompts

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// slowView is an instance that serves GET /view with a body of n pieces,
// one every gap: a copy that takes longer than the call timeout but never
// goes silent for it.
func slowView(t *testing.T, pieces int, gap time.Duration) (addr string, body []byte) {
	t.Helper()
	piece := bytes.Repeat([]byte("0123456789abcdef"), 64)
	body = bytes.Repeat(piece, pieces)
	f := testkit.Mini(t, "0.3.65").Handle("/view", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		fl := w.(http.Flusher)
		for k := 0; k < pieces; k++ {
			if k > 0 {
				select {
				case <-time.After(gap):
				case <-r.Context().Done():
					return
				}
			}
			_, _ = w.Write(piece)
			fl.Flush()
		}
	})
	return f.Addr(), body
}

// COMFYUI_TIMEOUT bounds an instance's silence, not a whole copy.
func TestCopyFileSlowButMovingBody(t *testing.T) {
	t.Parallel()
	// Gaps a tenth of the timeout (room for a loaded machine), the whole
	// copy half again as long as the timeout.
	srcAddr, body := slowView(t, 16, 100*time.Millisecond)
	dst := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(srcAddr, dst.Addr())
	cfg.Timeout = time.Second // the copy takes ~1.5s
	p := newCorePool(t, cfg, false)
	src, to := p.Instances()[0], p.Instances()[1]
	ref := FileRef{Filename: "big.png", Type: "input"}
	n, err := p.prompts.copyFile(context.Background(), src, to, ref, ref)
	if err != nil {
		t.Fatalf("copy of a slow but moving body: %v", err)
	}
	got, ok := dst.Get("input", "", "big.png")
	if n != int64(len(body)) || !ok || !bytes.Equal(got, body) {
		t.Fatalf("copied %d bytes, stored %d (%v), want %d", n, len(got), ok, len(body))
	}
}
