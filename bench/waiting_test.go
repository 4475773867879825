package bench

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
)

var (
	waitingJobs = flag.Int("waiting.jobs", 0, "TestWaitingJobsRSS: jobs of -waiting.mb left waiting in comfygate (0: skip)")
	waitingMB   = flag.Int("waiting.mb", 45, "TestWaitingJobsRSS: size of each job's image, in MB")
	waitingForm = flag.Bool("waiting.multipart", false, "TestWaitingJobsRSS: send the image as a multipart form instead of a raw body")
)

// TestWaitingJobsRSS measures comfygate's peak RSS while -waiting.jobs
// jobs of -waiting.mb MB images wait in its line: the comfygate binary
// runs as its own process in front of two simulated instances that are
// held (they run nothing), with jobs.max_concurrent 1; the images are sent
// one after another as raw image/png bodies (-waiting.multipart: as
// multipart forms). It reports the process's
// VmHWM and VmRSS, the bytes in its state directory and in the instances'
// input folders. Needs disk for every image (45 GB for 1,000 of 45 MB).
//
//	go test -run TestWaitingJobsRSS -v ./bench/ -args -waiting.jobs=1000
func TestWaitingJobsRSS(t *testing.T) {
	if *waitingJobs <= 0 {
		t.Skip("-waiting.jobs=N measures N waiting jobs")
	}
	n := *waitingJobs
	work := t.TempDir()
	bin := filepath.Join(work, "comfygate")
	build := exec.Command("go", "build", "-o", bin, "github.com/comfygate/comfygate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sims := testkit.Sims(t, 2, comfysim.Options{})
	for _, s := range sims {
		s.SetPaused(true)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	stateDir := filepath.Join(work, "state")
	per := int64(*waitingMB) << 20
	cfg := fmt.Sprintf(`listen: %q
log: {level: warn}
instances:
  - {name: sim0, address: %q}
  - {name: sim1, address: %q}
jobs:
  max_concurrent: 1
  max_waiting: %d
  max_waiting_bytes: %d
  max_image_bytes: %d
  state_dir: %q
`, addr, sims[0].Addr(), sims[1].Addr(), n+10, int64(n+10)*per, per+(1<<20), stateDir)
	cfgPath := filepath.Join(work, "comfygate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gate := exec.CommandContext(ctx, bin, "-config", cfgPath)
	gate.Dir = work
	var stderr bytes.Buffer
	gate.Stdout, gate.Stderr = &stderr, &stderr
	if err := gate.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = gate.Process.Kill(); _ = gate.Wait() }()
	base := "http://" + addr
	hc := &http.Client{Timeout: 2 * time.Minute}
	if !testkit.Poll(30*time.Second, func() bool {
		resp, err := hc.Get(base + "/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == 200
	}) {
		t.Fatalf("comfygate not healthy: %s", stderr.String())
	}
	pid := gate.Process.Pid
	start := procKB(t, pid, "VmRSS")
	img := noisePNG(t, per)
	body, contentType := img, "image/png"
	if *waitingForm {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		w, _ := mw.CreateFormFile("image", "big.png")
		_, _ = w.Write(img)
		_ = mw.Close()
		body, contentType = buf.Bytes(), mw.FormDataContentType()
	}
	t.Logf("image: %d bytes (%s); comfygate RSS at start %d KB", len(img), contentType, start)
	began := time.Now()
	for i := range n {
		resp, err := hc.Post(base+"/api/remove-background", contentType, bytes.NewReader(body))
		if err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("job %d: %d %s", i, resp.StatusCode, body)
		}
		if (i+1)%100 == 0 {
			t.Logf("%d jobs accepted: RSS %d KB, peak %d KB", i+1, procKB(t, pid, "VmRSS"), procKB(t, pid, "VmHWM"))
		}
	}
	took := time.Since(began)
	var line struct{ waiting int }
	resp, err := hc.Get(base + "/api/jobs?source=comfygate&status=pending")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if i := bytes.Index(b, []byte(`"waiting":`)); i >= 0 {
			fmt.Sscanf(string(b[i+len(`"waiting":`):]), "%d", &line.waiting)
		}
	}
	peak, rss := procKB(t, pid, "VmHWM"), procKB(t, pid, "VmRSS")
	t.Logf("%d jobs of %d MB accepted in %v (%d waiting in comfygate's line): comfygate peak RSS %.1f MB, RSS now %.1f MB; "+
		"state dir %.1f MB; instances' input folders %.1f MB and %.1f MB",
		n, *waitingMB, took.Round(time.Millisecond), line.waiting, float64(peak)/1024, float64(rss)/1024,
		float64(dirSize(stateDir))/(1<<20), float64(dirSize(sims[0].InputDir()))/(1<<20), float64(dirSize(sims[1].InputDir()))/(1<<20))
	if line.waiting < n-2 {
		t.Errorf("%d jobs waiting in comfygate, want about %d", line.waiting, n)
	}
}

// procKB reads a kB field of /proc/pid/status.
func procKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// noisePNG is an uncompressed opaque PNG of noise of about size bytes.
func noisePNG(t *testing.T, size int64) []byte {
	t.Helper()
	side := 1
	for int64(side+1)*int64(side+1)*3 <= size {
		side++
	}
	img := image.NewNRGBA(image.Rect(0, 0, side, side))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
		if i%4 == 3 {
			img.Pix[i] = 255
		}
	}
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.NoCompression}).Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
