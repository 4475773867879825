package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fasthttp/websocket"
)

// directClient is a ComfyUI client doing a job's round trip itself, with
// one WebSocket kept open as the websocket API example and SDKs do.
type directClient struct {
	base     string
	clientID string
	ws       *websocket.Conn
	hc       *http.Client
	seq      int
}

func newDirectClient(ctx context.Context, addr string, hc *http.Client) (*directClient, error) {
	c := &directClient{base: "http://" + addr, clientID: "bench-direct", hc: hc}
	ws, resp, err := dialer(0).DialContext(ctx, "ws://"+addr+"/ws?clientId="+c.clientID, nil)
	if err != nil {
		return nil, err
	}
	_ = resp.Body.Close()
	c.ws = ws
	return c, nil
}

// run uploads img, submits the upscale workflow on it, waits for its
// execution_success on the socket, reads /history and downloads the output.
func (c *directClient) run(img []byte) ([]byte, error) {
	c.seq++
	body, ctype := multipartBody(fmt.Sprintf("bench-direct-%d.png", c.seq), img)
	resp, err := c.hc.Post(c.base+"/upload/image", ctype, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	var up struct {
		Name string `json:"name"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	g := upscaleGraph(up.Name)
	pb, _ := json.Marshal(map[string]any{"prompt": g, "client_id": c.clientID})
	id, err := submit(context.Background(), c.hc, c.base, pb)
	if err != nil {
		return nil, err
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		typ, msg, err := c.ws.ReadMessage()
		if err != nil {
			return nil, err
		}
		if typ != websocket.TextMessage || !bytes.Contains(msg, []byte("execution_success")) {
			continue
		}
		var m struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
			} `json:"data"`
		}
		if json.Unmarshal(msg, &m) == nil && m.Type == "execution_success" && m.Data.PromptID == id {
			break
		}
	}
	resp, err = c.hc.Get(c.base + "/history/" + id)
	if err != nil {
		return nil, err
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
	imgs := h[id].Outputs["4"].Images
	if len(imgs) == 0 {
		return nil, errors.New("no output in history")
	}
	q := url.Values{"filename": {imgs[0].Filename}, "subfolder": {imgs[0].Subfolder}, "type": {imgs[0].Type}}
	resp, err = c.hc.Get(c.base + "/view?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// upscaleGraph is the built-in upscale-image workflow on image.
func upscaleGraph(image string) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": image}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": "RealESRGAN_x4plus.pth"}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "bench-direct", "images": []any{"3", 0}}},
	}
}

// viaJobAPI runs the same job as one POST /api/upscale-image?wait=30s.
func viaJobAPI(hc *http.Client, gate string, body []byte) error {
	resp, err := hc.Post("http://"+gate+"/api/upscale-image?wait=30s", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var v struct {
		Status      string `json:"status"`
		ImageBase64 string `json:"image_base64"`
	}
	err = json.NewDecoder(resp.Body).Decode(&v)
	if err != nil || resp.StatusCode != 200 || v.Status != "completed" {
		return fmt.Errorf("job API: status %d %q %v", resp.StatusCode, v.Status, err)
	}
	out, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(v.ImageBase64, "data:image/png;base64,"))
	if err != nil || len(out) == 0 {
		return fmt.Errorf("job API result: %v", err)
	}
	return nil
}

func sectionJobs(ctx context.Context, o options, e *env, rep *report) error {
	hc := &http.Client{Timeout: 30 * time.Second}
	direct, err := newDirectClient(ctx, e.simAddr[0], hc)
	if err != nil {
		return err
	}
	defer direct.ws.Close()
	img := testPNG(64, 64)
	body, _ := json.Marshal(map[string]string{"image_base64": base64.StdEncoding.EncodeToString(img)})
	gate := e.gate[upSim]
	for range 3 { // warm connections and caches
		if _, err := direct.run(img); err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		if err := viaJobAPI(hc, gate, body); err != nil {
			return err
		}
	}
	cells := map[string]*cell{"direct": {}, "comfygate": {}}
	var allD, allG []float64
	for round := range o.rounds {
		var dd, dg []time.Duration
		for i := range o.jobs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			runD := func() error {
				t0 := time.Now()
				out, err := direct.run(img)
				if err == nil && len(out) == 0 {
					err = errors.New("direct: empty output")
				}
				dd = append(dd, time.Since(t0))
				return err
			}
			runG := func() error {
				t0 := time.Now()
				err := viaJobAPI(hc, gate, body)
				dg = append(dg, time.Since(t0))
				return err
			}
			first, second := runD, runG
			if (i+round)%2 == 1 {
				first, second = runG, runD
			}
			if err := first(); err != nil {
				return err
			}
			if err := second(); err != nil {
				return err
			}
		}
		sd, sg := summarize(micros(dd)), summarize(micros(dg))
		cells["direct"].add(sd.P50, sd.P50, sd.P99)
		cells["comfygate"].add(sg.P50, sg.P50, sg.P99)
		allD, allG = append(allD, micros(dd)...), append(allG, micros(dg)...)
	}
	d, g := cells["direct"], cells["comfygate"]
	added := g.P50 - d.P50
	rep.Tables = append(rep.Tables, &table{Section: "jobs", Title: fmt.Sprintf("Job API end to end (%d jobs a round, %d rounds, alternating)", o.jobs, o.rounds),
		Header: []string{"how", "p50", "p99", "added p50"},
		Rows: [][]string{
			{"direct round trip: upload, POST /prompt, WS execution_success, /history, /view", fmtUS(d.P50), fmtUS(d.P99), ""},
			{"comfygate: POST /api/upscale-image?wait=30s (image_base64 in, out)", fmtUS(g.P50), fmtUS(g.P99), fmtUS(added)},
		},
		Note: "The same upscale job (64×64 PNG) on the simulator (-delay 0s): the direct client talks to the first instance, comfygate to either; medians of the rounds' p50 and p99."})
	rep.Raw["jobs"] = map[string]any{"cells": cells, "direct_all": summarize(allD), "comfygate_all": summarize(allG)}
	rep.addTarget("job API added latency < 0.5 ms median (no polling)", fmtUS(added), added < 500)
	logf("  jobs: direct p50 %s p99 %s | comfygate p50 %s p99 %s | added %s", fmtUS(d.P50), fmtUS(d.P99), fmtUS(g.P50), fmtUS(g.P99), fmtUS(added))
	if o.waitJobs == 0 {
		return nil
	}
	peakRaw, accRaw, err := e.waitingJobs(ctx, o.waitJobs, true, rep)
	if err != nil {
		return err
	}
	peakMP, accMP, err := e.waitingJobs(ctx, o.waitJobs, false, rep)
	if err != nil {
		return err
	}
	name := "peak RSS < 64 MB with 1,000 jobs of 45 MB waiting"
	measured := fmt.Sprintf("%d sent: raw body %.0f MB (%d accepted), multipart %.0f MB (%d accepted)", o.waitJobs, peakRaw, accRaw, peakMP, accMP)
	ok := max(peakRaw, peakMP) < 64 && accRaw == o.waitJobs && accMP == o.waitJobs
	if ok && o.waitJobs < 1000 {
		rep.addUnsure(name, measured+"; 1,000 not run")
	} else {
		rep.addTarget(name, measured, ok)
	}
	return nil
}
