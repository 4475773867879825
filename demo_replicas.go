package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/redisproc"
)

// demoReplicas runs n comfygate replicas on free loopback ports, each
// configured by newConfig and sharing state in a redis-server started for
// the demo, and a round-robin front on listen that hands each new
// connection to the next replica. It stops everything when ctx ends.
func demoReplicas(ctx context.Context, newConfig func() (*config.Config, error), n int, redisBin, listen string, stdout io.Writer) error {
	redisURL, stopRedis, err := startDemoRedis(ctx, redisBin)
	if err != nil {
		return err
	}
	defer stopRedis()

	var cfgs []*config.Config
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for range n {
		cfg, err := newConfig()
		if err != nil {
			closeAll()
			return err
		}
		cfg.State.URL = redisURL
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeAll()
			return fmt.Errorf("listen for a replica: %w", err)
		}
		cfg.Listen = ln.Addr().String()
		cfgs, lns = append(cfgs, cfg), append(lns, ln)
	}
	frontLn, err := net.Listen("tcp", listen)
	if err != nil {
		closeAll()
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	var backends []string
	for _, ln := range lns {
		backends = append(backends, ln.Addr().String())
	}
	front := newRoundRobin(frontLn, backends)
	defer front.Close()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{}, n)
	done := make(chan error, n)
	for i := range n {
		go func() {
			done <- serve(runCtx, cfgs[i], nil, lns[i], stdout, func(string) { ready <- struct{}{} })
		}()
	}
	// The first error of any replica stops the others; every replica is
	// waited for before the front and Redis stop.
	var first error
	running := n
	wait := func() {
		err := <-done
		running--
		if err != nil && first == nil {
			first = err
		}
		cancel()
	}
	started := 0
	for started < n && runCtx.Err() == nil {
		select {
		case <-ready:
			started++
		case <-runCtx.Done():
		case err := <-done:
			running--
			first = err
			if first == nil && runCtx.Err() == nil {
				first = errors.New("a replica stopped before it was ready")
			}
			cancel()
		}
	}
	if started == n && runCtx.Err() == nil {
		printReplicas(stdout, cfgs, redisURL, "http://"+frontLn.Addr().String())
	}
	for running > 0 {
		wait()
	}
	return first
}

// printReplicas says where the replicas and the front are.
func printReplicas(w io.Writer, cfgs []*config.Config, redisURL, frontURL string) {
	fmt.Fprintf(w, "\ncomfygate demo: %d replicas sharing state in redis-server at %s, in front of", len(cfgs), redisURL)
	for _, in := range cfgs[0].Instances {
		fmt.Fprintf(w, " %s (%s)", in.Name, in.Address)
	}
	fmt.Fprintln(w)
	for i, cfg := range cfgs {
		fmt.Fprintf(w, "  replica %d: http://%s\n", i+1, cfg.Listen)
	}
	fmt.Fprintf(w, "  round robin: %s (each new connection goes to the next replica)\n", frontURL)
	first, second := "http://"+cfgs[0].Listen, "http://"+cfgs[1].Listen
	fmt.Fprintf(w, "\nRun a workflow through replica 1:\n  %s\n", demoCurl(first))
	fmt.Fprintf(w, "and read it through replica 2: curl %s/history/<prompt_id>  ·  %s/health  ·  %s/stats\n", second, second, second)
	fmt.Fprintf(w, "Jobs of the job API are shared too: submit through one replica, follow the job through any.\n\n")
}

// startDemoRedis runs redis-server on a free loopback port with no
// persistence in a temporary directory, and returns its URL once it
// answers PING, and the function that stops it and removes the directory.
func startDemoRedis(ctx context.Context, bin string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "comfygate-demo-redis-")
	if err != nil {
		return "", nil, err
	}
	srv, err := redisproc.Start(ctx, redisproc.Options{Bin: bin, Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	stop := func() {
		srv.Kill()
		os.RemoveAll(dir)
	}
	return srv.URL(), stop, nil
}

// roundRobin is the demo's front: a loopback TCP listener handing each new
// connection to the next backend in turn, so one client address reaches
// every replica. A backend that refuses is skipped for the next.
type roundRobin struct {
	ln       net.Listener
	backends []string
	mu       sync.Mutex
	next     int
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func newRoundRobin(ln net.Listener, backends []string) *roundRobin {
	rr := &roundRobin{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	rr.wg.Add(1)
	go rr.accept()
	return rr
}

func (rr *roundRobin) accept() {
	defer rr.wg.Done()
	for {
		c, err := rr.ln.Accept()
		if err != nil {
			return
		}
		rr.mu.Lock()
		start := rr.next
		rr.next = (rr.next + 1) % len(rr.backends)
		rr.mu.Unlock()
		if !rr.track(c) {
			c.Close()
			return
		}
		rr.wg.Add(1)
		go func() {
			defer rr.wg.Done()
			defer rr.untrack(c)
			rr.splice(c, start)
		}()
	}
}

// track records c for Close; false once closed.
func (rr *roundRobin) track(c net.Conn) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.conns == nil {
		return false
	}
	rr.conns[c] = struct{}{}
	return true
}

func (rr *roundRobin) untrack(c net.Conn) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.conns != nil {
		delete(rr.conns, c)
	}
}

// splice connects c to the first backend from start on that accepts and
// copies both ways until either side closes.
func (rr *roundRobin) splice(c net.Conn, start int) {
	defer c.Close()
	var up net.Conn
	for i := range rr.backends {
		var err error
		up, err = net.DialTimeout("tcp", rr.backends[(start+i)%len(rr.backends)], 5*time.Second)
		if err == nil {
			break
		}
	}
	if up == nil {
		return
	}
	if !rr.track(up) {
		up.Close()
		return
	}
	defer rr.untrack(up)
	defer up.Close()
	copied := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); copied <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); copied <- struct{}{} }()
	<-copied // one side ended: end both
	c.Close()
	up.Close()
	<-copied
}

// Close stops accepting, closes every spliced connection and waits for
// their goroutines.
func (rr *roundRobin) Close() {
	rr.ln.Close()
	rr.mu.Lock()
	conns := rr.conns
	rr.conns = nil
	rr.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	rr.wg.Wait()
}
