package main

import (
	"math"
	"testing"
	"time"
)

func TestMedianAndPercentile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc     string
		xs       []float64
		med, p99 float64
	}{
		{desc: "odd", xs: []float64{5, 1, 3}, med: 3, p99: 5},
		{desc: "even", xs: []float64{4, 1, 3, 2}, med: 2.5, p99: 4},
		{desc: "one", xs: []float64{7}, med: 7, p99: 7},
		{desc: "hundred", xs: seq(100), med: 50.5, p99: 99},
	} {
		if got := median(tc.xs); got != tc.med {
			t.Errorf("%s: median %v, want %v", tc.desc, got, tc.med)
		}
		if got := percentile(tc.xs, 99); got != tc.p99 {
			t.Errorf("%s: p99 %v, want %v", tc.desc, got, tc.p99)
		}
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 50)) {
		t.Error("empty input should give NaN")
	}
	xs := []float64{3, 1, 2}
	_ = median(xs)
	if xs[0] != 3 {
		t.Error("median sorted its input in place")
	}
}

func TestSummarizeAndRatio(t *testing.T) {
	t.Parallel()
	s := summarize(micros([]time.Duration{3 * time.Microsecond, time.Microsecond, 2 * time.Microsecond}))
	if s.N != 3 || s.P50 != 2 || s.P99 != 3 || s.Max != 3 {
		t.Errorf("summary %+v", s)
	}
	if r := ratio(3, 2); r != 1.5 {
		t.Errorf("ratio(3, 2) = %v", r)
	}
	if !math.IsNaN(ratio(1, 0)) {
		t.Error("ratio over zero should be NaN")
	}
}

func seq(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(i + 1)
	}
	return out
}

func TestBudgetCoversTheRoundsAsked(t *testing.T) {
	t.Parallel()
	o := options{rounds: 3, dur: 4 * time.Second, bigDur: 3 * time.Second, bigRounds: 2, wsClients: []int{1, 100, 1000},
		wsTicks: 40, jobs: 60, waitJobs: 20, fleet: []int{2, 20, 200}, fleetIdle: 10 * time.Second}
	// The wrk time alone of the get section: 4 rows at -d and 2 at -d/2,
	// over 4 targets and 3 rounds.
	if got, wrk := o.budget("get"), 4*4*3*4*time.Second+2*4*3*2*time.Second; got <= wrk {
		t.Errorf("get budget %s does not cover its %s of wrk runs", got, wrk)
	}
	longer := o
	longer.rounds, longer.dur = 5, 10*time.Second
	for _, s := range allSections {
		if o.budget(s) <= time.Minute {
			t.Errorf("%s: budget %s leaves no time to measure", s, o.budget(s))
		}
		if longer.budget(s) < o.budget(s) {
			t.Errorf("%s: budget shrank with more and longer rounds", s)
		}
	}
}
