package comfysim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"slices"
	"sort"
	"time"
)

// execError is a Python exception raised by a node while executing.
type execError struct {
	typ, msg string
}

func (e *execError) Error() string { return e.typ + ": " + e.msg }

var (
	errInterrupted = errors.New("comfysim: interrupted")
	errKilled      = errors.New("comfysim: killed")
)

// execution runs one prompt: ComfyUI's PromptExecutor.execute plus the
// prompt_worker bookkeeping around it.
type execution struct {
	s        *Server
	in       *instance
	item     *queueItem
	p        *parsedPrompt
	target   *string // server.client_id; nil broadcasts what ComfyUI broadcasts
	msgs     [][]any
	progress ordered // node id -> *nodeProgress
	ui       ordered // node id -> *nodeUI
	meta     ordered
	executed []string
	sigs     map[string]string
	sigBusy  map[string]bool
}

func newExecution(in *instance, it *queueItem) *execution {
	ex := &execution{s: in.s, in: in, item: it, p: it.prompt, sigs: map[string]string{}, sigBusy: map[string]bool{}}
	if raw, ok := it.extra.get("client_id"); ok {
		v := decodeAny(raw)
		if v != nil {
			sid, isStr := v.(string)
			if !isStr {
				sid = "\x00" + pyStr(v) // never a registered sid
			}
			ex.target = &sid
		}
	}
	return ex
}

func nowMS() int64 { return time.Now().UnixMilli() }

type promptEvent struct {
	PromptID  string `json:"prompt_id"`
	Timestamp int64  `json:"timestamp"`
}

type cachedEvent struct {
	Nodes     []string `json:"nodes"`
	PromptID  string   `json:"prompt_id"`
	Timestamp int64    `json:"timestamp"`
}

type executingEvent struct {
	Node        string `json:"node"`
	DisplayNode string `json:"display_node"`
	PromptID    string `json:"prompt_id"`
}

type executingDone struct {
	Node     *string `json:"node"`
	PromptID string  `json:"prompt_id"`
}

type executedEvent struct {
	Node        string  `json:"node"`
	DisplayNode string  `json:"display_node"`
	Output      *nodeUI `json:"output"`
	PromptID    string  `json:"prompt_id"`
}

type progressEvent struct {
	Value    int    `json:"value"`
	Max      int    `json:"max"`
	PromptID string `json:"prompt_id"`
	Node     string `json:"node"`
}

type nodeProgress struct {
	Value         any     `json:"value"`
	Max           any     `json:"max"`
	State         string  `json:"state"`
	NodeID        string  `json:"node_id"`
	PromptID      string  `json:"prompt_id"`
	DisplayNodeID string  `json:"display_node_id"`
	ParentNodeID  *string `json:"parent_node_id"`
	RealNodeID    string  `json:"real_node_id"`
}

type progressStateEvent struct {
	PromptID string  `json:"prompt_id"`
	Nodes    ordered `json:"nodes"`
}

type interruptedEvent struct {
	PromptID  string   `json:"prompt_id"`
	NodeID    string   `json:"node_id"`
	NodeType  string   `json:"node_type"`
	Executed  []string `json:"executed"`
	Timestamp int64    `json:"timestamp"`
}

type errorEvent struct {
	PromptID         string              `json:"prompt_id"`
	NodeID           string              `json:"node_id"`
	NodeType         string              `json:"node_type"`
	Executed         []string            `json:"executed"`
	ExceptionMessage string              `json:"exception_message"`
	ExceptionType    string              `json:"exception_type"`
	Traceback        []string            `json:"traceback"`
	CurrentInputs    map[string][]string `json:"current_inputs"`
	CurrentOutputs   []string            `json:"current_outputs"`
	Timestamp        int64               `json:"timestamp"`
}

type metaEntry struct {
	NodeID      string  `json:"node_id"`
	DisplayNode string  `json:"display_node"`
	ParentNode  *string `json:"parent_node"`
	RealNodeID  string  `json:"real_node_id"`
}

// addMessageLocked is PromptExecutor.add_message: kept for history, sent to
// the client (or to everyone when broadcast and there is no client).
func (ex *execution) addMessageLocked(event string, data any, broadcast bool) {
	ex.msgs = append(ex.msgs, []any{event, data})
	if ex.target != nil || broadcast {
		ex.in.sendLocked(event, data, ex.target)
	}
}

func (ex *execution) lock()   { ex.in.mu.Lock() }
func (ex *execution) unlock() { ex.in.mu.Unlock() }

// signature is the cache key of a node: its class, IS_CHANGED value and
// inputs, with links replaced by the linked node's signature (ComfyUI's
// CacheKeySetInputSignature: node ids do not matter).
func (ex *execution) signature(id string) string {
	if sig, ok := ex.sigs[id]; ok {
		return sig
	}
	if ex.sigBusy[id] {
		return "" // a cycle: never cached
	}
	ex.sigBusy[id] = true
	defer delete(ex.sigBusy, id)
	n := ex.p.byID[id]
	if n == nil || n.inputs == nil {
		ex.sigs[id] = ""
		return ""
	}
	def := ex.s.defs[n.classStr]
	if def == nil {
		ex.sigs[id] = ""
		return ""
	}
	keys := append([]string(nil), n.inputs.keys...)
	sort.Strings(keys)
	parts := []any{n.classStr}
	vals := map[string]any{}
	for _, k := range keys {
		v := decodeAny(n.inputs.vals[k])
		if link, ok := isLink(v); ok {
			from := ex.signature(link.node)
			if from == "" {
				ex.sigs[id] = ""
				return ""
			}
			parts = append(parts, []any{k, "ANCESTOR", from, link.socket})
			continue
		}
		if in, ok := def.input(k); ok {
			if conv, e := convertInput(in, v); e == "" {
				v = conv
			}
		}
		vals[k] = v
		parts = append(parts, []any{k, v})
	}
	if def.isChanged != nil {
		parts = append(parts, []any{"IS_CHANGED", def.isChanged(ex.s, vals)})
	}
	b, _ := json.Marshal(parts)
	sum := sha256.Sum256(b)
	sig := hex.EncodeToString(sum[:])
	ex.sigs[id] = sig
	return sig
}

type link struct {
	node   string
	socket int
}

func isLink(v any) (link, bool) {
	l, ok := v.([]any)
	if !ok || len(l) != 2 {
		return link{}, false
	}
	id, ok1 := l[0].(string)
	n, ok2 := l[1].(json.Number)
	if !ok1 || !ok2 {
		return link{}, false
	}
	i, err := n.Int64()
	if err != nil {
		return link{}, false
	}
	return link{id, int(i)}, true
}

func (ex *execution) cachedLocked(id string) *cacheEntry {
	sig := ex.signature(id)
	if sig == "" {
		return nil
	}
	return ex.in.cache[sig]
}

// run executes the prompt and records it. It returns false if the instance
// was killed meanwhile (nothing more is sent or stored).
func (ex *execution) run() bool {
	in := ex.in
	pid := ex.item.id
	ex.lock()
	in.clientID = ex.target
	in.interrupted = false
	in.lastNode = ""
	ex.addMessageLocked("execution_start", promptEvent{pid, nowMS()}, false)
	// Signatures of every node; the cache keeps only the current prompt's.
	keep := map[string]*cacheEntry{}
	for _, n := range ex.p.nodes {
		if sig := ex.signature(n.id); sig != "" {
			if c := in.cache[sig]; c != nil {
				keep[sig] = c
			}
		}
	}
	in.cache = keep
	cached := []string{}
	for _, n := range ex.p.nodes {
		if ex.cachedLocked(n.id) != nil {
			cached = append(cached, n.id)
		}
	}
	ex.addMessageLocked("execution_cached", cachedEvent{cached, pid, nowMS()}, false)
	ex.unlock()

	list := newExecList(ex)
	for _, o := range ex.item.outputs {
		list.addNode(o)
	}
	var failErr error
	var failNode string
	for !list.empty() {
		id := list.stage()
		if id == "" {
			failNode = list.pending[0]
			failErr = &execError{typ: "comfy_execution.graph.DependencyCycleError", msg: "Dependency cycle detected"}
			break
		}
		if err := ex.runNode(id); err != nil {
			failErr, failNode = err, id
			break
		}
		list.complete(id)
	}
	if errors.Is(failErr, errKilled) || in.ctx.Err() != nil {
		return false
	}

	ex.lock()
	defer ex.unlock()
	if in.ctx.Err() != nil {
		return false
	}
	status := &histStatus{StatusStr: "success", Completed: true}
	executed := append([]string{}, ex.executed...)
	switch {
	case failErr == nil:
		ex.addMessageLocked("execution_success", promptEvent{pid, nowMS()}, false)
	case errors.Is(failErr, errInterrupted):
		status.StatusStr, status.Completed = "error", false
		ex.addMessageLocked("execution_interrupted", interruptedEvent{pid, failNode, ex.p.byID[failNode].classStr, executed, nowMS()}, true)
	default:
		status.StatusStr, status.Completed = "error", false
		var ee *execError
		if !errors.As(failErr, &ee) {
			ee = &execError{typ: "Exception", msg: failErr.Error()}
		}
		ex.addMessageLocked("execution_error", errorEvent{
			PromptID: pid, NodeID: failNode, NodeType: ex.p.byID[failNode].classStr, Executed: executed,
			ExceptionMessage: ee.msg, ExceptionType: ee.typ,
			Traceback: []string{
				"  File \"/ComfyUI/execution.py\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
				"  File \"/ComfyUI/execution.py\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
			},
			CurrentInputs:  ex.currentInputs(failNode),
			CurrentOutputs: executed,
			Timestamp:      nowMS(),
		}, false)
	}
	status.Messages = ex.msgs
	// task_done: history first, then the status broadcast, then executing null.
	in.running = nil
	in.history.put(pid, &historyEntry{Prompt: ex.item.tuple(), Outputs: orOrdered(ex.ui), Status: status, Meta: orOrdered(ex.meta), item: ex.item})
	in.queueUpdatedLocked()
	ex.s.executed.Add(1)
	if failErr == nil {
		ex.s.countRun(ex.item)
	}
	in.lastNode = ""
	if ex.target != nil {
		in.sendLocked("executing", executingDone{nil, pid}, ex.target)
	}
	return true
}

func orOrdered(o ordered) ordered {
	if o == nil {
		return ordered{}
	}
	return o
}

func (ex *execution) currentInputs(id string) map[string][]string {
	out := map[string][]string{}
	n := ex.p.byID[id]
	if n == nil || n.inputs == nil {
		return out
	}
	for _, k := range n.inputs.keys {
		v := decodeAny(n.inputs.vals[k])
		if _, ok := isLink(v); ok {
			out[k] = []string{"<linked output>"}
			continue
		}
		out[k] = []string{pyStr(v)}
	}
	return out
}

// psLocked sends progress_state with every node started in this prompt.
func (ex *execution) psLocked() {
	if !ex.s.ver.hasFeatures() {
		return
	}
	nodes := make(ordered, len(ex.progress))
	for i, m := range ex.progress {
		np := *m.V.(*nodeProgress)
		nodes[i] = kv{m.K, &np}
	}
	ex.in.sendLocked("progress_state", progressStateEvent{ex.item.id, nodes}, ex.target)
}

func (ex *execution) nodeProgressLocked(id string, value, maxV any) *nodeProgress {
	if v, ok := ex.progress.get(id); ok {
		np := v.(*nodeProgress)
		return np
	}
	np := &nodeProgress{Value: value, Max: maxV, State: "running", NodeID: id, PromptID: ex.item.id, DisplayNodeID: id, RealNodeID: id}
	ex.progress = append(ex.progress, kv{id, np})
	return np
}

func (ex *execution) startProgressLocked(id string) {
	np := ex.nodeProgressLocked(id, pyFloat(0), pyFloat(1))
	np.Value, np.Max, np.State = pyFloat(0), pyFloat(1), "running"
	ex.psLocked()
}

func (ex *execution) finishProgressLocked(id string) {
	np := ex.nodeProgressLocked(id, 1, 1)
	np.Value, np.State = np.Max, "finished"
	ex.psLocked()
}

// runNode is execution.execute for one staged node.
func (ex *execution) runNode(id string) error {
	in := ex.in
	n := ex.p.byID[id]
	def := ex.s.defs[n.classStr]
	ex.lock()
	if in.ctx.Err() != nil {
		ex.unlock()
		return errKilled
	}
	if c := ex.cachedLocked(id); c != nil {
		if ex.target != nil {
			in.sendLocked("executed", executedEvent{id, id, c.ui, ex.item.id}, ex.target)
		}
		if c.ui != nil {
			ex.ui = append(ex.ui, kv{id, c.ui})
			ex.meta = append(ex.meta, kv{id, metaEntry{id, id, nil, id}})
		}
		ex.finishProgressLocked(id)
		ex.executed = append(ex.executed, id)
		ex.unlock()
		return nil
	}
	ex.startProgressLocked(id)
	in.lastNode = id
	if ex.target != nil {
		in.sendLocked("executing", executingEvent{id, id, ex.item.id}, ex.target)
	}
	if in.interrupted {
		ex.unlock()
		return errInterrupted
	}
	args := map[string]any{}
	for _, idef := range def.inputs {
		raw, ok := n.inputs.get(idef.name)
		if !ok {
			continue
		}
		v := decodeAny(raw)
		if l, isL := isLink(v); isL {
			c := ex.cachedLocked(l.node)
			if c == nil || l.socket >= len(c.outputs) {
				ex.unlock()
				return &execError{typ: "KeyError", msg: pyRepr(l.node)}
			}
			args[idef.name] = c.outputs[l.socket]
			continue
		}
		conv, _ := convertInput(idef, v)
		args[idef.name] = conv
	}
	ex.unlock()

	outs, ui, err := def.run(&nodeCall{s: ex.s, ex: ex, id: id, in: args})
	if err != nil {
		return err
	}
	ex.lock()
	defer ex.unlock()
	if in.ctx.Err() != nil {
		return errKilled
	}
	if sig := ex.signature(id); sig != "" {
		in.cache[sig] = &cacheEntry{outputs: outs, ui: ui}
	}
	if ui != nil {
		ex.ui = append(ex.ui, kv{id, ui})
		ex.meta = append(ex.meta, kv{id, metaEntry{id, id, nil, id}})
		if ex.target != nil {
			in.sendLocked("executed", executedEvent{id, id, ui, ex.item.id}, ex.target)
		}
	}
	ex.finishProgressLocked(id)
	ex.executed = append(ex.executed, id)
	return nil
}

// pngInfo is the PNG text metadata SaveImage embeds: the prompt and each
// extra_pnginfo entry (the frontend's workflow).
func (ex *execution) pngInfo() []kv {
	out := []kv{{"prompt", string(pyJSON(ex.p.obj))}}
	if raw, ok := ex.item.extra.get("extra_pnginfo"); ok {
		if o, err := parseRawObj(raw); err == nil {
			for _, k := range o.keys {
				out = append(out, kv{k, string(pyJSON(json.RawMessage(o.vals[k])))})
			}
		}
	}
	return out
}

// nodeCall is what a node implementation sees of the running prompt.
type nodeCall struct {
	s  *Server
	ex *execution
	id string
	in map[string]any
}

// loadModel charges Options.ModelLoadTime when the model file is not
// loaded, and keeps it loaded (at most Options.ModelSlots files).
func (c *nodeCall) loadModel(file string) error {
	s := c.s
	if s.opts.ModelLoadTime <= 0 {
		return nil
	}
	s.loadMu.Lock()
	i := slices.Index(s.loaded, file)
	if i >= 0 {
		s.loaded = append(slices.Delete(s.loaded, i, i+1), file)
		s.loadMu.Unlock()
		return nil
	}
	s.loadMu.Unlock()
	if err := c.sleep(s.opts.ModelLoadTime); err != nil {
		return err
	}
	s.modelLoads.Add(1)
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if !slices.Contains(s.loaded, file) {
		s.loaded = append(s.loaded, file)
	}
	if n := s.opts.ModelSlots; n > 0 && len(s.loaded) > n {
		s.loaded = slices.Delete(s.loaded, 0, len(s.loaded)-n)
	}
	return nil
}

// ModelLoadCount is how many times a loader paid Options.ModelLoadTime.
func (m *modelMemory) ModelLoadCount() int { return int(m.modelLoads.Load()) }

// ModelLoads returns the model files currently loaded, least recently used first.
func (m *modelMemory) ModelLoads() []string {
	m.loadMu.Lock()
	defer m.loadMu.Unlock()
	return slices.Clone(m.loaded)
}

// sleep waits d, returning errKilled if the instance dies meanwhile. A
// frozen process (SetFrozen) finishes nothing: the node waits for the thaw
// and then runs its whole time again.
func (c *nodeCall) sleep(d time.Duration) error {
	done := c.ex.in.ctx.Done()
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-done:
			return errKilled
		}
	} else if c.ex.in.ctx.Err() != nil {
		return errKilled
	}
	if ch := c.s.thawed(); ch != nil {
		select {
		case <-ch:
		case <-done:
			return errKilled
		}
		return c.sleep(d)
	}
	return nil
}

// work is the run time of a light image node: Delay, uninterruptible (an
// interrupt takes effect at the next node, as in ComfyUI).
func (c *nodeCall) work() error { return c.sleep(c.s.delay) }

// heavy spreads Delay over Steps progress ticks, each with a preview of img.
func (c *nodeCall) heavy(img *image.NRGBA) error {
	pv := &preview{format: formatJPEG, data: previewJPEG(img)}
	steps := c.s.steps
	per := c.s.delay / time.Duration(steps)
	for i := 1; i <= steps; i++ {
		if err := c.sleep(per); err != nil {
			return err
		}
		if err := c.progress(i, steps, pv); err != nil {
			return err
		}
	}
	return nil
}

// previewFormat is the image format word of a type-1 preview frame.
type previewFormat int

const (
	formatJPEG previewFormat = 1
	formatPNG  previewFormat = 2
)

type preview struct {
	format previewFormat
	data   []byte
}

func (p *preview) mime() string {
	if p.format == formatPNG {
		return "image/png"
	}
	return "image/jpeg"
}

type previewMeta struct {
	NodeID        string  `json:"node_id"`
	PromptID      string  `json:"prompt_id"`
	DisplayNodeID string  `json:"display_node_id"`
	ParentNodeID  *string `json:"parent_node_id"`
	RealNodeID    string  `json:"real_node_id"`
	ImageType     string  `json:"image_type"`
}

// progress is ComfyUI's progress hook: interrupt check, progress_state, the
// type-4 preview for clients that negotiated it, the legacy progress
// message, then the type-1 preview for everyone else.
func (c *nodeCall) progress(value, maxV int, pv *preview) error {
	ex, in := c.ex, c.ex.in
	ex.lock()
	defer ex.unlock()
	if in.ctx.Err() != nil {
		return errKilled
	}
	if in.interrupted {
		return errInterrupted
	}
	np := ex.nodeProgressLocked(c.id, value, maxV)
	np.Value, np.Max, np.State = value, maxV, "running"
	ex.psLocked()
	meta := pv != nil && in.supportsPreviewMetadataLocked(ex.target)
	if meta {
		mj := pyJSON(previewMeta{c.id, ex.item.id, c.id, nil, c.id, pv.mime()})
		frame := make([]byte, 8, 8+len(mj)+len(pv.data))
		binary.BigEndian.PutUint32(frame[0:4], 4)
		binary.BigEndian.PutUint32(frame[4:8], uint32(len(mj)))
		frame = append(append(frame, mj...), pv.data...)
		in.sendBinaryLocked(frame, ex.target)
	}
	in.sendLocked("progress", progressEvent{value, maxV, ex.item.id, c.id}, ex.target)
	if pv != nil && !meta {
		frame := make([]byte, 8, 8+len(pv.data))
		binary.BigEndian.PutUint32(frame[0:4], 1)
		binary.BigEndian.PutUint32(frame[4:8], uint32(pv.format))
		frame = append(frame, pv.data...)
		in.sendBinaryLocked(frame, ex.target)
	}
	return nil
}

// execList is ComfyUI's ExecutionList (a TopologicalSort) restricted to
// what the implemented nodes need: strong links only.
type execList struct {
	ex         *execution
	pending    []string
	isPending  map[string]bool
	blockCount map[string]int
	blocking   map[string][]string
}

func newExecList(ex *execution) *execList {
	return &execList{ex: ex, isPending: map[string]bool{}, blockCount: map[string]int{}, blocking: map[string][]string{}}
}

func (l *execList) isCached(id string) bool {
	l.ex.lock()
	defer l.ex.unlock()
	return l.ex.cachedLocked(id) != nil
}

func (l *execList) addNode(id string) {
	stack := []string{id}
	type lk struct{ from, to string }
	var links []lk
	for len(stack) > 0 {
		u := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if l.isPending[u] {
			continue
		}
		l.isPending[u] = true
		l.pending = append(l.pending, u)
		l.blockCount[u] = 0
		n := l.ex.p.byID[u]
		if n == nil || n.inputs == nil {
			continue
		}
		for _, k := range n.inputs.keys {
			lnk, ok := isLink(decodeAny(n.inputs.vals[k]))
			if !ok {
				continue
			}
			if !l.isCached(lnk.node) {
				stack = append(stack, lnk.node)
			}
			links = append(links, lk{lnk.node, u})
		}
	}
	for _, x := range links {
		if l.isCached(x.from) {
			continue
		}
		l.addNode(x.from)
		if !contains(l.blocking[x.from], x.to) {
			l.blocking[x.from] = append(l.blocking[x.from], x.to)
			l.blockCount[x.to]++
		}
	}
}

func (l *execList) empty() bool { return len(l.pending) == 0 }

func (l *execList) isOutput(id string) bool {
	n := l.ex.p.byID[id]
	if n == nil {
		return false
	}
	d := l.ex.s.defs[n.classStr]
	return d != nil && d.outputNode
}

// stage picks the next node like ux_friendly_pick_node; "" on a cycle.
func (l *execList) stage() string {
	var avail []string
	for _, id := range l.pending {
		if l.blockCount[id] == 0 {
			avail = append(avail, id)
		}
	}
	if len(avail) == 0 {
		return ""
	}
	for _, id := range avail {
		if l.isOutput(id) {
			return id
		}
	}
	for _, id := range avail {
		for _, b := range l.blocking[id] {
			if l.isOutput(b) {
				return id
			}
		}
	}
	for _, id := range avail {
		for _, b := range l.blocking[id] {
			for _, b2 := range l.blocking[b] {
				if l.isOutput(b2) {
					return id
				}
			}
		}
	}
	return avail[0]
}

func (l *execList) complete(id string) {
	for i, p := range l.pending {
		if p == id {
			l.pending = append(l.pending[:i:i], l.pending[i+1:]...)
			break
		}
	}
	delete(l.isPending, id)
	for _, to := range l.blocking[id] {
		l.blockCount[to]--
	}
	delete(l.blocking, id)
}

var _ = fmt.Sprint
