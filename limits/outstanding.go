package limits

import "sync"

// Outstanding caps the prompts one name (an API key, or a client IP with
// keys off) has accepted and not finished. It is comfygate's fair-share
// policy between keys: a key's new prompt waits at instances behind at
// most the other active keys' caps, however many prompts one of them
// tries to queue. A slot is reserved before submission and committed with
// the prompt id (or released) after it, so concurrent submissions cannot
// overshoot the cap.
type Outstanding struct {
	max int

	mu     sync.Mutex // guards byName
	byName map[string]*held
}

type held struct {
	ids     []string // accepted prompts, possibly finished since
	pending int      // reserved slots of submissions under way
}

// NewOutstanding returns a cap of max prompts per name; 0 means no cap.
func NewOutstanding(max int) *Outstanding {
	return &Outstanding{max: max, byName: map[string]*held{}}
}

// Reserve takes a slot for name unless it has max prompts outstanding;
// done reports whether an accepted prompt has finished (or is forgotten).
func (o *Outstanding) Reserve(name string, done func(id string) bool) bool {
	if o == nil || o.max <= 0 {
		return true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.byName[name]
	if h == nil {
		h = &held{}
		o.byName[name] = h
	}
	if len(h.ids)+h.pending >= o.max {
		kept := h.ids[:0]
		for _, id := range h.ids {
			if !done(id) {
				kept = append(kept, id)
			}
		}
		clear(h.ids[len(kept):])
		h.ids = kept
		if len(h.ids)+h.pending >= o.max {
			return false
		}
	}
	h.pending++
	return true
}

// Commit ends a reservation: with the id of the accepted prompt, or ""
// when the submission was not accepted.
func (o *Outstanding) Commit(name, id string) {
	if o == nil || o.max <= 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.byName[name]
	if h == nil {
		return
	}
	h.pending--
	if id != "" {
		h.ids = append(h.ids, id)
	}
	if h.pending <= 0 && len(h.ids) == 0 {
		delete(o.byName, name)
	}
}

// Held returns how many slots name holds (accepted, possibly finished
// since the last prune, plus reserved).
func (o *Outstanding) Held(name string) int {
	if o == nil {
		return 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if h := o.byName[name]; h != nil {
		return len(h.ids) + h.pending
	}
	return 0
}
