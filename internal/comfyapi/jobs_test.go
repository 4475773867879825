package comfyapi

import (
	"encoding/json"
	"testing"
)

func TestJobsPage(t *testing.T) {
	t.Parallel()
	p, err := ParseJobsPage([]byte(`{"jobs": [{"id": "a"}, {"id": "b"}], "pagination": {"offset": 0, "limit": null, "total": 7, "has_more": true}}`))
	if err != nil || len(p.Jobs) != 2 || p.Total != 7 {
		t.Errorf("got %+v, %v", p, err)
	}
	// A total that is no number is none; a page without jobs is empty.
	if p, err := ParseJobsPage([]byte(`{"pagination": {"total": "7"}}`)); err != nil || p.Total != 0 || p.Jobs != nil {
		t.Errorf("got %+v, %v", p, err)
	}
	for _, bad := range []string{`{"jobs": {"a": 1}}`, `[]`, `x`} {
		if _, err := ParseJobsPage([]byte(bad)); err == nil {
			t.Errorf("%s read as a page", bad)
		}
	}
}

// TestJobTimes: ComfyUI's apply_sorting keys, each time read on its own
// (one time of an odd type does not lose the others).
func TestJobTimes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		job, sortBy string
		want        float64
	}{
		{`{"create_time": 100, "execution_start_time": 110, "execution_end_time": 150}`, "created_at", 100},
		{`{"create_time": 100, "execution_start_time": 110, "execution_end_time": 150}`, "execution_duration", 40},
		{`{"create_time": 100, "execution_start_time": 0, "execution_end_time": 150}`, "execution_duration", 0},
		{`{"create_time": 100, "execution_start_time": "soon"}`, "created_at", 100},
		{`{"create_time": null}`, "created_at", 0},
		{`[1]`, "created_at", 0},
	} {
		if got := ParseJobTimes([]byte(tc.job)).SortKey(tc.sortBy); got != tc.want {
			t.Errorf("%s by %s: %v, want %v", tc.job, tc.sortBy, got, tc.want)
		}
	}
}

func TestEditJobs(t *testing.T) {
	t.Parallel()
	body := `{"jobs": [{"id": "a", "extra_data": {"k": 1}}, {"id": "b"}], "pagination": {"total": 2}}`
	out, err := EditJobs([]byte(body), func(j json.RawMessage) (json.RawMessage, bool) {
		id, _ := JobID(j)
		if id == "b" {
			return nil, false
		}
		e, err := EditJob(j, func(member string, val json.RawMessage) json.RawMessage {
			if member == "extra_data" {
				return json.RawMessage(`{}`)
			}
			return val
		})
		return e, err == nil
	})
	want := `{"jobs": [{"id": "a", "extra_data": {}}], "pagination": {"total": 2}}`
	if err != nil || string(out) != want {
		t.Errorf("EditJobs = %s, %v; want %s", out, err, want)
	}
	if out, err := EditJobs([]byte(`{"jobs": 3}`), nil); err != nil || string(out) != `{"jobs": []}` {
		t.Errorf("jobs that are no list: %s, %v", out, err)
	}
}

// TestJobIDs: ComfyUI's job id is "id" (the last of a repeated key, as
// Python reads it); AnyJobID also takes prompt_id and comfygate's job_id,
// whichever comes first.
func TestJobIDs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ job, id, any string }{
		{`{"id": "a", "status": "completed"}`, "a", "a"},
		{`{"id": "a", "id": "b"}`, "b", "a"},
		{`{"job_id": "j", "id": "a"}`, "a", "j"},
		{`{"prompt_id": "p"}`, "", "p"},
		{`{"id": 5}`, "", ""},
	} {
		id, err1 := JobID([]byte(tc.job))
		any, err2 := AnyJobID([]byte(tc.job))
		if err1 != nil || err2 != nil || id != tc.id || any != tc.any {
			t.Errorf("%s: JobID %q AnyJobID %q (%v %v); want %q %q", tc.job, id, any, err1, err2, tc.id, tc.any)
		}
	}
	if _, err := JobID([]byte(`["id"]`)); err == nil {
		t.Error("an array has a job id")
	}
	if _, err := AnyJobID([]byte(`nope`)); err == nil {
		t.Error("text has a job id")
	}
}
