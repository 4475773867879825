package comfysim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/comfygate/comfygate/internal/ids"
)

// The 2026 jobs API (comfy_execution/jobs.py), served only in 2026 mode.

var jobStatuses = []string{"pending", "in_progress", "completed", "failed", "cancelled"}

type jobErr struct {
	Error string `json:"error"`
}

func createTime(extra *rawObj) any {
	if raw, ok := extra.get("create_time"); ok {
		return decodeAny(raw)
	}
	return nil
}

func workflowID(extra *rawObj) any {
	raw, ok := extra.get("extra_pnginfo")
	if !ok {
		return nil
	}
	var info struct {
		Workflow struct {
			ID any `json:"id"`
		} `json:"workflow"`
	}
	if json.Unmarshal(raw, &info) != nil {
		return nil
	}
	return info.Workflow.ID
}

// prune drops None values, like comfy_api.internal.prune_dict.
func prune(o ordered) ordered {
	out := ordered{}
	for _, m := range o {
		if m.V != nil {
			out = append(out, m)
		}
	}
	return out
}

// jobRoutes are the 2026 jobs API's routes (/api/jobs), over the queue and
// the history.
type jobRoutes struct{ *instance }

func (in jobRoutes) queueJobLocked(it *queueItem, status string, withWorkflow bool) ordered {
	job := prune(ordered{
		{"id", it.id},
		{"status", status},
		{"priority", it.number},
		{"create_time", createTime(it.extra)},
		{"outputs_count", 0},
		{"previewable_outputs_count", 0},
		{"workflow_id", workflowID(it.extra)},
	})
	if withWorkflow {
		job = append(job, kv{"workflow", ordered{{"prompt", it.prompt.obj}, {"extra_data", it.extra}}})
	}
	return job
}

func (in jobRoutes) historyJobLocked(id string, e *historyEntry, full bool) ordered {
	var start, end, execErr any
	interrupted := false
	for _, m := range e.Status.Messages {
		name, _ := m[0].(string)
		ts := func() any {
			switch d := m[1].(type) {
			case promptEvent:
				return d.Timestamp
			case interruptedEvent:
				return d.Timestamp
			case errorEvent:
				return d.Timestamp
			}
			return nil
		}
		switch name {
		case "execution_start":
			start = ts()
		case "execution_success":
			end = ts()
		case "execution_error":
			end = ts()
			execErr = m[1]
		case "execution_interrupted":
			end = ts()
			interrupted = true
		}
	}
	status := "completed"
	if e.Status.StatusStr == "error" {
		status = "failed"
		if interrupted {
			status = "cancelled"
		}
	}
	count := 0
	var preview, fallback any
	for _, o := range e.Outputs {
		ui, _ := o.V.(*nodeUI)
		if ui == nil {
			continue
		}
		for _, img := range ui.Images {
			count++
			enriched := ordered{{"filename", img.Filename}, {"subfolder", img.Subfolder}, {"type", img.Type}, {"nodeId", o.K}, {"mediaType", "images"}}
			if preview == nil && img.Type == "output" {
				preview = enriched
			} else if fallback == nil {
				fallback = enriched
			}
		}
	}
	if preview == nil {
		preview = fallback
	}
	job := prune(ordered{
		{"id", id},
		{"status", status},
		{"priority", e.item.number},
		{"create_time", createTime(e.item.extra)},
		{"execution_start_time", start},
		{"execution_end_time", end},
		{"execution_error", execErr},
		{"outputs_count", count},
		{"previewable_outputs_count", count},
		{"preview_output", preview},
		{"workflow_id", workflowID(e.item.extra)},
	})
	if full {
		job = append(job,
			kv{"outputs", e.Outputs},
			kv{"execution_status", e.Status},
			kv{"workflow", ordered{{"prompt", e.item.prompt.obj}, {"extra_data", e.item.extra}}},
		)
	}
	return job
}

func jobInt(job ordered, k string) int64 {
	v, _ := job.get(k)
	switch x := v.(type) {
	case int64:
		return x
	case json.Number:
		n, _ := x.Int64()
		return n
	}
	return 0
}

// getJobs is GET /api/jobs.
func (in jobRoutes) getJobs(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	q := r.URL.Query()
	var filter []string
	if sp := q.Get("status"); sp != "" {
		var bad []string
		for _, st := range strings.Split(sp, ",") {
			st = strings.ToLower(strings.TrimSpace(st))
			if st == "" {
				continue
			}
			filter = append(filter, st)
			if !contains(jobStatuses, st) {
				bad = append(bad, st)
			}
		}
		if len(bad) > 0 {
			writeJSON(w, http.StatusBadRequest, jobErr{fmt.Sprintf("Invalid status value(s): %s. Valid values: %s", strings.Join(bad, ", "), strings.Join(jobStatuses, ", "))})
			return
		}
	}
	if filter == nil {
		filter = jobStatuses
	}
	sortBy, sortOrder := "created_at", "desc"
	if v, ok := q["sort_by"]; ok {
		sortBy = strings.ToLower(v[0])
	}
	if v, ok := q["sort_order"]; ok {
		sortOrder = strings.ToLower(v[0])
	}
	if sortBy != "created_at" && sortBy != "execution_duration" {
		writeJSON(w, http.StatusBadRequest, jobErr{"sort_by must be 'created_at' or 'execution_duration'"})
		return
	}
	if sortOrder != "asc" && sortOrder != "desc" {
		writeJSON(w, http.StatusBadRequest, jobErr{"sort_order must be 'asc' or 'desc'"})
		return
	}
	var limit any // None
	limitN := -1
	if v, ok := q["limit"]; ok {
		n, ok := pyInt(v[0])
		if !ok {
			writeJSON(w, http.StatusBadRequest, jobErr{"limit must be an integer"})
			return
		}
		if n <= 0 {
			writeJSON(w, http.StatusBadRequest, jobErr{"limit must be a positive integer"})
			return
		}
		limit, limitN = n, n
	}
	offset := 0
	if v, ok := q["offset"]; ok {
		n, ok := pyInt(v[0])
		if !ok {
			writeJSON(w, http.StatusBadRequest, jobErr{"offset must be an integer"})
			return
		}
		offset = max(n, 0)
	}
	workflow := q.Get("workflow_id")

	in.mu.Lock()
	var jobs []ordered
	if contains(filter, "in_progress") && in.running != nil {
		jobs = append(jobs, in.queueJobLocked(in.running, "in_progress", false))
	}
	if contains(filter, "pending") {
		for _, it := range in.queue {
			jobs = append(jobs, in.queueJobLocked(it, "pending", false))
		}
	}
	for _, id := range in.history.keys {
		j := in.historyJobLocked(id, in.history.entries[id], false)
		st, _ := j.get("status")
		if contains(filter, st.(string)) && st != "pending" && st != "in_progress" {
			jobs = append(jobs, j)
		}
	}
	if workflow != "" {
		kept := jobs[:0]
		for _, j := range jobs {
			if id, _ := j.get("workflow_id"); pyStr(id) == workflow {
				kept = append(kept, j)
			}
		}
		jobs = kept
	}
	key := func(j ordered) int64 {
		if sortBy == "execution_duration" {
			s, e := jobInt(j, "execution_start_time"), jobInt(j, "execution_end_time")
			if s != 0 && e != 0 {
				return e - s
			}
			return 0
		}
		return jobInt(j, "create_time")
	}
	sort.SliceStable(jobs, func(a, b int) bool {
		if sortOrder == "desc" {
			return key(jobs[a]) > key(jobs[b])
		}
		return key(jobs[a]) < key(jobs[b])
	})
	total := len(jobs)
	if offset > 0 {
		jobs = jobs[min(offset, len(jobs)):]
	}
	if limitN >= 0 && len(jobs) > limitN {
		jobs = jobs[:limitN]
	}
	if jobs == nil {
		jobs = []ordered{}
	}
	body := pyJSON(ordered{
		{"jobs", jobs},
		{"pagination", ordered{{"offset", offset}, {"limit", limit}, {"total", total}, {"has_more", offset+len(jobs) < total}}},
	})
	in.mu.Unlock()
	writeRawJSON(w, http.StatusOK, body)
}

// getJob is GET /api/jobs/{id}.
func (in jobRoutes) getJob(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	id := p["id"]
	in.mu.Lock()
	var job ordered
	if e, ok := in.history.entries[id]; ok {
		job = in.historyJobLocked(id, e, true)
	} else if in.running != nil && in.running.id == id {
		job = in.queueJobLocked(in.running, "in_progress", true)
	} else {
		for _, it := range in.queue {
			if it.id == id {
				job = in.queueJobLocked(it, "pending", true)
				break
			}
		}
	}
	var body []byte
	if job != nil {
		body = pyJSON(job)
	}
	in.mu.Unlock()
	if job == nil {
		writeJSON(w, http.StatusNotFound, jobErr{"Job not found"})
		return
	}
	writeRawJSON(w, http.StatusOK, body)
}

// cancelLocked interrupts a running job or dequeues a pending one.
func (in jobRoutes) cancelLocked(id string) bool {
	if in.running != nil && in.running.id == id {
		in.interrupted = true
		return true
	}
	return in.deletePendingLocked(id)
}

// postJobCancel is POST /api/jobs/{id}/cancel.
func (in jobRoutes) postJobCancel(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	in.mu.Lock()
	cancelled := in.cancelLocked(p["id"])
	in.mu.Unlock()
	writeJSON(w, http.StatusOK, ordered{{"cancelled", cancelled}})
}

// postJobsCancel is POST /api/jobs/cancel {"job_ids": [...]}.
func (in jobRoutes) postJobsCancel(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := parseRawObj(body)
	if err != nil && !errors.Is(err, errNotObject) {
		writeJSON(w, http.StatusBadRequest, jobErr{"Request body must be valid JSON"})
		return
	}
	var jobIDs []any
	if err == nil {
		if raw, has := req.get("job_ids"); has {
			jobIDs, ok = decodeAny(raw).([]any)
		} else {
			ok = false
		}
	}
	if err != nil || !ok {
		writeJSON(w, http.StatusBadRequest, jobErr{"job_ids must be a list"})
		return
	}
	var invalid []string
	var valid []string
	for _, x := range jobIDs {
		s, isStr := x.(string)
		if !isStr || !ids.IsCanonicalUUID(s) {
			if isStr {
				invalid = append(invalid, s)
			} else {
				invalid = append(invalid, pyRepr(x))
			}
			continue
		}
		valid = append(valid, s)
	}
	if len(invalid) > 0 {
		writeJSON(w, http.StatusBadRequest, ordered{{"error", "job_ids contains invalid id(s)"}, {"invalid_ids", invalid}})
		return
	}
	in.mu.Lock()
	cancelled := false
	for _, id := range valid {
		if in.cancelLocked(id) {
			cancelled = true
		}
	}
	in.mu.Unlock()
	writeJSON(w, http.StatusOK, ordered{{"cancelled", cancelled}})
}
