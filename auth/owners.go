package auth

import "sync"

// Owners remembers which key submitted each prompt (or job) and which key
// first used each WebSocket clientId. It is a cache like comfygate's other
// tables: after a restart nothing is owned, and isolation then shows a key
// nothing (it fails closed). At most max entries of each kind are kept,
// the oldest forgotten first.
type Owners struct {
	max int

	mu      sync.Mutex // guards the fields below
	prompts map[string]string
	clients map[string]string
	pOrder  []string // prompt ids in insertion order, for eviction
	cOrder  []string
}

// NewOwners returns an empty table keeping at most max prompts and max
// clientIds (auth.max_owners).
func NewOwners(max int) *Owners {
	return &Owners{max: max, prompts: map[string]string{}, clients: map[string]string{}}
}

// SetPrompt records that key submitted prompt id. The first owner stays:
// an answer naming a known id again (an idempotent replay) gives it to no
// one else.
func (o *Owners) SetPrompt(id, key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.prompts[id]; ok {
		return
	}
	o.prompts[id] = key
	o.pOrder = append(o.pOrder, id)
	o.pOrder = evict(o.pOrder, o.prompts, o.max)
}

// PromptOwner returns the key that submitted id ("" when unknown).
func (o *Owners) PromptOwner(id string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.prompts[id]
}

// ClaimClient gives clientID to key unless another key has it; it reports
// whether key may use it.
func (o *Owners) ClaimClient(clientID, key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if owner, ok := o.clients[clientID]; ok {
		return owner == key
	}
	o.clients[clientID] = key
	o.cOrder = append(o.cOrder, clientID)
	o.cOrder = evict(o.cOrder, o.clients, o.max)
	return true
}

func evict(order []string, m map[string]string, max int) []string {
	for len(order) > max {
		delete(m, order[0])
		order = order[1:]
	}
	if cap(order) > 4*max && len(order) < max { // let the dropped head be collected
		order = append([]string(nil), order...)
	}
	return order
}
