package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// fleetPoint is one fleet size's figures.
type fleetPoint struct {
	Instances  int            `json:"instances"`
	RSSMB      float64        `json:"rss_mb"`
	CPUPercent float64        `json:"idle_cpu_percent_of_a_core"`
	Submit     latencySummary `json:"submit"`
	ReadyS     float64        `json:"ready_seconds"`
}

func sectionFleet(ctx context.Context, o options, e *env, rep *report) error {
	hc := &http.Client{Timeout: 30 * time.Second}
	var points []fleetPoint
	for _, n := range o.fleet {
		p, err := e.fleetPoint(ctx, hc, n, o.fleetIdle)
		if err != nil {
			return fmt.Errorf("%d instances: %w", n, err)
		}
		points = append(points, p)
		logf("  fleet %3d: RSS %.1f MB, idle CPU %.2f%% of a core, submit p50 %s p99 %s", n, p.RSSMB, p.CPUPercent, fmtUS(p.Submit.P50), fmtUS(p.Submit.P99))
	}
	t := &table{Section: "fleet", Title: fmt.Sprintf("Fleet size (one sim process hosting every instance, -delay 0s; idle CPU over %s)", o.fleetIdle),
		Header: []string{"instances", "comfygate RSS", "RSS per instance (marginal)", "idle CPU (% of a core)", "idle CPU per instance", "POST /prompt p50 · p99", "ready after"}}
	first := points[0]
	var perInstKB, cpuPerInst float64
	for _, p := range points {
		marginal := "–"
		if p.Instances > first.Instances {
			perInstKB = (p.RSSMB - first.RSSMB) * 1024 / float64(p.Instances-first.Instances)
			marginal = fmt.Sprintf("%.0f KB", perInstKB)
		}
		cpuPerInst = p.CPUPercent / float64(p.Instances)
		t.Rows = append(t.Rows, []string{strconv.Itoa(p.Instances), fmt.Sprintf("%.1f MB", p.RSSMB), marginal,
			fmt.Sprintf("%.2f%%", p.CPUPercent), fmt.Sprintf("%.4f%%", cpuPerInst),
			fmtUS(p.Submit.P50) + " · " + fmtUS(p.Submit.P99), fmt.Sprintf("%.1f s", p.ReadyS)})
	}
	t.Note = "RSS per instance is the growth over the smallest fleet divided by the added instances. Idle: every instance healthy with its socket up, no client; defaults (health checks every 30 s, socket pings every 2 s). POST /prompt: 200 prompts, one every 4 ms."
	rep.Tables = append(rep.Tables, t)
	rep.Raw["fleet"] = points
	last := points[len(points)-1]
	rep.addTarget(fmt.Sprintf("idle cost per instance < 100 KB RSS and < 0.1%% of a core at %d instances", last.Instances),
		fmt.Sprintf("%.0f KB, %.4f%% of a core", perInstKB, cpuPerInst), perInstKB < 100 && cpuPerInst < 0.1)
	return nil
}

// fleetPoint starts n simulated instances in one process and comfygate in
// front of them, measures comfygate idle and its submit latency, and stops
// both.
func (e *env) fleetPoint(ctx context.Context, hc *http.Client, n int, idle time.Duration) (fleetPoint, error) {
	pt := fleetPoint{Instances: n}
	sp, addrs, err := e.startSims(ctx, "fleet-sim-"+strconv.Itoa(n), n, "-delay", "0s")
	if err != nil {
		return pt, err
	}
	defer e.ps.stopOne(sp)
	t0 := time.Now()
	gp, gate, err := e.startGate(ctx, "fleet-gate-"+strconv.Itoa(n), addrs)
	if err != nil {
		return pt, err
	}
	defer e.ps.stopOne(gp)
	pt.ReadyS = time.Since(t0).Seconds()
	// Let start-up work (catalogue reads, first probes) finish.
	select {
	case <-ctx.Done():
		return pt, ctx.Err()
	case <-time.After(3 * time.Second):
	}
	c0, err := cpuSeconds(gp.pid())
	if err != nil {
		return pt, err
	}
	w0 := time.Now()
	select {
	case <-ctx.Done():
		return pt, ctx.Err()
	case <-time.After(idle):
	}
	c1, err := cpuSeconds(gp.pid())
	if err != nil {
		return pt, err
	}
	pt.CPUPercent = (c1 - c0) / time.Since(w0).Seconds() * 100
	pt.RSSMB = float64(rssKB(gp.pid())) / 1024

	var lats []time.Duration
	next := time.Now()
	for i := range 200 {
		time.Sleep(time.Until(next))
		next = next.Add(4 * time.Millisecond)
		t := time.Now()
		if _, err := submit(ctx, hc, "http://"+gate, promptBody("bench-fleet", i)); err != nil {
			return pt, err
		}
		lats = append(lats, time.Since(t))
	}
	pt.Submit = summarize(micros(lats))
	return pt, nil
}
