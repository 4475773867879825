package jobs

// progress maps one prompt's execution events to 0-100 over the whole
// workflow: every node of the graph is one equal share; a node counts as
// done once it executed (or was cached), and the running node adds the
// fraction its progress events report. The reported value never goes
// down (a resubmitted prompt starts over, the number does not) and reaches
// 100 only at completion. Not safe for concurrent use; the Service's mutex
// guards it.
type progress struct {
	nodes    map[string]*graphNode // the graph: only its nodes count
	done     map[string]bool
	cur      string  // node running now, "" if none
	curFrac  float64 // 0..1 of cur
	reported int
}

func newProgress(nodes map[string]*graphNode) progress {
	return progress{nodes: nodes, done: map[string]bool{}}
}

// restart forgets the per-node state (a new attempt of the prompt); the
// reported value stays.
func (p *progress) restart() {
	clear(p.done)
	p.cur, p.curFrac = "", 0
}

// cached marks nodes served from the instance's cache.
func (p *progress) cached(ids []string) {
	for _, id := range ids {
		p.finish(id)
	}
}

// executing notes that node id started; the node before it is done.
func (p *progress) executing(id string) {
	if _, ok := p.nodes[id]; !ok || id == p.cur {
		return // a node expanded at run time, or no news
	}
	if p.cur != "" {
		p.finish(p.cur)
	}
	if !p.done[id] {
		p.cur, p.curFrac = id, 0
	}
}

// step records value/max of node id's own progress.
func (p *progress) step(id string, value, max float64) {
	if _, ok := p.nodes[id]; !ok {
		return
	}
	if id != p.cur {
		p.executing(id)
	}
	if id != p.cur || p.cur == "" || max <= 0 {
		return
	}
	f := value / max
	if f < 0 {
		f = 0
	}
	if f > 1 {
		f = 1
	}
	p.curFrac = f
}

// finish marks node id done.
func (p *progress) finish(id string) {
	if _, ok := p.nodes[id]; !ok {
		return
	}
	p.done[id] = true
	if p.cur == id {
		p.cur, p.curFrac = "", 0
	}
}

// percent returns the monotonic 0-99 value while running.
func (p *progress) percent() int {
	if p.reported >= 100 || len(p.nodes) == 0 {
		return p.reported
	}
	units := float64(len(p.done))
	if p.cur != "" {
		units += p.curFrac
	}
	v := int(100 * units / float64(len(p.nodes)))
	if v > 99 {
		v = 99
	}
	if v > p.reported {
		p.reported = v
	}
	return p.reported
}

// complete sets 100.
func (p *progress) complete() { p.reported = 100 }
