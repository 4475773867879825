package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
)

// clientsPerIP spreads client sockets over loopback source addresses so
// comfygate's per-IP connection cap (limits.max_conns_per_ip, 1024) is not
// what is measured.
const clientsPerIP = 500

// dialer is a WebSocket dialer from 127.0.0.(2 + i/clientsPerIP).
func dialer(i int) *websocket.Dialer {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/clientsPerIP))}
	nd := &net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
	return &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 10 * time.Second,
		ReadBufferSize: 4096, WriteBufferSize: 1024}
}

// dialClients opens n sockets to url (clientId <prefix>-<i>), each having
// read its first frame, 32 at a time.
func dialClients(ctx context.Context, url, prefix string, n int) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, resp, err := dialer(i).DialContext(ctx, url+"?clientId="+prefix+"-"+strconv.Itoa(i), nil)
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			_ = resp.Body.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := c.ReadMessage(); err != nil {
				_ = c.Close()
				errs <- fmt.Errorf("client %d: first frame: %w", i, err)
				return
			}
			_ = c.SetReadDeadline(time.Time{})
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
}

// tickRound connects n clients to url, has the first minimal instance send
// ticks events one after the other (each once every client got the last),
// and returns every client's latency per event (µs) and the events that
// did not reach every client within a second.
func (e *env) tickRound(ctx context.Context, url string, n, ticks int) ([]float64, int, error) {
	conns, err := dialClients(ctx, url, fmt.Sprintf("tick-%d", time.Now().UnixNano()), n)
	if err != nil {
		return nil, 0, err
	}
	var (
		want atomic.Int64 // the seq now awaited
		got  atomic.Int64 // clients that got it
		done atomic.Pointer[chan struct{}]
		wg   sync.WaitGroup
	)
	lats := make([][]float64, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				seq, sent, ok := parseTick(data)
				if !ok {
					continue
				}
				lats[i] = append(lats[i], float64(now-sent)/1e3)
				if seq == want.Load() && got.Add(1) == int64(n) {
					close(*done.Load())
				}
			}
		}()
	}
	missed := 0
	tickURL := "http://" + e.miniAddr[0] + "/bench/tick"
	for range ticks {
		ch := make(chan struct{})
		done.Store(&ch)
		got.Store(0)
		want.Store(e.tickSeq.Add(1))
		resp, err := e.hc.Get(tickURL)
		if err != nil {
			closeAll(conns)
			wg.Wait()
			return nil, 0, err
		}
		resp.Body.Close()
		select {
		case <-ch:
		case <-time.After(time.Second):
			missed++
		case <-ctx.Done():
		}
		time.Sleep(2 * time.Millisecond)
	}
	closeAll(conns)
	wg.Wait()
	var all []float64
	for _, l := range lats {
		all = append(all, l...)
	}
	return all, missed, ctx.Err()
}

// parseTick reads seq and t of a bench.tick frame without a JSON decoder.
func parseTick(b []byte) (seq, t int64, ok bool) {
	if !bytes.Contains(b, []byte(`"bench.tick"`)) {
		return 0, 0, false
	}
	num := func(key string) (int64, bool) {
		i := bytes.Index(b, []byte(key))
		if i < 0 {
			return 0, false
		}
		rest := bytes.TrimLeft(b[i+len(key):], " ")
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		v, err := strconv.ParseInt(string(rest[:j]), 10, 64)
		return v, err == nil
	}
	seq, ok1 := num(`"seq":`)
	t, ok2 := num(`"t":`)
	return seq, t, ok1 && ok2
}

func sectionWS(ctx context.Context, o options, e *env, rep *report) error {
	gate := e.gateProc[upMini]
	// Idle clients first, on a comfygate that has had no client yet.
	before := rssKB(gate.pid())
	conns, err := dialClients(ctx, "ws://"+e.gate[upMini]+"/ws", "idle", o.wsIdle)
	if err != nil {
		return fmt.Errorf("idle clients: %w", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	after := rssKB(gate.pid())
	closeAll(conns)
	perClient := float64(after-before) / float64(o.wsIdle)
	rep.Tables = append(rep.Tables, &table{Section: "ws", Title: "Idle client WebSockets (comfygate in front of the minimal upstream)",
		Header: []string{"clients", "comfygate RSS before", "after", "per client"},
		Rows: [][]string{{strconv.Itoa(o.wsIdle), fmt.Sprintf("%.1f MB", float64(before)/1024), fmt.Sprintf("%.1f MB", float64(after)/1024),
			fmt.Sprintf("%.1f KB", perClient)}}})
	rep.addTarget("<= 10 KB RSS per idle WebSocket client", fmt.Sprintf("%.1f KB (%d clients)", perClient, o.wsIdle), perClient <= 10)
	rep.Raw["ws_idle"] = map[string]any{"clients": o.wsIdle, "rss_before_kb": before, "rss_after_kb": after, "per_client_kb": perClient}
	time.Sleep(time.Second) // let comfygate drop the closed sockets

	t := &table{Section: "ws", Title: fmt.Sprintf("WebSocket event latency, instance to client (%d events a round, %d rounds, minimal upstream)", o.wsTicks, o.rounds),
		Header: []string{"clients", "direct p50 · p99", "comfygate p50 · p99", "added p50", "added p99", "events that missed a client"}}
	raw := map[string]any{}
	worstP99 := 0.0
	for _, n := range o.wsClients {
		cells := map[string]*cell{"direct": {}, "comfygate": {}}
		missed := 0
		for round := range o.rounds {
			order := []string{"direct", "comfygate"}
			if round%2 == 1 {
				order = []string{"comfygate", "direct"}
			}
			for _, target := range order {
				url := "ws://" + e.miniAddr[0] + "/ws"
				if target == "comfygate" {
					url = "ws://" + e.gate[upMini] + "/ws"
				}
				lats, m, err := e.tickRound(ctx, url, n, o.wsTicks)
				if err != nil {
					return fmt.Errorf("%d clients via %s: %w", n, target, err)
				}
				missed += m
				s := summarize(lats)
				cells[target].add(s.P50, s.P50, s.P99)
				time.Sleep(200 * time.Millisecond)
			}
		}
		d, g := cells["direct"], cells["comfygate"]
		addP50, addP99 := g.P50-d.P50, g.P99-d.P99
		worstP99 = max(worstP99, addP99)
		t.Rows = append(t.Rows, []string{strconv.Itoa(n), fmtUS(d.P50) + " · " + fmtUS(d.P99), fmtUS(g.P50) + " · " + fmtUS(g.P99),
			fmtUS(addP50), fmtUS(addP99), strconv.Itoa(missed)})
		raw[strconv.Itoa(n)] = cells
		logf("  ws %4d clients: direct p50 %s p99 %s | comfygate p50 %s p99 %s", n, fmtUS(d.P50), fmtUS(d.P99), fmtUS(g.P50), fmtUS(g.P99))
	}
	t.Note = "Each event is stamped by the instance (bench/miniup) as it sends it and timed by every client on arrival (same machine clock); medians of the rounds' p50 and p99. Direct clients connect to the instance itself; comfygate's clients share its one socket to the instance."
	rep.Tables = append(rep.Tables, t)
	rep.Raw["ws_latency"] = raw
	rep.addTarget("WebSocket event added latency p99 < 1 ms", fmt.Sprintf("worst added p99 %s (over %v clients)", fmtUS(worstP99), o.wsClients), worstP99 < 1000)
	return nil
}

// rssKB is pid's VmRSS in kB (0 when unreadable).
func rssKB(pid int) int64 {
	kb, _ := procStatusKB(pid, "VmRSS")
	return kb
}
