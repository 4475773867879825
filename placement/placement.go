// Package placement is comfygate's one placement policy: which instances
// may run a prompt (those carrying the labels it asks for and having, in
// the fleet's catalogue, every node class and model it names) and which of
// them it had better run on (model affinity: the instance that last ran
// the same models, unless it is busier by more than routing.affinity_margin).
// ComfyUI's POST /prompt through the proxy and the job API both place
// through it; the instance itself is then chosen by the prompt table
// (least outstanding work among the eligible, the preferred one first).
package placement

import (
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/upstream"
)

// Fleet is what the policy asks of the instance pool.
type Fleet interface {
	Instances() []*upstream.Instance
}

// Policy places prompts. Its zero catalogue (nil) places on labels alone.
type Policy struct {
	fleet  Fleet
	cat    *catalogue.Store
	margin atomic.Int64
	// affinity, when set, counts a placement with a model key: whether it
	// found an instance to prefer.
	affinity func(hit bool)
}

// New returns the policy over fleet with catalogue cat (nil: none) and
// routing.affinity_margin margin (negative: no affinity); affinity, when
// not nil, is told of every placement that could use affinity.
func New(fleet Fleet, cat *catalogue.Store, margin int, affinity func(hit bool)) *Policy {
	p := &Policy{fleet: fleet, cat: cat, affinity: affinity}
	p.margin.Store(int64(margin))
	return p
}

// SetMargin applies a reloaded routing.affinity_margin.
func (p *Policy) SetMargin(margin int) { p.margin.Store(int64(margin)) }

// Request is what a prompt asks for.
type Request struct {
	// Graph is the prompt's node graph (its node classes and models).
	Graph json.RawMessage
	// Labels must all be carried by the instance (X-Comfygate-Pool, a
	// workflow's labels); nil: any.
	Labels map[string]string
}

// Decision is where a prompt may and had better run.
type Decision struct {
	// Eligible reports whether an instance may run it; nil: any.
	Eligible func(*upstream.Instance) bool
	// Prefer is the instance that ran the same models last, when it is
	// not much busier than the others; nil: none.
	Prefer *upstream.Instance
	// ModelKey names the prompt's set of models, for Ran.
	ModelKey string
}

// Refusal says why no instance can run a prompt.
type Refusal struct {
	// NoLabels: no configured instance carries Labels.
	NoLabels bool
	Labels   map[string]string
	// Verdict is the catalogue's (when NoLabels is false).
	Verdict catalogue.Verdict
}

// Error is the refusal in one line.
func (r *Refusal) Error() string {
	msg := "no instance can run it"
	if len(r.Labels) > 0 && !r.NoLabels {
		msg += " among those labelled " + FormatLabels(r.Labels)
	}
	return msg + r.Detail()
}

// Detail is why, after a colon: what no instance has, what each lacks.
func (r *Refusal) Detail() string {
	if r.NoLabels {
		return ": no instance carries the labels " + FormatLabels(r.Labels)
	}
	var msg string
	if len(r.Verdict.Nowhere) > 0 {
		msg = ": no instance has " + strings.Join(r.Verdict.Nowhere, ", ")
	} else {
		msg = ": no single instance has every node class and model it needs"
	}
	for _, m := range r.Verdict.Missing {
		msg += "; " + m.Instance + " lacks " + strings.Join(m.Lacks, ", ")
	}
	return msg
}

// Place decides where the prompt of r may and had better run, or why it
// cannot run anywhere.
func (p *Policy) Place(r Request) (Decision, *Refusal) {
	var d Decision
	var among func(*upstream.Instance) bool
	if len(r.Labels) > 0 {
		labels := r.Labels
		among = func(inst *upstream.Instance) bool { return inst.HasLabels(labels) }
		any := false
		for _, inst := range p.fleet.Instances() {
			any = any || (!inst.State().Leaving() && among(inst))
		}
		if !any {
			return d, &Refusal{NoLabels: true, Labels: r.Labels}
		}
	}
	if p.cat == nil {
		d.Eligible = among
		return d, nil
	}
	needs := catalogue.PromptNeeds(r.Graph)
	v := p.cat.Decide(needs, among)
	if !v.Runnable {
		return d, &Refusal{Labels: r.Labels, Verdict: v}
	}
	d.Eligible, d.ModelKey = v.Eligible, needs.ModelKey
	margin := int(p.margin.Load())
	d.Prefer = p.cat.Affine(needs.ModelKey, v.Eligible, margin)
	if needs.ModelKey != "" && margin >= 0 && p.affinity != nil {
		p.affinity(d.Prefer != nil)
	}
	return d, nil
}

// Ran records that a prompt placed with d runs on inst, for affinity.
func (p *Policy) Ran(inst *upstream.Instance, d Decision) {
	if p.cat != nil {
		p.cat.Ran(inst, d.ModelKey)
	}
}

// FormatLabels writes labels as X-Comfygate-Pool takes them, sorted.
func FormatLabels(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
