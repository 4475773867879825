package comfyapi

import (
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// ComfyUI's job API (GET /api/jobs and /api/jobs/{id}, 2026) answers job
// objects: {"id", "status", "priority", "create_time",
// "execution_start_time", "execution_end_time", "outputs",
// "preview_output", "outputs_count", "workflow": {"prompt", "extra_data"},
// "execution_status", "execution_error", ...}; a list answers {"jobs":
// [job], "pagination": {"offset", "limit", "total", "has_more"}}.

// JobsPage is the part of a GET /api/jobs answer comfygate reads.
type JobsPage struct {
	// Jobs are the page's job objects, raw.
	Jobs []json.RawMessage
	// Total is pagination.total (0 when absent or not a number).
	Total int
}

// ParseJobsPage reads a GET /api/jobs answer. It fails when body is not
// a JSON object or its "jobs" is neither absent, null nor a list.
func ParseJobsPage(body []byte) (JobsPage, error) {
	var p JobsPage
	m := objectMembers(body)
	if m == nil {
		return p, errNotObject
	}
	if raw := m["jobs"]; raw != nil {
		if err := json.Unmarshal(raw, &p.Jobs); err != nil {
			return JobsPage{}, err
		}
	}
	if f, ok := Number(objectMembers(m["pagination"])["total"]); ok {
		p.Total = int(f)
	}
	return p, nil
}

// JobTimes are a job's create_time, execution_start_time and
// execution_end_time (ms), nil when absent or not numbers.
type JobTimes struct {
	Create, Start, End *float64
}

// ParseJobTimes reads the times of one job object.
func ParseJobTimes(raw []byte) JobTimes {
	m := objectMembers(raw)
	num := func(k string) *float64 {
		if f, ok := Number(m[k]); ok {
			return &f
		}
		return nil
	}
	return JobTimes{Create: num("create_time"), Start: num("execution_start_time"), End: num("execution_end_time")}
}

// SortKey is ComfyUI's apply_sorting key of a job: its execution duration
// for sort_by "execution_duration" (0 unless both times are set and
// non-zero), else its create_time (0 when absent).
func (t JobTimes) SortKey(sortBy string) float64 {
	if sortBy == "execution_duration" {
		if t.Start != nil && t.End != nil && *t.Start != 0 && *t.End != 0 {
			return *t.End - *t.Start
		}
		return 0
	}
	if t.Create != nil {
		return *t.Create
	}
	return 0
}

// EditJobs rewrites a GET /api/jobs answer: edit gets each job object of
// "jobs" in order and returns its replacement, or keep false to leave it
// out. A "jobs" that is not a list becomes []; other members are kept. It
// fails when body is not a JSON object.
func EditJobs(body []byte, edit func(job json.RawMessage) (out json.RawMessage, keep bool)) ([]byte, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	for i, m := range ms {
		if m.Key != "jobs" {
			continue
		}
		var jobs []json.RawMessage
		if json.Unmarshal(m.Val, &jobs) != nil {
			ms[i].Val = json.RawMessage("[]")
			continue
		}
		kept := jobs[:0]
		for _, j := range jobs {
			if out, ok := edit(j); ok {
				kept = append(kept, out)
			}
		}
		ms[i].Val = AppendArray(nil, kept)
	}
	return jsonobj.Append(nil, ms), nil
}

// EditJob rewrites one job object member by member: edit gets each
// member's name and value and returns the value to keep. It fails when
// raw is not a JSON object.
func EditJob(raw []byte, edit func(member string, val json.RawMessage) json.RawMessage) ([]byte, error) {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return nil, err
	}
	for i, m := range ms {
		ms[i].Val = edit(m.Key, m.Val)
	}
	return jsonobj.Append(nil, ms), nil
}

// JobID returns a ComfyUI job object's "id" when it is a string ("" when
// absent or of another type; the last of a repeated key, as Python reads
// it). It fails when raw is not a JSON object.
func JobID(raw []byte) (string, error) {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return "", err
	}
	id := ""
	for _, m := range ms {
		if m.Key == "id" {
			id, _ = String(m.Val)
		}
	}
	return id, nil
}

// AnyJobID returns the id of a job object that is ComfyUI's ("id") or
// names its prompt ("prompt_id") or is one of comfygate's own job API
// ("job_id"): the first of those members, when it is a string ("" when
// none is, or it is of another type). It fails when raw is not a JSON
// object.
func AnyJobID(raw []byte) (string, error) {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if m.Key == "id" || m.Key == FieldPromptID || m.Key == "job_id" {
			s, _ := String(m.Val)
			return s, nil
		}
	}
	return "", nil
}
