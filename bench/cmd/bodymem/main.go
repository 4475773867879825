// Command bodymem measures comfygate's peak memory while it receives
// concurrent large base64 job submissions: it builds comfygate, starts two
// simulated ComfyUI instances (comfygate sim, each its own process) and
// comfygate in front of them with the default configuration, sends -n
// submissions of {"image_base64": "<-mb MB of base64>"} at once to
// POST /api/remove-background, waits for every job to complete, and
// reports comfygate's peak RSS (VmHWM of /proc/<pid>/status) and its RSS
// before the submissions. Linux only.
//
//	go run ./bench/cmd/bodymem            # 10 submissions of 46 MB
//	go run ./bench/cmd/bodymem -n 10 -mb 46 -max-mb 128
//
// With -max-mb it exits non-zero when the peak is over that many MB.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 10, "concurrent submissions")
	mb := flag.Float64("mb", 46, "size of each submission's base64 text, in MB (10^6 bytes)")
	maxMB := flag.Float64("max-mb", 0, "fail when comfygate's peak RSS is over this many MiB (0: report only)")
	keep := flag.Bool("keep", false, "keep the scratch directory (logs, configuration)")
	flag.Parse()
	if err := run(*n, *mb, *maxMB, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bodymem:", err)
		os.Exit(1)
	}
}

func run(n int, mb, maxMB float64, keep bool) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "comfygate-bodymem-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(work)
	} else {
		fmt.Println("scratch directory:", work)
	}
	bin := filepath.Join(work, "bin", "comfygate")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}

	var procs []*exec.Cmd
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			_ = syscall.Kill(-procs[i].Process.Pid, syscall.SIGTERM)
			done := make(chan struct{})
			go func(c *exec.Cmd) { _ = c.Wait(); close(done) }(procs[i])
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-procs[i].Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
	}()
	start := func(name string, args ...string) (*exec.Cmd, error) {
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(work, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, err
		}
		procs = append(procs, cmd)
		return cmd, nil
	}

	var sims []string
	for i := range 2 {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		if _, err := start(fmt.Sprintf("sim%d", i+1), "sim", "-listen", addr, "-delay", "50ms"); err != nil {
			return err
		}
		sims = append(sims, addr)
	}
	for _, a := range sims {
		if err := waitHTTP("http://"+a+"/system_stats", 30*time.Second); err != nil {
			return fmt.Errorf("simulator %s: %w", a, err)
		}
	}
	gate, err := freeAddr()
	if err != nil {
		return err
	}
	cfg := "listen: " + gate + "\ninstances:\n"
	for i, a := range sims {
		cfg += fmt.Sprintf("  - name: sim%d\n    address: %s\n", i+1, a)
	}
	cfg += "log:\n  level: warn\n  format: text\n"
	cfgPath := filepath.Join(work, "comfygate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	gw, err := start("comfygate", "serve", "-config", cfgPath)
	if err != nil {
		return err
	}
	base := "http://" + gate
	if err := waitHTTP(base+"/health", 30*time.Second); err != nil {
		return fmt.Errorf("comfygate: %w", err)
	}

	body, imgBytes, err := submission(int(mb * 1e6))
	if err != nil {
		return err
	}
	pid := gw.Process.Pid
	idleKB, _ := statusKB(pid, "VmRSS")
	startHWM, _ := statusKB(pid, "VmHWM")

	hc := &http.Client{Timeout: 10 * time.Minute}
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = submit(hc, base, body)
		}()
	}
	wg.Wait()
	submitted := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, id := range ids {
		if err := waitCompleted(ctx, hc, base, id); err != nil {
			return err
		}
	}
	peakKB, err := statusKB(pid, "VmHWM")
	if err != nil {
		return err
	}
	fmt.Printf("comfygate: %d concurrent submissions of %.1f MB base64 (%.1f MB image) accepted in %s, all completed\n",
		n, float64(len(body))/1e6, float64(imgBytes)/1e6, submitted.Round(10*time.Millisecond))
	fmt.Printf("comfygate RSS before: %.1f MiB (peak until then %.1f MiB); peak RSS (VmHWM) through the run: %.1f MiB\n",
		float64(idleKB)/1024, float64(startHWM)/1024, float64(peakKB)/1024)
	if maxMB > 0 && float64(peakKB)/1024 > maxMB {
		return fmt.Errorf("peak RSS %.1f MiB is over -max-mb %.0f", float64(peakKB)/1024, maxMB)
	}
	return nil
}

// submission is the JSON body {"image_base64": ...} of about size bytes:
// a small PNG (16x16 random pixels, cheap for the simulators to run)
// carrying a private ancillary chunk of random bytes that decoders skip,
// so the image's bytes are what the size says.
func submission(size int) (body []byte, imgBytes int, err error) {
	img := image.NewNRGBA(image.Rect(0, 0, 16, 16))
	r := rand.New(rand.NewPCG(7, 11))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	var small bytes.Buffer
	if err := png.Encode(&small, img); err != nil {
		return nil, 0, err
	}
	pad := max(size*3/4-small.Len()-12, 0)
	data := make([]byte, pad)
	for i := 0; i+8 <= len(data); i += 8 {
		binary.LittleEndian.PutUint64(data[i:], r.Uint64())
	}
	// The chunk goes right after IHDR (8-byte signature + 25-byte IHDR).
	p := small.Bytes()
	var out bytes.Buffer
	out.Write(p[:33])
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)))
	copy(hdr[4:], "blOb")
	out.Write(hdr[:])
	out.Write(data)
	crc := crc32.NewIEEE()
	crc.Write(hdr[4:])
	crc.Write(data)
	_ = binary.Write(&out, binary.BigEndian, crc.Sum32())
	out.Write(p[33:])
	if _, err := png.Decode(bytes.NewReader(out.Bytes())); err != nil {
		return nil, 0, fmt.Errorf("the padded PNG does not decode: %w", err)
	}
	body, err = json.Marshal(map[string]string{"image_base64": base64.StdEncoding.EncodeToString(out.Bytes())})
	return body, out.Len(), err
}

func submit(hc *http.Client, base string, body []byte) (string, error) {
	resp, err := hc.Post(base+"/api/remove-background", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var v struct {
		JobID string `json:"job_id"`
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(raw, &v) != nil || v.JobID == "" {
		return "", fmt.Errorf("submission: %d %s", resp.StatusCode, raw)
	}
	return v.JobID, nil
}

func waitCompleted(ctx context.Context, hc *http.Client, base, id string) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/jobs/"+id+"/status?wait=30s", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		var v struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		switch {
		case err != nil:
			return fmt.Errorf("job %s: status: %w", id, err)
		case v.Status == "completed":
			return nil
		case v.Status == "failed" || v.Status == "cancelled":
			return fmt.Errorf("job %s %s: %s", id, v.Status, v.Error)
		}
	}
}

func waitHTTP(url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering 200 after %s (last: %v)", url, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statusKB reads a field such as VmHWM of /proc/<pid>/status, in kB.
func statusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// repoRoot is the module's root (where go.mod is), from the working
// directory up.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run it inside the repository (no go.mod found)")
		}
		dir = parent
	}
}
