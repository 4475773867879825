package proxy

// Views of the whole queue, merged over every instance so that the fleet
// looks like one ComfyUI: GET /queue, GET /history, GET /api/jobs (GET
// /prompt is in prompt.go). Instances that do not answer are left out; the
// call fails (503, or the first error) only when none answered.

import (
	"encoding/json"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// mergedViews serves the views of the whole queue merged over every
// instance: GET /queue, GET /history, GET /api/jobs.
type mergedViews struct {
	pool *upstream.Pool
	fwd  *forwarder
	keys *keyGuard
	rw   *rewriter
}

// readable returns the instances a merged view asks: every instance that
// passes its health check (an open breaker makes its Call fail fast).
func (s *mergedViews) readable() []*upstream.Instance {
	var out []*upstream.Instance
	for _, inst := range s.pool.Instances() {
		if inst.State().Healthy() {
			out = append(out, inst)
		}
	}
	return out
}

// mergeFailed answers when no instance gave a usable answer.
func (s *mergedViews) mergeFailed(ctx *fasthttp.RequestCtx, results []callResult) {
	for _, r := range results {
		if r.err != nil {
			s.fwd.writeError(ctx, r.err)
			return
		}
	}
	s.fwd.writeError(ctx, upstream.ErrNoUpstream)
}

// queueItem is one pending item of a merged queue.
type queueItem struct {
	raw    json.RawMessage
	number float64
	inst   int // the instance's index in configuration order
}

// getQueue serves GET /queue: queue_running and queue_pending of every
// instance, each item's number, prompt_id and extra_data.client_id
// rewritten to the client's. Running items come in configuration order.
// Pending items are sorted by their number (item[0]; ComfyUI returns its
// heap unsorted, and clients sort by it), ties in configuration order.
// The number of a prompt comfygate submitted is its fleet number
// (prompts.Prompt.Number), so the merged pending list is in the order
// the fleet sent the prompts, across instances (and replicas, whose
// prompts show the numbers of their shared records); a resubmitted prompt
// keeps its place. Limitations: it is the order of submission, not of
// execution (each instance runs its own queue); a client's "front" or
// "number" shows ComfyUI's number for it but reorders only the queue of
// the instance that runs it; and prompts comfygate did not submit keep
// their instance's own number, which counts from 0 on every instance.
func (s *mergedViews) getQueue(ctx *fasthttp.RequestCtx) {
	insts := s.readable()
	results := s.fwd.callAll(insts, "GET", "/queue", nil, nil)
	var running []json.RawMessage
	var pending []queueItem
	answered := false
	for i, r := range results {
		if r.err != nil || r.status != fasthttp.StatusOK {
			continue
		}
		q, err := comfyapi.ParseQueue(r.body)
		if err != nil {
			continue
		}
		answered = true
		for _, it := range q.Running {
			running = append(running, s.rewriteQueueItem(r.inst, it))
		}
		for _, it := range q.Pending {
			raw := s.rewriteQueueItem(r.inst, it)
			n, _ := comfyapi.ItemNumberOf(raw)
			pending = append(pending, queueItem{raw: raw, number: n, inst: i})
		}
	}
	if !answered {
		s.mergeFailed(ctx, results)
		return
	}
	sort.SliceStable(pending, func(a, b int) bool {
		if pending[a].number != pending[b].number {
			return pending[a].number < pending[b].number
		}
		return pending[a].inst < pending[b].inst
	})
	b := []byte(`{"queue_running": [`)
	for i, it := range running {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, it...)
	}
	b = append(b, `], "queue_pending": [`...)
	for i, it := range pending {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, it.raw...)
	}
	b = append(b, "]}"...)
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// rewriteQueueItem rewrites one queue tuple of inst for the client.
func (s *mergedViews) rewriteQueueItem(inst *upstream.Instance, raw json.RawMessage) json.RawMessage {
	id, ok := comfyapi.ItemID(raw)
	if !ok {
		return raw
	}
	return s.rw.viewOf(inst, id).rewriteTuple(raw)
}

// historyItem is one entry of a merged history.
type historyItem struct {
	key string
	val json.RawMessage
	ts  int64 // completion time (ms), see completionTime
}

// parseComfyInt parses a query value the way Python's int() does for the
// forms clients send ("64", " 64 ", "+64", "-1").
func parseComfyInt(v string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(v), "+"))
	return n, err == nil
}

// getHistory serves GET /history?max_items=&offset=: the entries of every
// instance, keys and ids rewritten to the client's, ordered oldest to
// newest by completion (the timestamp of the last status message; an entry
// without one keeps its place after its instance's previous entry), then
// max_items and offset applied over the merged list exactly as ComfyUI
// applies them to its own: offset counts from the oldest entry, max_items
// alone means the newest N.
//
// A max_items or offset that is not an integer gets ComfyUI's own answer,
// a plain-text 500 (its handler's int() raises), so a client sees what it
// would see from one ComfyUI.
//
// With max_items alone each instance is asked for its newest max_items
// only (the fleet's newest N are among them); with offset every entry is
// needed.
//
// With isolation the window applies to the entries the request's key may
// see: the others are left out first, so a key whose entries are older
// than everyone else's newest still gets its own newest N. With max_items
// alone, each instance is asked for more of its newest entries until they
// hold N of the key's (newestVisible); with offset every entry is needed.
func (s *mergedViews) getHistory(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	var maxItems *int
	offset := -1
	if args.Has("max_items") {
		n, ok := parseComfyInt(string(args.Peek("max_items")))
		if !ok {
			writeComfyInternalError(ctx)
			return
		}
		maxItems = &n
	}
	if args.Has("offset") {
		n, ok := parseComfyInt(string(args.Peek("offset")))
		if !ok {
			writeComfyInternalError(ctx)
			return
		}
		offset = n
	}
	visible := s.listVisible(ctx)
	insts := s.readable()
	var lists [][]historyItem
	var results []callResult
	answered := false
	switch {
	case maxItems != nil && offset < 0 && *maxItems > 0 && visible != nil:
		lists, results, answered = s.newestVisible(insts, *maxItems, visible)
	case maxItems != nil && offset < 0 && visible == nil:
		lists, _, results, answered = s.historyLists(insts, "/history?max_items="+strconv.Itoa(*maxItems), nil)
	default:
		lists, _, results, answered = s.historyLists(insts, "/history", visible)
	}
	if !answered {
		s.mergeFailed(ctx, results)
		return
	}
	merged := mergeByCompletion(lists)
	merged = applyHistoryWindow(merged, maxItems, offset)
	b := make([]byte, 0, 1024)
	b = append(b, '{')
	for i, it := range merged {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, quoteJSON(it.key)...)
		b = append(b, ": "...)
		b = append(b, it.val...)
	}
	b = append(b, '}')
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// historyLists asks every instance in insts for path (a GET /history)
// and returns, per instance that answered, its entries oldest first,
// rewritten for the client, without those visible (when not nil) says
// no to; asked is how many entries it answered with before that.
func (s *mergedViews) historyLists(insts []*upstream.Instance, path string, visible func(string) bool) (lists [][]historyItem, asked []int, results []callResult, answered bool) {
	results = s.fwd.callAll(insts, "GET", path, nil, nil)
	lists = make([][]historyItem, len(results))
	asked = make([]int, len(results))
	for i, r := range results {
		if r.err != nil || r.status != fasthttp.StatusOK {
			continue
		}
		entries, err := comfyapi.HistoryEntries(r.body)
		if err != nil {
			continue
		}
		answered = true
		asked[i] = len(entries)
		list := make([]historyItem, 0, len(entries))
		var last int64
		for _, m := range entries {
			if ts, ok := completionTime(m.Entry); ok {
				last = ts
			}
			if visible != nil && !visible(s.rw.viewOf(r.inst, m.ID).id) {
				continue
			}
			key, val := s.rw.rewriteHistoryEntry(r.inst, m.ID, m.Entry)
			list = append(list, historyItem{key: key, val: val, ts: last})
		}
		lists[i] = list
	}
	return lists, asked, results, answered
}

// maxHistoryAsk bounds the newest entries newestVisible asks each
// instance for before it asks for all of them.
const maxHistoryAsk = 1 << 16

// newestVisible gets, from every instance, enough of its newest history
// entries to hold the fleet's n newest that visible lets through: it
// asks for the newest n, then four times more, until every instance
// either has n visible among them or has no more (ComfyUI keeps 10000 by
// default, so asking for all of it on every poll of the web UI would be
// costly).
func (s *mergedViews) newestVisible(insts []*upstream.Instance, n int, visible func(string) bool) ([][]historyItem, []callResult, bool) {
	for m := n; ; m *= 4 {
		path := "/history"
		if m <= maxHistoryAsk {
			path += "?max_items=" + strconv.Itoa(m)
		}
		lists, asked, results, answered := s.historyLists(insts, path, visible)
		if !answered || m > maxHistoryAsk {
			return lists, results, answered
		}
		enough := true
		for i, l := range lists {
			if asked[i] >= m && len(l) < n {
				enough = false // it may have more of the key's entries
			}
		}
		if enough {
			return lists, results, answered
		}
	}
}

// mergeByCompletion merges per-instance lists (each oldest first) into one,
// oldest first, keeping each list's own order; ties go to the earlier
// instance. A key that appears twice keeps only its newest entry.
func mergeByCompletion(lists [][]historyItem) []historyItem {
	total := 0
	for _, l := range lists {
		total += len(l)
	}
	out := make([]historyItem, 0, total)
	heads := make([]int, len(lists))
	for len(out) < total {
		best := -1
		for i, l := range lists {
			if heads[i] >= len(l) {
				continue
			}
			if best < 0 || l[heads[i]].ts < lists[best][heads[best]].ts {
				best = i
			}
		}
		out = append(out, lists[best][heads[best]])
		heads[best]++
	}
	lastAt := make(map[string]int, len(out))
	for i, it := range out {
		lastAt[it.key] = i
	}
	if len(lastAt) == len(out) {
		return out
	}
	dedup := out[:0]
	for i, it := range out {
		if lastAt[it.key] == i {
			dedup = append(dedup, it)
		}
	}
	return dedup
}

// applyHistoryWindow is ComfyUI's PromptQueue.get_history windowing over
// a list ordered oldest first.
func applyHistoryWindow(items []historyItem, maxItems *int, offset int) []historyItem {
	if offset < 0 && maxItems != nil {
		offset = len(items) - *maxItems
	}
	var out []historyItem
	for i, it := range items {
		if i >= offset {
			out = append(out, it)
			if maxItems != nil && len(out) >= *maxItems {
				break
			}
		}
	}
	return out
}

// completionTime returns the timestamp (ms) of a history entry's last
// status message that carries one.
func completionTime(entry json.RawMessage) (int64, bool) {
	e, err := comfyapi.ParseHistoryEntry(entry)
	if err != nil {
		return 0, false
	}
	return e.Status.LastTimestamp()
}

// jobItem is one job of a merged /api/jobs list.
type jobItem struct {
	raw  json.RawMessage
	key  float64
	inst int
}

// getJobs serves GET /api/jobs (ComfyUI 2026's job list) over the fleet:
// every instance is asked for its first offset+limit jobs in the client's
// filter and order, the answers are merged and re-sorted the same way
// (sort_by created_at or execution_duration, sort_order desc by default;
// ties in configuration order), and the page is cut again. total is the
// sum of the instances' totals. With isolation, every job of every
// instance is asked for, those the request's key may not see are left
// out, and the page, total and has_more are of the rest. Instances without the jobs API (404) are
// left out; when none has it the client gets that 404, as from an older
// ComfyUI. A 400 (bad status, sort_by, ...) is relayed as the instance
// gave it; limit and offset are checked here with ComfyUI's messages.
func (s *mergedViews) getJobs(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	var limit *int
	offset := 0
	if args.Has("limit") {
		n, ok := parseComfyInt(string(args.Peek("limit")))
		if !ok {
			writeJSON(ctx, fasthttp.StatusBadRequest, []byte(`{"error": "limit must be an integer"}`))
			return
		}
		if n <= 0 {
			writeJSON(ctx, fasthttp.StatusBadRequest, []byte(`{"error": "limit must be a positive integer"}`))
			return
		}
		limit = &n
	}
	if args.Has("offset") {
		n, ok := parseComfyInt(string(args.Peek("offset")))
		if !ok {
			writeJSON(ctx, fasthttp.StatusBadRequest, []byte(`{"error": "offset must be an integer"}`))
			return
		}
		offset = max(n, 0)
	}
	sortBy := strings.ToLower(string(args.Peek("sort_by")))
	desc := strings.ToLower(string(args.Peek("sort_order"))) != "asc"

	q := url.Values{}
	for k, v := range args.All() {
		switch string(k) {
		case "limit", "offset":
		default:
			q.Add(string(k), string(v))
		}
	}
	visible := s.listVisible(ctx)
	if limit != nil && visible == nil {
		q.Set("limit", strconv.Itoa(offset+*limit))
	}
	path := "/api/jobs"
	if enc := q.Encode(); enc != "" {
		path += "?" + enc
	}
	results := s.fwd.callAll(s.readable(), "GET", path, callHeader(ctx), nil)
	var jobs []jobItem
	total := 0
	answered := false
	var notFound *callResult
	for i, r := range results {
		switch {
		case r.err != nil:
			continue
		case r.status == fasthttp.StatusNotFound:
			if notFound == nil {
				notFound = &results[i]
			}
			continue
		case r.status == fasthttp.StatusBadRequest:
			setInstance(ctx, r.inst)
			writeJSON(ctx, r.status, r.body)
			return
		case r.status != fasthttp.StatusOK:
			continue
		}
		page, err := comfyapi.ParseJobsPage(r.body)
		if err != nil {
			continue
		}
		answered = true
		if visible == nil {
			total += page.Total
		}
		for _, j := range page.Jobs {
			id, out := s.rw.rewriteJob(r.inst, j)
			if visible != nil {
				if !visible(id) {
					continue
				}
				total++
			}
			jobs = append(jobs, jobItem{raw: out, key: jobSortKey(j, sortBy), inst: i})
		}
	}
	if !answered {
		if notFound != nil {
			setInstance(ctx, notFound.inst)
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBody(notFound.body)
			return
		}
		s.mergeFailed(ctx, results)
		return
	}
	sort.SliceStable(jobs, func(a, b int) bool {
		if jobs[a].key != jobs[b].key {
			if desc {
				return jobs[a].key > jobs[b].key
			}
			return jobs[a].key < jobs[b].key
		}
		return jobs[a].inst < jobs[b].inst
	})
	if offset > 0 {
		jobs = jobs[min(offset, len(jobs)):]
	}
	if limit != nil && len(jobs) > *limit {
		jobs = jobs[:*limit]
	}
	b := []byte(`{"jobs": [`)
	for i, j := range jobs {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, j.raw...)
	}
	b = append(b, `], "pagination": {"offset": `...)
	b = strconv.AppendInt(b, int64(offset), 10)
	b = append(b, `, "limit": `...)
	if limit != nil {
		b = strconv.AppendInt(b, int64(*limit), 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `, "total": `...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `, "has_more": `...)
	b = strconv.AppendBool(b, offset+len(jobs) < total)
	b = append(b, "}}"...)
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// jobSortKey is ComfyUI's apply_sorting key of one job.
func jobSortKey(raw json.RawMessage, sortBy string) float64 {
	return comfyapi.ParseJobTimes(raw).SortKey(sortBy)
}

// listVisible is the request's isolation filter of merged lists: whether
// a (client-facing) prompt id may be listed; nil lists every one.
func (s *mergedViews) listVisible(ctx *fasthttp.RequestCtx) func(id string) bool {
	return s.keys.promptView(requestKey(ctx)).Visible
}
