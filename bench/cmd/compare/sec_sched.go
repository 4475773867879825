package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// historyCount is how many prompts the instance at addr has finished.
func historyCount(hc *http.Client, addr string) (int, error) {
	resp, err := hc.Get("http://" + addr + "/history")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var h map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return 0, err
	}
	return len(h), nil
}

// burst submits n prompts at once, each to bases[i % len(bases)], waits
// until the instances finished all of them and returns the makespan (first
// submission to last finish) and how many each instance ran.
func burst(ctx context.Context, hc *http.Client, bases []string, instances []string, n int, seed *int) (time.Duration, []int, error) {
	before := make([]int, len(instances))
	for i, a := range instances {
		c, err := historyCount(hc, a)
		if err != nil {
			return 0, nil, err
		}
		before[i] = c
	}
	t0 := time.Now()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		*seed++
		body := promptBody("bench-sched", *seed)
		base := bases[i%len(bases)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := submit(ctx, hc, base, body); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		split := make([]int, len(instances))
		total := 0
		for i, a := range instances {
			c, err := historyCount(hc, a)
			if err != nil {
				return 0, nil, err
			}
			split[i] = c - before[i]
			total += split[i]
		}
		if total >= n {
			return time.Since(t0), split, nil
		}
		if time.Now().After(deadline) {
			var queues []string
			for _, a := range instances {
				queues = append(queues, fmt.Sprintf("%s idle %v", a, queueEmpty(hc, a)))
			}
			return 0, nil, fmt.Errorf("%d of %d prompts finished after a minute (split %v; %s)", total, n, split, strings.Join(queues, ", "))
		}
		select {
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func sectionSched(ctx context.Context, o options, e *env, rep *report) error {
	const delay = 50 * time.Millisecond
	hc := &http.Client{Timeout: 30 * time.Second}
	var procsUp []*proc
	defer func() {
		for _, p := range procsUp {
			e.ps.stopOne(p)
		}
	}()
	sim := func(name string, d time.Duration) (string, error) {
		p, addrs, err := e.startSims(ctx, name, 1, "-delay", d.String())
		if err != nil {
			return "", err
		}
		procsUp = append(procsUp, p)
		return addrs[0], nil
	}
	gate := func(name, yaml string, inst ...string) (string, error) {
		p, addr, err := e.startGateYAML(ctx, name, inst, yaml)
		if err != nil {
			return "", err
		}
		procsUp = append(procsUp, p)
		return "http://" + addr, nil
	}
	a, err := sim("sched-a", delay)
	if err != nil {
		return err
	}
	b, err := sim("sched-b", delay)
	if err != nil {
		return err
	}
	slow, err := sim("sched-slow", 2*delay)
	if err != nil {
		return err
	}
	g1, err := gate("sched-gate-1", "", a)
	if err != nil {
		return err
	}
	g2, err := gate("sched-gate-2", "", a, b)
	if err != nil {
		return err
	}
	// Waiting prompts move to the instance that runs out of work
	// (routing.move_pending, off by default).
	gSlow, err := gate("sched-gate-slow", "routing:\n  move_pending: true\n", a, slow)
	if err != nil {
		return err
	}
	seed := 1 << 20
	const nScale, nMake, nBurst = 40, 40, 20

	// 2-instance scaling: the same prompts through comfygate on one
	// instance and on two.
	var t1, t2 []float64
	for range o.rounds {
		d1, _, err := burst(ctx, hc, []string{g1}, []string{a}, nScale, &seed)
		if err != nil {
			return fmt.Errorf("scaling, 1 instance: %w", err)
		}
		d2, _, err := burst(ctx, hc, []string{g2}, []string{a, b}, nScale, &seed)
		if err != nil {
			return fmt.Errorf("scaling, 2 instances: %w", err)
		}
		t1, t2 = append(t1, nScale/d1.Seconds()), append(t2, nScale/d2.Seconds())
	}
	scale := median(t2) / median(t1)

	// Makespan with one instance twice as slow: comfygate against sending
	// the prompts round-robin straight to the instances.
	var mg, mrr []float64
	var splitsSlow []string
	for range o.rounds {
		dg, sg, err := burst(ctx, hc, []string{gSlow}, []string{a, slow}, nMake, &seed)
		if err != nil {
			return fmt.Errorf("makespan via comfygate: %w", err)
		}
		drr, _, err := burst(ctx, hc, []string{"http://" + a, "http://" + slow}, []string{a, slow}, nMake, &seed)
		if err != nil {
			return fmt.Errorf("makespan round-robin: %w", err)
		}
		mg, mrr = append(mg, dg.Seconds()), append(mrr, drr.Seconds())
		splitsSlow = append(splitsSlow, fmt.Sprintf("%d/%d", sg[0], sg[1]))
	}
	better := 1 - median(mg)/median(mrr)

	// Burst split over two idle instances.
	var splits []string
	worst := 0
	for range max(o.rounds, 5) {
		_, s, err := burst(ctx, hc, []string{g2}, []string{a, b}, nBurst, &seed)
		if err != nil {
			return fmt.Errorf("burst: %w", err)
		}
		splits = append(splits, fmt.Sprintf("%d/%d", s[0], s[1]))
		worst = max(worst, s[0], s[1])
	}

	rep.Tables = append(rep.Tables, &table{Section: "sched", Title: fmt.Sprintf("Scheduling (simulated GPUs, %s per prompt; %d rounds, medians)", delay, o.rounds),
		Header: []string{"run", "comfygate", "baseline", "result"},
		Rows: [][]string{
			{fmt.Sprintf("%d prompts at once, 2 instances vs 1", nScale), fmt.Sprintf("%.1f prompts/s on 2", median(t2)), fmt.Sprintf("%.1f prompts/s on 1", median(t1)), fmt.Sprintf("%.2fx", scale)},
			{fmt.Sprintf("makespan of %d prompts, one instance 2x slower (move_pending on)", nMake), fmt.Sprintf("%.2f s (split fast/slow %s)", median(mg), strings.Join(splitsSlow, ", ")),
				fmt.Sprintf("%.2f s round-robin", median(mrr)), fmt.Sprintf("%.0f%% shorter", better*100)},
			{fmt.Sprintf("burst of %d prompts over 2 idle instances", nBurst), strings.Join(splits, ", "), "10/10", fmt.Sprintf("worst %d/%d", nBurst-worst, worst)},
		},
		Note: "Prompts are POST /prompt of EmptyImage → ImageInvert → SaveImage, sent all at once; a run ends when the instances' histories hold every prompt. The round-robin baseline sends the prompts straight to the instances, alternating."})
	rep.Raw["sched"] = map[string]any{"delay_ms": delay.Milliseconds(), "throughput_1": t1, "throughput_2": t2,
		"makespan_comfygate_s": mg, "makespan_round_robin_s": mrr, "splits_slow": splitsSlow, "burst_splits": splits}
	rep.addTarget("2-instance scaling >= 1.95x", fmt.Sprintf("%.4fx", scale), scale >= 1.95)
	rep.addTarget("makespan with one instance 2x slower >= 25% better than round-robin",
		fmt.Sprintf("%.0f%% (%.2f s vs %.2f s)", better*100, median(mg), median(mrr)), better >= 0.25)
	rep.addTarget("burst of 20 over 2 idle instances never worse than 8/12", "splits "+strings.Join(splits, ", "), worst <= 12)
	logf("  scaling %.2fx, makespan %.0f%% better, bursts %s", scale, better*100, strings.Join(splits, " "))
	return nil
}
