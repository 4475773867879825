package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Events carries the WebSocket events of a clientId between replicas: the
// replica that has an event for a clientId it holds no socket of
// publishes it, and the replica holding the clientId's socket follows it.
// Each clientId has a stream of its recent events (the catch-up of a
// socket that reconnects, on any replica) and a channel for live delivery.
// Payloads are opaque here: the proxy encodes them.
//
// In memory (one replica) Events does nothing: the proxy does not use it.
type Events interface {
	// Publish appends payload to clientID's stream and sends it to the
	// replica following clientID, in the order of the calls. It never
	// blocks: false when its queue is full (the event is lost).
	Publish(clientID string, payload []byte) bool
	// Follow delivers clientID's events to f: first the entries of its
	// stream after the position its last socket left at (Leave), then
	// live ones, each once and in stream order, then f.CaughtUp once the
	// first catch-up is done. Publishes of this replica made before the
	// call come through it too. It never blocks: an error when its queue
	// is full (nothing is followed then).
	Follow(clientID string, f Follower) error
	// Leave ends Follow for clientID: the leftovers (what its socket was
	// given and did not write, and that came from no stream entry) are
	// published, then seen (the last entry its socket wrote) is recorded
	// as where its next socket, on any replica, starts. The channel
	// reports when that is done, or failed; it never blocks.
	Leave(clientID string, seen Position, leftovers [][]byte) <-chan error
}

// Follower receives a followed clientId's events. Its calls are never
// concurrent and come in stream order.
type Follower interface {
	// Event is one entry of the stream.
	Event(ev Event)
	// CaughtUp says the missed entries have been delivered: live events
	// follow. start is where the catch-up began (the socket has seen
	// everything up to it).
	CaughtUp(start Position)
}

// Event is one entry of a clientId's stream.
type Event struct {
	Pos     Position
	Payload []byte
}

// Position is a place in a clientId's stream: the stream's epoch (the id
// of the entry that created it, so a stream lost and made again has
// another) and an entry id ("" before the first entry).
type Position struct {
	Epoch, ID string
}

// IsZero reports a position in no stream.
func (p Position) IsZero() bool { return p.Epoch == "" }

// after reports whether p comes after q: later in the same epoch, or in
// another epoch than q's (a stream made again).
func (p Position) after(q Position) bool {
	if p.Epoch != q.Epoch {
		return true
	}
	return idLess(q.ID, p.ID)
}

// idLess compares two stream ids "<ms>-<seq>" ("" is before every id).
func idLess(a, b string) bool {
	if a == "" {
		return b != ""
	}
	am, as := splitID(a)
	bm, bs := splitID(b)
	return am < bm || am == bm && as < bs
}

func splitID(id string) (ms, seq uint64) {
	m, s, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(s, 10, 64)
	return ms, seq
}

// EventOptions bound a store's Events.
type EventOptions struct {
	// Window is how long a clientId's stream lives after its last entry
	// (the catch-up window); at least 1 s.
	Window time.Duration
	// MaxLen bounds a stream's entries (MAXLEN ~, so a little more may
	// stay); at least 1.
	MaxLen int
	// Failed is told of every event that could not cross to the other
	// replicas (n of them: a full queue, or Redis not answering); may be nil.
	Failed func(n int)
	// Log receives the failures, at most one line per logEvery.
	Log *slog.Logger
}

// Events returns the store's Events: a no-op in memory; in Redis one
// publisher and one subscription connection for the process, started by
// the first call (the options of later calls are ignored) and stopped by
// Close.
func (s *Store) Events(o EventOptions) Events {
	if s == nil || s.rdb == nil {
		return memEvents{}
	}
	s.eventsOnce.Do(func() { s.events = newRedisEvents(s.rdb, o) })
	return s.events
}

// memEvents is Events of one replica: there is nobody to tell.
type memEvents struct{}

func (memEvents) Publish(string, []byte) bool { return false }
func (memEvents) Follow(string, Follower) error {
	return errors.New("state: events between replicas need a shared store")
}
func (memEvents) Leave(string, Position, [][]byte) <-chan error {
	ch := make(chan error, 1)
	ch <- nil
	return ch
}

// Bounds of the Redis side of Events.
const (
	eventQueue     = 4096                   // operations waiting for the publisher
	eventBatch     = 256                    // operations sent in one round trip
	publishTimeout = time.Second            // one batch's round trip
	catchUpTimeout = 2 * time.Second        // one catch-up's read
	followBound    = 3 * time.Second        // a follow's catch-up at the latest
	logEvery       = 10 * time.Second       // at most one failure line per this
	resubscribeMin = 100 * time.Millisecond // first wait after a failed receive
	resubscribeMax = 2 * time.Second
)

// Key names of a clientId's events: one hash tag, so one script may touch
// them all on a Redis Cluster.
func eventKeys(clientID string) (stream, epoch, seen, channel string) {
	base := hashedTag("events:", clientID)
	return base, base + ":epoch", base + ":seen", base + ":live"
}

// publishEvent appends one event to a stream (creating its epoch with the
// stream; a stream whose epoch is gone loses its older entries, which
// belong to no epoch a reader knows), renews the window on both keys and
// publishes "<epoch> <id> <payload>" on the channel. It returns the id.
var publishEvent = redis.NewScript(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = id
  redis.call('SET', KEYS[2], epoch)
  redis.call('XTRIM', KEYS[1], 'MINID', id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], epoch .. ' ' .. id .. ' ' .. ARGV[1])
return id`)

// catchUp reads a stream's epoch and its entries after a position: the
// one given (ARGV[1] epoch, ARGV[2] id), or with ARGV[1] "" the one the
// last socket left at (the seen key). An entry id in another epoch than
// the stream's counts for nothing: every entry is read. It returns
// {epoch, start epoch, start id, entries}; epoch false without a stream.
var catchUp = redis.NewScript(`
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {false, '', '', {}} end
local e, id = ARGV[1], ARGV[2]
if e == '' then
  local s = redis.call('GET', KEYS[3])
  if s then
    local sp = string.find(s, ' ', 1, true)
    if sp then e, id = string.sub(s, 1, sp - 1), string.sub(s, sp + 1) end
  end
end
local from = '-'
if e == epoch and id ~= '' then from = '(' .. id else e, id = epoch, '' end
return {epoch, e, id, redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[3])}`)

// opKind is what the publisher does with an op.
type opKind uint8

const (
	opPublish opKind = iota
	opSeen           // record a socket's position, then unfollow
	opFollow         // subscribe (after every earlier publish is in)
)

type eventOp struct {
	kind     opKind
	clientID string
	payload  []byte
	seen     Position
	w        *watch
	done     chan error // opSeen
}

// redisEvents is Events in Redis: a publisher goroutine sends the ops in
// order, a batch per round trip (XADD and PUBLISH in one script per
// event); a receiver goroutine reads the one subscription connection.
type redisEvents struct {
	rdb    *redis.Client
	ps     *redis.PubSub
	window time.Duration
	maxLen int
	failed func(int)
	log    *slog.Logger

	q      chan eventOp
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex        // guards watches
	watches map[string]*watch // by channel

	lastLog atomic.Int64 // unix nanos of the last failure line
	unseen  atomic.Int64 // failures since that line
}

// watch is one followed clientId.
type watch struct {
	clientID                        string
	stream, epoch, seenKey, channel string
	f                               Follower

	gone atomic.Bool // unfollowed: deliver nothing more

	mu      sync.Mutex // orders delivery; guards the fields below
	syncing int        // catch-ups running: live events wait in buf
	buf     []Event
	last    Position // the last entry delivered
	started bool     // the first catch-up is done
}

func newRedisEvents(rdb *redis.Client, o EventOptions) *redisEvents {
	e := &redisEvents{
		rdb:     rdb,
		window:  max(o.Window, time.Second),
		maxLen:  max(o.MaxLen, 1),
		failed:  o.Failed,
		log:     o.Log,
		q:       make(chan eventOp, eventQueue),
		watches: map[string]*watch{},
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.ps = rdb.Subscribe(e.ctx)
	e.wg.Add(2)
	go e.publishLoop()
	go e.receiveLoop()
	return e
}

// close stops both goroutines and the subscription.
func (e *redisEvents) close() {
	e.cancel()
	_ = e.ps.Close()
	e.wg.Wait()
}

func (e *redisEvents) enqueue(op eventOp) bool {
	select {
	case e.q <- op:
		return true
	default:
		e.fail(1, errors.New("queue full"))
		return false
	}
}

func (e *redisEvents) Publish(clientID string, payload []byte) bool {
	return e.enqueue(eventOp{kind: opPublish, clientID: clientID, payload: payload})
}

func (e *redisEvents) Follow(clientID string, f Follower) error {
	stream, epoch, seen, channel := eventKeys(clientID)
	w := &watch{clientID: clientID, stream: stream, epoch: epoch, seenKey: seen, channel: channel, f: f}
	e.mu.Lock()
	if old := e.watches[channel]; old != nil {
		old.gone.Store(true)
	}
	e.watches[channel] = w
	e.mu.Unlock()
	if !e.enqueue(eventOp{kind: opFollow, clientID: clientID, w: w}) {
		e.drop(w)
		return errors.New("state: events queue full")
	}
	// Redis not answering must not hold the follower's own events for
	// long: past followBound it is told to go on without the catch-up.
	time.AfterFunc(followBound, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.started {
			w.started = true
			if !w.gone.Load() {
				w.f.CaughtUp(Position{})
			}
		}
	})
	return nil
}

func (e *redisEvents) Leave(clientID string, seen Position, leftovers [][]byte) <-chan error {
	done := make(chan error, 1)
	_, _, _, channel := eventKeys(clientID)
	e.mu.Lock()
	w := e.watches[channel]
	e.mu.Unlock()
	if w != nil {
		w.gone.Store(true)
	}
	for _, p := range leftovers {
		e.Publish(clientID, p)
	}
	if !e.enqueue(eventOp{kind: opSeen, clientID: clientID, seen: seen, w: w, done: done}) {
		if w != nil && e.drop(w) {
			// Not here: the caller may hold its lock.
			go func() {
				ctx, cancel := context.WithTimeout(e.ctx, publishTimeout)
				defer cancel()
				_ = e.ps.Unsubscribe(ctx, w.channel)
			}()
		}
		done <- errors.New("state: events queue full")
	}
	return done
}

// drop forgets w unless a newer watch of its channel replaced it; it
// reports whether it did.
func (e *redisEvents) drop(w *watch) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.watches[w.channel] != w {
		return false
	}
	delete(e.watches, w.channel)
	return true
}

// fail counts n events that did not cross, and logs at most one line per
// logEvery.
func (e *redisEvents) fail(n int, err error) {
	if e.failed != nil {
		e.failed(n)
	}
	total := e.unseen.Add(int64(n))
	now := time.Now().UnixNano()
	last := e.lastLog.Load()
	if now-last < int64(logEvery) || !e.lastLog.CompareAndSwap(last, now) {
		return
	}
	e.unseen.Add(-total)
	e.log.Warn("websocket events between replicas failed", "events", total, "err", err)
}

// publishLoop sends the queued ops in order until close.
func (e *redisEvents) publishLoop() {
	defer e.wg.Done()
	batch := make([]eventOp, 0, eventBatch)
	for {
		select {
		case <-e.ctx.Done():
			return
		case op := <-e.q:
			batch = append(batch[:0], op)
		}
	fill:
		for len(batch) < eventBatch {
			select {
			case op := <-e.q:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		e.run(batch)
		clear(batch)
	}
}

// run sends one batch: runs of publishes and seen records in one pipeline
// each, follows in between (so a follow's catch-up starts after every
// publish queued before it).
func (e *redisEvents) run(batch []eventOp) {
	for len(batch) > 0 {
		if batch[0].kind == opFollow {
			w := batch[0].w
			if !w.gone.Load() {
				ctx, cancel := context.WithTimeout(e.ctx, publishTimeout)
				if err := e.ps.Subscribe(ctx, w.channel); err != nil {
					e.fail(0, err)
				}
				cancel()
			}
			batch = batch[1:]
			continue
		}
		n := 1
		for n < len(batch) && batch[n].kind != opFollow {
			n++
		}
		e.pipeline(batch[:n])
		batch = batch[n:]
	}
}

// pipeline sends publishes and seen records in one round trip.
func (e *redisEvents) pipeline(ops []eventOp) {
	ctx, cancel := context.WithTimeout(e.ctx, publishTimeout)
	defer cancel()
	window := strconv.FormatInt(ms(e.window), 10)
	maxLen := strconv.Itoa(e.maxLen)
	cmds := make([]redis.Cmder, len(ops)) // nil for a seen record with no position
	send := func(loadFirst bool) error {
		if loadFirst {
			if err := publishEvent.Load(ctx, e.rdb).Err(); err != nil {
				return err
			}
		}
		_, err := e.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, op := range ops {
				stream, epoch, seen, channel := eventKeys(op.clientID)
				switch op.kind {
				case opPublish:
					cmds[i] = publishEvent.EvalSha(ctx, p, []string{stream, epoch}, op.payload, maxLen, window, channel)
				case opSeen:
					if !op.seen.IsZero() {
						cmds[i] = p.Set(ctx, seen, op.seen.Epoch+" "+op.seen.ID, e.window)
					}
				}
			}
			return nil
		})
		return err
	}
	err := send(false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		err = send(true)
	}
	if err != nil {
		failed := 0
		for i, op := range ops {
			if op.kind == opPublish && (cmds[i] == nil || cmds[i].Err() != nil) {
				failed++
			}
		}
		e.fail(failed, err)
	}
	for i, op := range ops {
		if op.kind != opSeen {
			continue
		}
		if op.w != nil && e.drop(op.w) {
			uctx, ucancel := context.WithTimeout(e.ctx, publishTimeout)
			_ = e.ps.Unsubscribe(uctx, op.w.channel)
			ucancel()
		}
		if cmds[i] != nil {
			op.done <- errRedis("record a socket's position", cmds[i].Err())
		} else {
			op.done <- errRedis("record a socket's position", err)
		}
	}
}

// receiveLoop reads the subscription until close: a subscription
// confirmed (first, or again after go-redis reconnected) starts a
// catch-up of its watch; a message is a live event.
func (e *redisEvents) receiveLoop() {
	defer e.wg.Done()
	wait := resubscribeMin
	for {
		msg, err := e.ps.Receive(e.ctx)
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, resubscribeMax)
			continue
		}
		wait = resubscribeMin
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				if w := e.watchOf(m.Channel); w != nil {
					w.mu.Lock()
					w.syncing++
					w.mu.Unlock()
					go e.catchUp(w)
				}
			}
		case *redis.Message:
			if w := e.watchOf(m.Channel); w != nil {
				if ev, ok := parseLive(m.Payload); ok {
					w.live(ev)
				}
			}
		}
	}
}

func (e *redisEvents) watchOf(channel string) *watch {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.watches[channel]
}

// parseLive splits a channel message "<epoch> <id> <payload>".
func parseLive(s string) (Event, bool) {
	epoch, rest, ok := strings.Cut(s, " ")
	if !ok {
		return Event{}, false
	}
	id, payload, ok := strings.Cut(rest, " ")
	if !ok {
		return Event{}, false
	}
	return Event{Pos: Position{Epoch: epoch, ID: id}, Payload: []byte(payload)}, true
}

// live delivers a live event, or keeps it while a catch-up runs.
func (w *watch) live(ev Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.syncing > 0 {
		w.buf = append(w.buf, ev)
		return
	}
	w.deliverLocked(ev)
}

func (w *watch) deliverLocked(ev Event) {
	if w.gone.Load() || !w.last.IsZero() && !ev.Pos.after(w.last) {
		return
	}
	w.last = ev.Pos
	w.f.Event(ev)
}

// catchUp reads w's stream after the last entry delivered (or, first,
// after where the clientId's last socket left), delivers it, then what
// came live meanwhile.
func (e *redisEvents) catchUp(w *watch) {
	w.mu.Lock()
	from, first := w.last, !w.started
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(e.ctx, catchUpTimeout)
	defer cancel()
	argEpoch, argID := from.Epoch, from.ID
	if first {
		argEpoch, argID = "", ""
	}
	res, err := catchUp.Run(ctx, e.rdb, []string{w.stream, w.epoch, w.seenKey}, argEpoch, argID, e.maxLen).Slice()
	var entries []Event
	var start Position
	if err == nil {
		entries, start, err = parseCatchUp(res)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil && e.ctx.Err() == nil {
		e.log.Warn("websocket events catch-up failed", "err", err)
	}
	if first && w.last.IsZero() && !start.IsZero() {
		w.last = start
	}
	for _, ev := range entries {
		w.deliverLocked(ev)
	}
	w.syncing--
	if w.syncing > 0 {
		return
	}
	for _, ev := range w.buf {
		w.deliverLocked(ev)
	}
	w.buf = nil
	if !w.started {
		w.started = true
		if !w.gone.Load() {
			w.f.CaughtUp(start)
		}
	}
}

// parseCatchUp reads catchUp's answer.
func parseCatchUp(res []any) ([]Event, Position, error) {
	if len(res) != 4 {
		return nil, Position{}, fmt.Errorf("state: catch-up answered %d values", len(res))
	}
	epoch, _ := res[0].(string)
	if epoch == "" {
		return nil, Position{}, nil
	}
	se, _ := res[1].(string)
	sid, _ := res[2].(string)
	start := Position{Epoch: se, ID: sid}
	raw, _ := res[3].([]any)
	out := make([]Event, 0, len(raw))
	for _, r := range raw {
		entry, _ := r.([]any)
		if len(entry) != 2 {
			continue
		}
		id, _ := entry[0].(string)
		fields, _ := entry[1].([]any)
		if len(fields) < 2 {
			continue
		}
		payload, _ := fields[1].(string)
		out = append(out, Event{Pos: Position{Epoch: epoch, ID: id}, Payload: []byte(payload)})
	}
	return out, start, nil
}
