package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// wrkReport is the Lua end hook every wrk run gets: one JSON line with
// the exact counts and latency percentiles (µs).
const wrkReport = `
done = function(s, lat, req)
  io.write(string.format("BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50\":%d,\"p99\":%d,\"mean\":%.1f}\n",
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout,
    lat:percentile(50), lat:percentile(99), lat.mean))
end
`

// wrkResult is one wrk run.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Bytes      int64   `json:"bytes"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"`
	Timeout    int64   `json:"timeout"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	Mean       float64 `json:"mean"`
}

func (r wrkResult) rps() float64 {
	return float64(r.Requests) / (float64(r.DurationUS) / 1e6)
}

func (r wrkResult) mbps() float64 {
	return float64(r.Bytes) / 1e6 / (float64(r.DurationUS) / 1e6)
}

func (r wrkResult) errors() int64 { return r.Connect + r.Read + r.Write + r.Status + r.Timeout }

// wrkScript writes a wrk script: an optional request setup, then the
// report hook; it returns its path.
func (e *env) wrkScript(name, setup string) (string, error) {
	p := filepath.Join(e.work, name+".lua")
	return p, os.WriteFile(p, []byte(setup+wrkReport), 0o644)
}

// uploadScript is the setup of a POST of the body in bodyPath.
func uploadScript(bodyPath, ctype string) string {
	return fmt.Sprintf(`local f = assert(io.open(%q, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = %q
`, bodyPath, ctype)
}

// runWrk runs wrk -t1 against url.
func (e *env) runWrk(ctx context.Context, url string, conns int, d time.Duration, script string) (wrkResult, error) {
	var r wrkResult
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))) + "s",
		"--timeout", "30s", "-s", script, url}
	cmd := exec.CommandContext(ctx, e.tools["wrk"], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	_, js, ok := strings.Cut(out.String(), "BENCHJSON ")
	if !ok {
		return r, fmt.Errorf("wrk %s: no report\n%s", url, out.String())
	}
	js, _, _ = strings.Cut(js, "\n")
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return r, fmt.Errorf("wrk report %q: %w", js, err)
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk %s: no request completed\n%s", url, out.String())
	}
	return r, nil
}
