// Package bench holds benchmarks that need comfygate's whole stack in one
// process (bench/cmd/compare runs the built binaries against nginx and HAProxy).
package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/fasthttp/websocket"
)

// BenchmarkOneRequestWait measures what the one-request job API
// (POST /api/upscale-image?wait=30s through comfygate) adds to the
// round trip a ComfyUI client makes directly against the instance:
// upload the image, POST /prompt, wait on its open WebSocket for the
// prompt's end, GET /history/{id}, GET /view of the output. Both run
// the same upscale workflow on the same simulated instance
// (comfysim, -delay 0), alternating, and the medians are reported.
//
//	go test -run '^$' -bench OneRequestWait -benchtime 200x ./bench/
func BenchmarkOneRequestWait(b *testing.B) {
	st := stack.Start(b, stack.Options{Instances: 1, Jobs: true})
	sim, gate := st.Sims[0], st.URL
	img := testPNG(64, 64)
	hc := &http.Client{Timeout: 30 * time.Second}
	direct := newDirectClient(b, sim.Addr())
	graph := upscaleGraph()
	body, _ := json.Marshal(map[string]string{"image_base64": base64.StdEncoding.EncodeToString(img)})

	// viaGate returns the job id and when its answer was read.
	viaGate := func() (string, time.Time) {
		resp, err := hc.Post(gate+"/api/upscale-image?wait=30s", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var v struct {
			JobID       string `json:"job_id"`
			Status      string `json:"status"`
			ImageBase64 string `json:"image_base64"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		done := time.Now()
		if err != nil || resp.StatusCode != 200 || v.Status != "completed" {
			b.Fatalf("comfygate: %d %v %+v", resp.StatusCode, err, v.Status)
		}
		out, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(v.ImageBase64, "data:image/png;base64,"))
		if err != nil || len(out) == 0 {
			b.Fatalf("comfygate result: %v", err)
		}
		return v.JobID, done
	}
	viaDirect := func() {
		if out := direct.run(b, hc, img, graph); len(out) == 0 {
			b.Fatal("direct: empty result")
		}
	}
	// Warm both paths (connections, caches) before measuring.
	for range 3 {
		_, _ = viaGate()
		viaDirect()
	}
	var dGate, dDirect, dAfter []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		viaDirect()
		t1 := time.Now()
		id, t2 := viaGate()
		dDirect = append(dDirect, t1.Sub(t0))
		dGate = append(dGate, t2.Sub(t1))
		b.StopTimer()
		if end, ok := successTime(hc, sim.URL(), id); ok {
			dAfter = append(dAfter, t2.Sub(end))
		}
		b.StartTimer()
	}
	b.StopTimer()
	md, mg := median(dDirect), median(dGate)
	b.ReportMetric(float64(md.Microseconds())/1000, "ms-direct-median")
	b.ReportMetric(float64(mg.Microseconds())/1000, "ms-comfygate-median")
	b.ReportMetric(float64((mg-md).Microseconds())/1000, "ms-added-median")
	if len(dAfter) > 0 {
		// The instance stamps execution_success in whole milliseconds.
		b.ReportMetric(float64(median(dAfter).Microseconds())/1000, "ms-after-instance-end-median")
	}
}

// successTime reads when the instance recorded the prompt's
// execution_success (its history's status messages, ms since the epoch).
func successTime(hc *http.Client, base, id string) (time.Time, bool) {
	resp, err := hc.Get(base + "/history/" + id)
	if err != nil {
		return time.Time{}, false
	}
	defer resp.Body.Close()
	var h map[string]struct {
		Status struct {
			Messages [][2]json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	if json.NewDecoder(resp.Body).Decode(&h) != nil {
		return time.Time{}, false
	}
	for _, m := range h[id].Status.Messages {
		var typ string
		var data struct {
			Timestamp int64 `json:"timestamp"`
		}
		if json.Unmarshal(m[0], &typ) == nil && typ == "execution_success" && json.Unmarshal(m[1], &data) == nil {
			return time.UnixMilli(data.Timestamp), true
		}
	}
	return time.Time{}, false
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// directClient is a ComfyUI client that keeps one WebSocket open, as the
// websocket API example and SDKs do.
type directClient struct {
	base     string
	clientID string
	ws       *websocket.Conn
	seq      int
}

func newDirectClient(b *testing.B, addr string) *directClient {
	c := &directClient{base: "http://" + addr, clientID: "bench-direct"}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?clientId="+c.clientID, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ws.Close() })
	c.ws = ws
	return c
}

// run does one direct round trip and returns the output image.
func (c *directClient) run(b *testing.B, hc *http.Client, img []byte, graph map[string]any) []byte {
	c.seq++
	name := fmt.Sprintf("bench-direct-%d.png", c.seq)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	w, _ := mw.CreateFormFile("image", name)
	_, _ = w.Write(img)
	_ = mw.WriteField("overwrite", "true")
	_ = mw.Close()
	resp, err := hc.Post(c.base+"/upload/image", mw.FormDataContentType(), &buf)
	if err != nil {
		b.Fatal(err)
	}
	var up struct {
		Name string `json:"name"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	graph["1"].(map[string]any)["inputs"].(map[string]any)["image"] = up.Name
	pb, _ := json.Marshal(map[string]any{"prompt": graph, "client_id": c.clientID})
	resp, err = hc.Post(c.base+"/prompt", "application/json", bytes.NewReader(pb))
	if err != nil {
		b.Fatal(err)
	}
	var pr struct {
		PromptID string `json:"prompt_id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&pr)
	resp.Body.Close()
	if pr.PromptID == "" {
		b.Fatalf("POST /prompt: status %d", resp.StatusCode)
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		typ, msg, err := c.ws.ReadMessage()
		if err != nil {
			b.Fatal(err)
		}
		if typ != websocket.TextMessage {
			continue
		}
		var m struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
			} `json:"data"`
		}
		if json.Unmarshal(msg, &m) == nil && m.Type == "execution_success" && m.Data.PromptID == pr.PromptID {
			break
		}
	}
	resp, err = hc.Get(c.base + "/history/" + pr.PromptID)
	if err != nil {
		b.Fatal(err)
	}
	var h map[string]struct {
		Outputs map[string]struct {
			Images []struct {
				Filename, Subfolder, Type string
			} `json:"images"`
		} `json:"outputs"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	imgs := h[pr.PromptID].Outputs["4"].Images
	if len(imgs) == 0 {
		b.Fatal("direct: no output in history")
	}
	q := url.Values{"filename": {imgs[0].Filename}, "subfolder": {imgs[0].Subfolder}, "type": {imgs[0].Type}}
	resp, err = hc.Get(c.base + "/view?" + q.Encode())
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return out
}

// upscaleGraph is the built-in upscale-image workflow.
func upscaleGraph() map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": ""}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": "RealESRGAN_x4plus.pth"}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "bench-direct", "images": []any{"3", 0}}},
	}
}

func testPNG(w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 4), uint8(y * 4), 128, 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}
