package auth

import (
	"container/list"
	"sync"
)

// Owners remembers which key submitted each prompt (or job) and which key
// first used each WebSocket clientId. It is a cache like comfygate's other
// tables: after a restart nothing is owned, and isolation then shows a key
// nothing (it fails closed).
//
// Each key has its own bound: at most max prompts and max clientIds per
// key, that key's oldest forgotten first, so no key's churn can make
// another key's records go. A clientId held by a live WebSocket
// (HoldClient) is never forgotten; its key's other clientIds go instead,
// and once all of them are held the key holds more than max (as many as
// it has sockets open).
type Owners struct {
	max int

	mu      sync.Mutex             // guards the fields below
	prompts map[string]*owned      // prompt or job id -> its record
	clients map[string]*owned      // clientId -> its record
	keys    map[string]*keyRecords // key name -> its records, oldest first
}

// owned is one record: its key, its place in the key's order, and for a
// clientId how many live sockets hold it.
type owned struct {
	key   string
	el    *list.Element
	holds int
}

// keyRecords are one key's records in the order they were made (a
// released clientId counts as made when it was released).
type keyRecords struct {
	prompts, clients list.List // of ids
}

// NewOwners returns an empty table keeping, for each key, at most max
// prompts and max clientIds (auth.max_owners).
func NewOwners(max int) *Owners {
	return &Owners{max: max, prompts: map[string]*owned{}, clients: map[string]*owned{}, keys: map[string]*keyRecords{}}
}

// recordsLocked returns key's records, made on first use. o.mu is held.
func (o *Owners) recordsLocked(key string) *keyRecords {
	r := o.keys[key]
	if r == nil {
		r = &keyRecords{}
		o.keys[key] = r
	}
	return r
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
	r := o.recordsLocked(key)
	o.prompts[id] = &owned{key: key, el: r.prompts.PushBack(id)}
	for r.prompts.Len() > o.max {
		delete(o.prompts, r.prompts.Remove(r.prompts.Front()).(string))
	}
}

// PromptOwner returns the key that submitted id ("" when unknown).
func (o *Owners) PromptOwner(id string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p := o.prompts[id]; p != nil {
		return p.key
	}
	return ""
}

// ClaimClient gives clientID to key unless another key has it; it reports
// whether key may use it.
func (o *Owners) ClaimClient(clientID, key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.claimLocked(clientID, key) != nil
}

// HoldClient claims clientID for key, as ClaimClient does, and holds it
// for one live socket: until the matching ReleaseClient it is never
// forgotten. It reports false (and holds nothing) when another key has it.
func (o *Owners) HoldClient(clientID, key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.claimLocked(clientID, key)
	if c == nil {
		return false
	}
	c.holds++
	return true
}

// ReleaseClient ends one HoldClient of clientID by key. The clientId stays
// key's, as its newest record, until key's own later claims push it out.
func (o *Owners) ReleaseClient(clientID, key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.clients[clientID]
	if c == nil || c.key != key || c.holds == 0 {
		return
	}
	c.holds--
	if c.holds == 0 {
		r := o.keys[key]
		r.clients.MoveToBack(c.el)
		o.evictClientsLocked(r, nil)
	}
}

// claimLocked returns clientID's record, made for key when it has none,
// or nil when another key has it. o.mu is held.
func (o *Owners) claimLocked(clientID, key string) *owned {
	if c := o.clients[clientID]; c != nil {
		if c.key != key {
			return nil
		}
		return c
	}
	r := o.recordsLocked(key)
	c := &owned{key: key, el: r.clients.PushBack(clientID)}
	o.clients[clientID] = c
	o.evictClientsLocked(r, c)
	return c
}

// evictClientsLocked forgets r's oldest clientIds that no socket holds,
// except keep (the one just claimed), until r has at most max. Those it
// passes move to the back (they are in use), so each is passed once.
// o.mu is held.
func (o *Owners) evictClientsLocked(r *keyRecords, keep *owned) {
	for n := r.clients.Len(); r.clients.Len() > o.max && n > 0; n-- {
		el := r.clients.Front()
		id := el.Value.(string)
		if c := o.clients[id]; c.holds > 0 || c == keep {
			r.clients.MoveToBack(el)
			continue
		}
		r.clients.Remove(el)
		delete(o.clients, id)
	}
}
