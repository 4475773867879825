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
