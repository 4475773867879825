package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// report is everything one run measured.
type report struct {
	Meta      meta              `json:"meta"`
	Durations map[string]string `json:"section_durations"`
	Rows      []*row            `json:"compare"`
	Tables    []*table          `json:"tables"`
	Targets   []target          `json:"targets"`
	Failures  map[string]string `json:"failures,omitempty"`
	Raw       map[string]any    `json:"raw"`
}

type meta struct {
	Date     string `json:"date"`
	Machine  string `json:"machine"`
	Command  string `json:"command"`
	Nginx    string `json:"nginx"`
	HAProxy  string `json:"haproxy"`
	Wrk      string `json:"wrk"`
	Settings string `json:"settings"`
	Elapsed  string `json:"elapsed"`
}

// row is one piece of work measured against every target.
type row struct {
	Section  string           `json:"section"`
	Work     string           `json:"work"`
	Upstream string           `json:"upstream"`
	Unit     string           `json:"unit"` // "req/s", "MB/s" or "µs" (latency rows)
	Cells    map[string]*cell `json:"targets"`
}

// cell is one target's rounds of one row.
type cell struct {
	Rounds    []float64 `json:"rounds"` // rate per round, or p50 (µs) for latency rows
	P50Rounds []float64 `json:"p50_us_rounds"`
	P99Rounds []float64 `json:"p99_us_rounds"`
	Value     float64   `json:"median"`
	P50       float64   `json:"p50_us"`
	P99       float64   `json:"p99_us"`
	PeakRSSMB float64   `json:"peak_rss_mb,omitempty"`
	Errors    int64     `json:"errors,omitempty"`
	// BytesPerResponse is what wrk read per answer (headers included).
	BytesPerResponse float64 `json:"bytes_per_response,omitempty"`
}

func (c *cell) add(value, p50, p99 float64) {
	c.Rounds = append(c.Rounds, value)
	c.P50Rounds = append(c.P50Rounds, p50)
	c.P99Rounds = append(c.P99Rounds, p99)
	c.Value, c.P50, c.P99 = median(c.Rounds), median(c.P50Rounds), median(c.P99Rounds)
}

// latency reports whether lower values are better in r.
func (r *row) latency() bool { return r.Unit == "µs" }

// speedup is comfygate's speed over target's: a rate ratio, or the inverse
// latency ratio; > 1 means comfygate is faster.
func (r *row) speedup(target string) float64 {
	g, o := r.Cells["comfygate"], r.Cells[target]
	if g == nil || o == nil {
		return math.NaN()
	}
	if r.latency() {
		return ratio(o.Value, g.Value)
	}
	return ratio(g.Value, o.Value)
}

// added is comfygate's p50 minus direct's (µs).
func (r *row) added() float64 {
	g, d := r.Cells["comfygate"], r.Cells["direct"]
	if g == nil || d == nil {
		return math.NaN()
	}
	return g.P50 - d.P50
}

// table is a free-form result table.
type table struct {
	Section string     `json:"section"`
	Title   string     `json:"title"`
	Header  []string   `json:"header"`
	Rows    [][]string `json:"rows"`
	Note    string     `json:"note,omitempty"`
}

// target is one of the bench's targets and what this run measured for it.
type target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      string `json:"met"` // "yes", "no" or "-" (not measured)
}

func newReport(o options, e *env) *report {
	return &report{
		Meta: meta{
			Date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
			Machine: machine(),
			Command: o.commandRun,
			Nginx:   toolVersion(findTool("nginx"), "-v"),
			HAProxy: toolVersion(findTool("haproxy"), "-v"),
			Wrk:     toolVersion(findTool("wrk"), "-v"),
			Settings: fmt.Sprintf("wrk -t1 -c%d, %d alternating rounds of %s (10 MB rows: -c%d, %s; 500 MB: %d rounds); medians of rounds",
				o.conns, o.rounds, o.dur, o.bigConns, o.bigDur, o.bigRounds),
		},
		Durations: map[string]string{},
		Failures:  map[string]string{},
		Raw:       map[string]any{},
	}
}

// table is the table named id, made with title, note and header the
// first time.
func (r *report) table(id, title, note string, header ...string) *table {
	for _, t := range r.Tables {
		if t.Section == id {
			return t
		}
	}
	t := &table{Section: id, Title: title, Note: note, Header: header}
	r.Tables = append(r.Tables, t)
	return t
}

func (r *report) failed(section string, err error) { r.Failures[section] = err.Error() }

func (r *report) addTarget(name, measured string, met bool) {
	m := "no"
	if met {
		m = "yes"
	}
	r.Targets = append(r.Targets, target{Target: name, Measured: measured, Met: m})
}

// addUnsure records a target this run could not settle (measured at a
// smaller scale than the target names).
func (r *report) addUnsure(name, measured string) {
	r.Targets = append(r.Targets, target{Target: name, Measured: measured, Met: "-"})
}

// fmtNum prints a figure with a precision that suits its size.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// fmtUS prints microseconds as µs or ms.
func fmtUS(us float64) string {
	if math.IsNaN(us) {
		return "–"
	}
	if math.Abs(us) >= 1000 {
		return fmtNum(us/1000) + " ms"
	}
	return fmtNum(us) + " µs"
}

func (r *row) cellText(t string) string {
	c := r.Cells[t]
	if c == nil {
		return "–"
	}
	var s string
	if r.latency() {
		s = "p50 " + fmtUS(c.P50) + " · p99 " + fmtUS(c.P99)
	} else {
		s = fmtNum(c.Value) + " " + r.Unit + " · p99 " + fmtUS(c.P99)
	}
	if c.PeakRSSMB > 0 {
		s += fmt.Sprintf(" · peak RSS %.0f MB", c.PeakRSSMB)
	}
	if c.Errors > 0 {
		s += fmt.Sprintf(" · %d errors", c.Errors)
	}
	return s
}

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "comfygate bench, %s · %s\n\n", r.Meta.Date, r.Meta.Machine)
	fmt.Fprintf(&b, "`%s` · %s · nginx: %s · HAProxy: %s · elapsed %s\n\n", r.Meta.Command, r.Meta.Settings,
		strings.TrimPrefix(r.Meta.Nginx, "nginx version: "), strings.TrimPrefix(r.Meta.HAProxy, "HAProxy version "), r.Meta.Elapsed)
	if len(r.Rows) > 0 {
		b.WriteString("| work | upstream | direct (1 instance) | comfygate | nginx | HAProxy | comfygate ÷ nginx | comfygate ÷ HAProxy | comfygate p50 − direct p50 |\n")
		b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		for _, row := range r.Rows {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.Work, row.Upstream,
				row.cellText("direct"), row.cellText("comfygate"), row.cellText("nginx"), row.cellText("haproxy"),
				fmtNum(row.speedup("nginx")), fmtNum(row.speedup("haproxy")), fmtUS(row.added()))
		}
		b.WriteString("\nUpstream `sim`: two `comfygate sim -delay 0s` processes; `mini`: the minimal fasthttp upstream (bench/miniup) answering the simulator's bytes. " +
			"Proxies round-robin over the two instances; direct is the first instance alone. " +
			"Ratios are comfygate's speed over the other's (rates divided; for latency rows the other's p50 over comfygate's): > 1 means comfygate is faster.\n\n")
	}
	for _, t := range r.Tables {
		fmt.Fprintf(&b, "**%s**\n\n| %s |\n|%s\n", t.Title, strings.Join(t.Header, " | "), strings.Repeat(" --- |", len(t.Header)))
		for _, row := range t.Rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		}
		if t.Note != "" {
			fmt.Fprintf(&b, "\n%s\n", t.Note)
		}
		b.WriteString("\n")
	}
	if len(r.Targets) > 0 {
		b.WriteString("**Targets**\n\n| target | measured | met |\n| --- | --- | --- |\n")
		for _, t := range r.Targets {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Target, t.Measured, t.Met)
		}
		b.WriteString("\n")
	}
	if len(r.Failures) > 0 {
		b.WriteString("**Sections that failed**\n\n")
		for s, err := range r.Failures {
			fmt.Fprintf(&b, "- %s: %s\n", s, strings.ReplaceAll(err, "\n", " "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// write saves the markdown and the JSON under dir and returns their paths.
func (r *report) write(dir string) (string, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	md := filepath.Join(dir, "bench-"+stamp+".md")
	js := filepath.Join(dir, "bench-"+stamp+".json")
	if err := os.WriteFile(md, []byte(r.markdown()), 0o644); err != nil {
		return "", "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", err
	}
	return md, js, os.WriteFile(js, b, 0o644)
}
