package jobs

import (
	"cmp"
	"slices"
	"time"
)

// Line is the job facade at a glance, for the operator's view: the wait
// line in comfygate (in the order jobs leave it) and the jobs at the
// instances.
type Line struct {
	// Waiting is the head of the wait line, first to go first (the
	// keys in turn).
	Waiting []LineJob `json:"waiting"`
	// WaitingTotal is the whole line's length (Waiting may be cut).
	WaitingTotal int `json:"waitingTotal"`
	// Active are the jobs taken from the line and not finished: being
	// submitted, queued at an instance, running, or their result fetched.
	Active []LineJob `json:"active"`
	// ActiveTotal counts them all (Active may be cut).
	ActiveTotal int `json:"activeTotal"`
}

// LineJob is one job in Line.
type LineJob struct {
	ID         string  `json:"id"`
	Workflow   string  `json:"workflow"`
	State      string  `json:"state"` // waiting, submitting, queued, running, fetching
	Progress   int     `json:"progress"`
	Instance   string  `json:"instance,omitempty"`
	AgeSeconds float64 `json:"ageSeconds"`
}

// stateNames names the states Line shows.
var stateNames = map[state]string{
	stWaiting: "waiting", stSubmitting: "submitting", stQueued: "queued",
	stRunning: "running", stFetching: "fetching",
}

// Line returns the wait line and the active jobs, at most max of each.
func (s *Service) Line(max int) Line { return s.api.lineSnapshot(max) }

// lineJobOf is j as Line shows it at now. The engine's lock is held.
func lineJobOf(j *job, now time.Time) LineJob {
	return LineJob{ID: j.id, Workflow: j.wf.name, State: stateNames[j.state], Progress: j.prog.percent(),
		Instance: j.instance, AgeSeconds: float64(now.Sub(j.created).Milliseconds()) / 1000}
}

// lineSnapshot is Service.Line: with the shared job line, the fleet's
// (sharedJobs.lineView), unless the shared store does not answer.
func (s *api) lineSnapshot(max int) Line {
	if s.eng.sh != nil {
		if l, ok := s.eng.sh.lineView(max); ok {
			return l
		}
	}
	s.eng.lock()
	defer s.eng.unlock()
	now := s.eng.timeNow()
	l := Line{Waiting: []LineJob{}, Active: []LineJob{}, WaitingTotal: s.line.len()}
	for _, j := range s.line.head(max) {
		l.Waiting = append(l.Waiting, lineJobOf(j, now))
	}
	// Active states are not terminal: none of these jobs has expired.
	// Mirrors of jobs other replicas run are theirs to show.
	active, _, _ := s.eng.jobsLocked("", func(j *job) bool { return !j.remote && j.state != stWaiting && stateNames[j.state] != "" })
	slices.SortFunc(active, func(a, b *job) int { return cmp.Compare(a.seq, b.seq) })
	l.ActiveTotal = len(active)
	for _, j := range active[:min(len(active), max)] {
		l.Active = append(l.Active, lineJobOf(j, now))
	}
	return l
}
