package testkit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"time"
)

// PNG is a w×h image: a light background with a dark square in the middle
// (something for background removal to keep).
func PNG(w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.NRGBA{230, 230, 230, 255}
			if x > w/4 && x < 3*w/4 && y > h/4 && y < 3*h/4 {
				c = color.NRGBA{200, 30, 40, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img) // cannot fail for an in-memory NRGBA
	return buf.Bytes()
}

// Job is one job submitted through comfygate's job API.
type Job struct {
	ID   string
	Code int // the submission's HTTP status (202 when accepted)
	Body []byte
	Err  error
}

// SubmitJob posts img as {"image_base64"} to base+route (for example
// /api/remove-background).
func SubmitJob(ctx context.Context, hc *http.Client, base, route string, img []byte) Job {
	body, _ := json.Marshal(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(img)})
	var j Job
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+route, bytes.NewReader(body))
	if err != nil {
		j.Err = err
		return j
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		j.Err = err
		return j
	}
	defer resp.Body.Close()
	j.Code = resp.StatusCode
	j.Body, j.Err = io.ReadAll(resp.Body)
	if j.Code == http.StatusAccepted {
		var a struct {
			JobID string `json:"job_id"`
		}
		if err := json.Unmarshal(j.Body, &a); err != nil || a.JobID == "" {
			j.Err = fmt.Errorf("POST %s: answer without job_id: %s", route, j.Body)
		}
		j.ID = a.JobID
	}
	return j
}

// JobEnd is a job's final status view.
type JobEnd struct {
	Status string // completed, failed, cancelled; "unknown" (404); "" if ctx ended first
	Error  string // the status view's error, when failed
}

// WaitJob polls /api/jobs/{id}/status every 50 ms until the job is
// completed, failed or cancelled, the gateway does not know it (404), or
// ctx ends.
func WaitJob(ctx context.Context, hc *http.Client, base, id string) JobEnd {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/jobs/"+id+"/status", nil)
		resp, err := hc.Do(req)
		if err == nil {
			var v struct {
				Status string  `json:"status"`
				Error  *string `json:"error"`
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				return JobEnd{Status: "unknown", Error: string(b)}
			}
			if resp.StatusCode == http.StatusOK && json.Unmarshal(b, &v) == nil {
				switch v.Status {
				case "completed", "failed", "cancelled":
					end := JobEnd{Status: v.Status}
					if v.Error != nil {
						end.Error = *v.Error
					}
					return end
				}
			}
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return JobEnd{}
		case <-t.C:
		}
	}
}
