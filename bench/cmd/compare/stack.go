package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/redisproc"
)

// env is one run's processes and what they listen on.
type env struct {
	root     string // the repository
	work     string // scratch directory of this run
	ps       *procs
	comfy    string // built comfygate binary
	miniup   string // built miniup binary
	tools    map[string]string
	hc       *http.Client
	started  bool
	proxies  bool
	fileSize map[string]int64 // /view files made, by name
	tickSeq  atomic.Int64     // the last bench.tick the minimal upstream sent

	simAddr  [2]string
	simOut   [2]string
	miniAddr [2]string
	miniProc *proc
	gate     map[string]string // upstream kind -> comfygate address
	gateProc map[string]*proc
	nginx    map[string]string
	haproxy  map[string]string
	redis    *redisproc.Server // the replicas' shared state; nil until started
}

// upstream kinds: the simulator and the minimal fasthttp upstream.
const (
	upSim  = "sim"
	upMini = "mini"
)

// targets in the order of the tables.
var targetNames = []string{"direct", "comfygate", "nginx", "haproxy"}

// addr is where a target of an upstream kind listens; direct is the first
// instance.
func (e *env) addr(kind, target string) string {
	switch target {
	case "direct":
		if kind == upSim {
			return e.simAddr[0]
		}
		return e.miniAddr[0]
	case "comfygate":
		return e.gate[kind]
	case "nginx":
		return e.nginx[kind]
	default:
		return e.haproxy[kind]
	}
}

// findTool looks up a program on PATH or in the sbin directories.
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// ensureTools finds nginx, haproxy and wrk, installing the Debian packages
// of the missing ones when allowed.
func ensureTools(ctx context.Context, install bool) (map[string]string, error) {
	pkgs := map[string]string{"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
	tools := map[string]string{}
	var missing []string
	for _, t := range []string{"nginx", "haproxy", "wrk"} {
		if p := findTool(t); p != "" {
			tools[t] = p
		} else {
			missing = append(missing, pkgs[t])
		}
	}
	if len(missing) == 0 {
		return tools, nil
	}
	hint := "apt-get install " + strings.Join(missing, " ")
	if !install {
		return nil, fmt.Errorf("missing %s (-install=false): %s", strings.Join(missing, ", "), hint)
	}
	var prefix []string
	if os.Geteuid() != 0 {
		if findTool("sudo") == "" {
			return nil, fmt.Errorf("missing %s and not root (no sudo): %s", strings.Join(missing, ", "), hint)
		}
		prefix = []string{"sudo", "-n"}
	}
	if findTool("apt-get") == "" {
		return nil, fmt.Errorf("missing %s and no apt-get: install them by hand", strings.Join(missing, ", "))
	}
	logf("installing %s", strings.Join(missing, " "))
	aptEnv := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	runApt := func(args ...string) error {
		all := append(append([]string{}, prefix...), append([]string{"apt-get"}, args...)...)
		cmd := exec.CommandContext(ctx, all[0], all[1:]...)
		cmd.Env = aptEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", strings.Join(all, " "), err, lastLines(out, 10))
		}
		return nil
	}
	if err := runApt(append([]string{"install", "-y", "-q"}, missing...)...); err != nil {
		// The package lists may be missing or old on a fresh machine.
		if err := runApt("update", "-q"); err != nil {
			return nil, err
		}
		if err := runApt(append([]string{"install", "-y", "-q"}, missing...)...); err != nil {
			return nil, err
		}
	}
	for _, t := range []string{"nginx", "haproxy", "wrk"} {
		if tools[t] = findTool(t); tools[t] == "" {
			return nil, fmt.Errorf("%s still missing after installing: %s", t, hint)
		}
	}
	return tools, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// build compiles comfygate and miniup into the work directory.
func (e *env) build(ctx context.Context) error {
	e.comfy = filepath.Join(e.work, "comfygate")
	e.miniup = filepath.Join(e.work, "miniup")
	for _, b := range [][2]string{{e.comfy, "."}, {e.miniup, "./bench/miniup"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b[0], b[1])
		cmd.Dir = e.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b[1], err, out)
		}
	}
	return nil
}

// startSims starts one sim process hosting n instances and returns their
// addresses.
func (e *env) startSims(ctx context.Context, name string, n int, args ...string) (*proc, []string, error) {
	all := append([]string{"sim", "-listen", "127.0.0.1:0", "-instances", strconv.Itoa(n)}, args...)
	if !slices.Contains(args, "-input-dir") {
		// Under the work directory, so nothing is left behind even when
		// the simulator has to be killed.
		dir := filepath.Join(e.work, name)
		all = append(all, "-input-dir", filepath.Join(dir, "input"), "-output-dir", filepath.Join(dir, "output"), "-temp-dir", filepath.Join(dir, "temp"))
	}
	p, err := e.ps.start(name, nil, e.comfy, all...)
	if err != nil {
		return nil, nil, err
	}
	lines, err := p.waitLines(ctx, "listening on http://", n, 60*time.Second)
	if err != nil {
		return nil, nil, err
	}
	addrs := make([]string, 0, n)
	for _, l := range lines {
		i := strings.Index(l, "http://")
		addrs = append(addrs, strings.TrimSpace(l[i+len("http://"):]))
	}
	return p, addrs, nil
}

// startGate starts comfygate with its default configuration in front of
// instances and waits until every instance is healthy with its socket up.
func (e *env) startGate(ctx context.Context, name string, instances []string, extraEnv ...string) (*proc, string, error) {
	return e.startGateYAML(ctx, name, instances, "", extraEnv...)
}

// startGateYAML is startGate with a configuration file holding yaml (the
// keys it sets; the rest keep their defaults). "" means no file.
func (e *env) startGateYAML(ctx context.Context, name string, instances []string, yaml string, extraEnv ...string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := e.startGateAt(ctx, name, addr, instances, yaml, extraEnv...)
	return p, addr, err
}

// startGateAt is startGateYAML listening on addr (a restart keeps its
// address).
func (e *env) startGateAt(ctx context.Context, name, addr string, instances []string, yaml string, extraEnv ...string) (*proc, error) {
	args := []string{"-listen", addr}
	if yaml != "" {
		path := filepath.Join(e.work, name+".yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-config", path)
	}
	envv := []string{"LOG_LEVEL=warn"}
	for i, a := range instances {
		envv = append(envv, fmt.Sprintf("COMFYUI_HOST_%d=%s", i+1, a))
	}
	envv = append(envv, extraEnv...)
	p, err := e.ps.start(name, envv, e.comfy, args...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, detail := e.gateReady(addr, len(instances))
		if ok {
			return p, nil
		}
		if p.exited() {
			return nil, fmt.Errorf("%s exited: %s", name, p.tail())
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s not ready after 90 s: %s", name, detail)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// gateReady reports whether comfygate at addr has n healthy instances
// with their sockets up.
func (e *env) gateReady(addr string, n int) (bool, string) {
	resp, err := e.hc.Get("http://" + addr + "/health")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var h struct {
		Instances []struct {
			Healthy bool `json:"healthy"`
			Socket  bool `json:"socket"`
		} `json:"comfyui_instances"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return false, err.Error()
	}
	up := 0
	for _, in := range h.Instances {
		if in.Healthy && in.Socket {
			up++
		}
	}
	return up == n && len(h.Instances) == n, fmt.Sprintf("%d of %d instances healthy with a socket", up, n)
}

// startBase starts the two simulated instances, the minimal upstream and a
// comfygate in front of each pair.
func (e *env) startBase(ctx context.Context) error {
	if e.started {
		return nil
	}
	e.started = true
	e.gate, e.gateProc = map[string]string{}, map[string]*proc{}
	for i := range 2 {
		dir := filepath.Join(e.work, fmt.Sprintf("sim%d", i))
		e.simOut[i] = filepath.Join(dir, "output")
		_, addrs, err := e.startSims(ctx, fmt.Sprintf("sim%d", i), 1, "-delay", "0s",
			"-input-dir", filepath.Join(dir, "input"), "-output-dir", e.simOut[i], "-temp-dir", filepath.Join(dir, "temp"))
		if err != nil {
			return err
		}
		e.simAddr[i] = addrs[0]
	}
	// The upload answer the minimal upstream gives is the simulator's own.
	ans, err := e.uploadOnce(e.simAddr[0])
	if err != nil {
		return fmt.Errorf("upload to the simulator: %w", err)
	}
	ansPath := filepath.Join(e.work, "upload-answer.json")
	if err := os.WriteFile(ansPath, ans, 0o644); err != nil {
		return err
	}
	var miniListen []string
	for i := range 2 {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		e.miniAddr[i] = a
		miniListen = append(miniListen, a)
	}
	e.miniProc, err = e.ps.start("miniup", nil, e.miniup, "-listen", strings.Join(miniListen, ","),
		"-capture", "http://"+e.simAddr[0], "-files", e.simOut[0], "-upload-answer", ansPath)
	if err != nil {
		return err
	}
	if _, err := e.miniProc.waitLines(ctx, "listening on", 2, 30*time.Second); err != nil {
		return err
	}
	for kind, inst := range map[string][]string{upSim: e.simAddr[:], upMini: e.miniAddr[:]} {
		p, addr, err := e.startGate(ctx, "comfygate-"+kind, inst)
		if err != nil {
			return err
		}
		e.gate[kind], e.gateProc[kind] = addr, p
	}
	return nil
}

// uploadFile is the 10 MB image the upload rows send.
const uploadName = "bench-upload.png"

// uploadOnce uploads a small image to addr and returns the answer body.
func (e *env) uploadOnce(addr string) ([]byte, error) {
	body, ctype := multipartBody(uploadName, testPNG(8, 8))
	resp, err := e.hc.Post("http://"+addr+"/upload/image", ctype, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return b, err
}

// multipartBody is an /upload/image form with the image and overwrite=true.
func multipartBody(name string, img []byte) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	w, _ := mw.CreateFormFile("image", name)
	_, _ = w.Write(img)
	_ = mw.WriteField("overwrite", "true")
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// startProxies starts nginx (1 worker, upstream keepalive) and HAProxy (1
// thread), each round-robin over the same two instances of each kind.
func (e *env) startProxies(ctx context.Context) error {
	if e.proxies {
		return nil
	}
	e.proxies = true
	e.nginx, e.haproxy = map[string]string{}, map[string]string{}
	var ngServers, ngUpstreams, haParts strings.Builder
	for _, kind := range []string{upSim, upMini} {
		inst := e.simAddr
		if kind == upMini {
			inst = e.miniAddr
		}
		na, err := freeAddr()
		if err != nil {
			return err
		}
		ha, err := freeAddr()
		if err != nil {
			return err
		}
		e.nginx[kind], e.haproxy[kind] = na, ha
		fmt.Fprintf(&ngUpstreams, "\tupstream %s { server %s; server %s; keepalive 64; keepalive_requests 1000000; }\n", kind, inst[0], inst[1])
		fmt.Fprintf(&ngServers, `	server {
		listen %s;
		location / {
			proxy_pass http://%s;
			proxy_http_version 1.1;
			proxy_set_header Host $host;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
		}
	}
`, na, kind)
		fmt.Fprintf(&haParts, "frontend f_%s\n\tbind %s\n\tdefault_backend b_%s\nbackend b_%s\n\tbalance roundrobin\n\tserver s0 %s\n\tserver s1 %s\n",
			kind, ha, kind, kind, inst[0], inst[1])
	}
	w := e.work
	ngConf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 16384; }
http {
	access_log off;
	client_body_temp_path %[1]s/nginx-body;
	proxy_temp_path %[1]s/nginx-proxy;
	fastcgi_temp_path %[1]s/nginx-fcgi;
	uwsgi_temp_path %[1]s/nginx-uwsgi;
	scgi_temp_path %[1]s/nginx-scgi;
	client_max_body_size 100m;
	keepalive_requests 1000000;
	keepalive_timeout 120s;
	proxy_buffering off;
	proxy_request_buffering off;
	proxy_read_timeout 1h;
	map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
%[2]s%[3]s}
`, w, ngUpstreams.String(), ngServers.String())
	ngPath := filepath.Join(w, "nginx.conf")
	if err := os.WriteFile(ngPath, []byte(ngConf), 0o644); err != nil {
		return err
	}
	haConf := `global
	nbthread 1
	maxconn 8000
defaults
	mode http
	timeout connect 5s
	timeout client 1h
	timeout server 1h
	timeout tunnel 1h
	timeout http-keep-alive 120s
	option http-keep-alive
` + haParts.String()
	haPath := filepath.Join(w, "haproxy.cfg")
	if err := os.WriteFile(haPath, []byte(haConf), 0o644); err != nil {
		return err
	}
	ng, err := e.ps.start("nginx", nil, e.tools["nginx"], "-c", ngPath, "-p", w, "-e", filepath.Join(w, "nginx-error.log"))
	if err != nil {
		return err
	}
	ha, err := e.ps.start("haproxy", nil, e.tools["haproxy"], "-f", haPath, "-db")
	if err != nil {
		return err
	}
	for _, kind := range []string{upSim, upMini} {
		for _, t := range []struct {
			p    *proc
			addr string
		}{{ng, e.nginx[kind]}, {ha, e.haproxy[kind]}} {
			if err := e.waitHTTP(ctx, t.p, "http://"+t.addr+"/system_stats"); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitHTTP waits for a 200 from url while p runs.
func (e *env) waitHTTP(ctx context.Context, p *proc, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := e.hc.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
