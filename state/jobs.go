package state

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// JobTTL is how long an unfinished job's record, events and images stay
// after their last write or claim renewal: a job waits and runs within it.
// A finished job's record is written with the job API's retention
// (jobs.timeout) instead.
const JobTTL = 24 * time.Hour

// The coarse states the shared job line acts on. A job's record carries
// its full state in State; these are the ones the line's scripts read.
const (
	JobWaiting   = "waiting" // in the wait line, claimed by no replica
	JobCompleted = "completed"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// JobDone reports whether a job in state st has ended.
func JobDone(st string) bool { return st == JobCompleted || st == JobFailed || st == JobCancelled }

// ErrLineFull refuses a job when the shared wait line holds its maximum
// of jobs; ErrLineBytes when its jobs' images would pass their maximum.
var (
	ErrLineFull  = errors.New("state: the shared wait line is full")
	ErrLineBytes = errors.New("state: the shared wait line's images are at their maximum")
)

// JobSummary is what the job list shows of a job besides its state.
type JobSummary struct {
	// Key is the name of the API key that submitted the job ("" with
	// keys off): the line takes turns between keys, and List shows a
	// key its own jobs.
	Key      string
	Workflow string
	Created  time.Time
}

// JobAdd is a job accepted by a replica, for the shared wait line.
type JobAdd struct {
	ID string
	JobSummary
	// Static is what the job runs (opaque to the store), Live what changes.
	Static, Live []byte
	// Queued is the job's first event in two halves, which the store
	// joins around the job's 1-based place in the line (in the order
	// Claim takes jobs) as it adds it.
	Queued [2][]byte
	Images [][]byte // the bytes of its images, in order
	// MaxWaiting and MaxBytes bound the line: at most MaxWaiting jobs,
	// and the waiting jobs' images at most MaxBytes (0: no bound) unless
	// the line is empty.
	MaxWaiting int
	MaxBytes   int64
}

// JobRecord is one job as the replicas share it.
type JobRecord struct {
	ID           string
	Static, Live []byte
	State        string
	Holder       string   // the replica whose claim it is ("" while waiting)
	Cancel       bool     // a cancel was asked on another replica
	Position     int      // 1-based place in the wait line, in the order Claim takes jobs; 0 when not waiting
	Events       [][]byte // the events from the index Read was asked for (all in a claim)
	Images       [][]byte // only in a claim

	images int // how many images the job holds in Redis
}

// JobListed is one job in List: its summary, state and live part.
type JobListed struct {
	ID string
	JobSummary
	State string
	Live  []byte
}

// JobWrite is a change of a job its holder writes: its state and live
// part, and the events of its log from index From on (0-based).
type JobWrite struct {
	ID     string
	State  string
	Live   []byte
	From   int
	Events [][]byte
	// TTL is the record's life from this write (JobTTL while it runs).
	TTL time.Duration
}

// Jobs is the job API's shared wait line and job records. A job is added
// waiting. The line is fair across API keys: each key's jobs are taken in
// their order of arrival, and the keys with waiting jobs take turns
// (round robin; a key whose first job joins takes its turn after the keys
// already waiting). With one key it is first come first served. A
// replica claims a job (Claim, Take) with a lease it renews
// (Renew) while it holds the job, and writes its changes (Write) only
// while the claim is its own. A claim whose lease ran out (its replica
// died) is claimed again by the next Claim of any replica. Every replica
// reads any job (Read) and may ask its holder to cancel it (AskCancel).
type Jobs interface {
	// Add records a job and puts it at the end of the wait line, or
	// returns ErrLineFull or ErrLineBytes.
	Add(ctx context.Context, a JobAdd) error
	// Create records job id as replica's, outside the line and without a
	// lease (no Claim takes it, no Renew keeps it): a job that waits for
	// nothing (completed from a cache). Its changes are Writes.
	Create(ctx context.Context, id, replica string, static []byte, sum JobSummary) error
	// Claim takes up to n jobs for replica: first those whose claim
	// expired, then the next ones of the line, key by key in turn. Each
	// comes with its whole event log and its images.
	Claim(ctx context.Context, replica string, n int, lease time.Duration) ([]JobRecord, error)
	// Take claims job id for replica when it is waiting in the line; ok
	// is false when it is not.
	Take(ctx context.Context, id, replica string, lease time.Duration) (rec JobRecord, ok bool, err error)
	// Write writes each change whose job replica still holds; lost are
	// the ids it no longer holds (nothing written for them). A change to
	// an ended state ends the claim and drops the job's images.
	Write(ctx context.Context, replica string, ws []JobWrite) (lost []string, err error)
	// Renew renews replica's claims of ids: held maps each id it still
	// holds to whether a cancel was asked for it.
	Renew(ctx context.Context, replica string, ids []string, lease time.Duration) (held map[string]bool, err error)
	// Release ends replica's claims of ids at once (a replica that shuts
	// down): the next Claim of any replica takes those jobs first.
	Release(ctx context.Context, replica string, ids []string) error
	// Read returns the records of ids (nil for one no replica recorded,
	// or expired) with their events from from[i] on.
	Read(ctx context.Context, ids []string, from []int) ([]*JobRecord, error)
	// AskCancel flags job id for its holder to cancel; false when it has
	// ended or is unknown.
	AskCancel(ctx context.Context, id string) (bool, error)
	// List returns the unexpired jobs of API key key, every key's when
	// key is "", oldest first: at most limit, the newest.
	List(ctx context.Context, key string, limit int) ([]JobListed, error)
	// Line returns the wait line's first n jobs, in the order Claim takes
	// them, and up to n of the jobs the replicas hold (claimed, not
	// ended), oldest first, with the totals of both.
	Line(ctx context.Context, n int) (JobLine, error)
}

// JobLine is the fleet's job line at a glance (Jobs.Line).
type JobLine struct {
	Waiting      []JobListed
	WaitingTotal int
	Held         []JobListed
	HeldTotal    int
}

// Jobs returns the store's shared job line: one for all its users.
func (s *Store) Jobs() Jobs { return s.jobs }

// memJobs is Jobs in this process's memory.
type memJobs struct {
	now func() time.Time

	mu      sync.Mutex // guards the fields below
	seq     int64
	recs    map[string]*memJob
	bytes   int64 // the images of the waiting jobs
	waiting int
	byKey   map[string][]*memJob // each key's waiting jobs by arrival
	ring    []string             // the keys with waiting jobs, in turn: ring[0] gives the next
}

type memJob struct {
	rec     JobRecord
	sum     JobSummary
	events  [][]byte
	images  [][]byte
	size    int64
	seq     int64 // place in the line while waiting
	claim   time.Time
	noLease bool // Created: held without a lease, never claimed again
	expires time.Time
}

// listed is what List and Line show of j.
func (j *memJob) listed() JobListed {
	return JobListed{ID: j.rec.ID, JobSummary: j.sum, State: j.rec.State, Live: j.rec.Live}
}

func newMemJobs(now func() time.Time) *memJobs {
	return &memJobs{now: now, recs: map[string]*memJob{}, byKey: map[string][]*memJob{}}
}

// liveLocked returns job id unless it expired.
func (m *memJobs) liveLocked(id string) *memJob {
	j := m.recs[id]
	if j == nil {
		return nil
	}
	if !m.now().Before(j.expires) {
		m.unlineLocked(j)
		delete(m.recs, id)
		return nil
	}
	return j
}

// unlineLocked takes j out of the wait line, if it waits there; its key
// leaves the ring when it has no job left.
func (m *memJobs) unlineLocked(j *memJob) {
	if j.seq == 0 {
		return
	}
	j.seq = 0
	m.waiting--
	m.bytes -= j.size
	key := j.sum.Key
	q := slices.DeleteFunc(m.byKey[key], func(x *memJob) bool { return x == j })
	if len(q) > 0 {
		m.byKey[key] = q
		return
	}
	delete(m.byKey, key)
	m.ring = slices.DeleteFunc(m.ring, func(k string) bool { return k == key })
}

// placeLocked is the 1-based place of waiting job j: round r of the
// rotation takes the r-th job of every key that has one, in ring order,
// so before j go the first rank jobs of every key, then the rank-th job
// of the keys ahead of j's in the ring.
func (m *memJobs) placeLocked(j *memJob) int {
	rank := slices.Index(m.byKey[j.sum.Key], j)
	pos, behind := 1, false
	for _, k := range m.ring {
		n := len(m.byKey[k])
		pos += min(n, rank)
		if k == j.sum.Key {
			behind = true
		} else if !behind && n > rank {
			pos++
		}
	}
	return pos
}

// expireWaitingLocked drops the waiting jobs whose record expired.
func (m *memJobs) expireWaitingLocked() {
	for _, q := range m.byKey {
		for _, j := range slices.Clone(q) {
			m.liveLocked(j.rec.ID)
		}
	}
}

func (m *memJobs) Add(_ context.Context, a JobAdd) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireWaitingLocked()
	var size int64
	for _, im := range a.Images {
		size += int64(len(im))
	}
	switch {
	case m.waiting >= a.MaxWaiting:
		return ErrLineFull
	case a.MaxBytes > 0 && m.waiting > 0 && m.bytes+size > a.MaxBytes:
		return ErrLineBytes
	}
	m.seq++
	m.waiting++
	m.bytes += size
	j := &memJob{rec: JobRecord{ID: a.ID, Static: a.Static, Live: a.Live, State: JobWaiting},
		sum: a.JobSummary, images: a.Images, size: size, seq: m.seq, expires: m.now().Add(JobTTL)}
	if len(m.byKey[a.Key]) == 0 {
		m.ring = append(m.ring, a.Key)
	}
	m.byKey[a.Key] = append(m.byKey[a.Key], j)
	if len(a.Queued[0]) > 0 {
		j.events = [][]byte{slices.Concat(a.Queued[0], []byte(strconv.Itoa(m.placeLocked(j))), a.Queued[1])}
	}
	m.recs[a.ID] = j
	return nil
}

func (m *memJobs) Create(_ context.Context, id, replica string, static []byte, sum JobSummary) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[id] = &memJob{rec: JobRecord{ID: id, Static: static, State: "submitting", Holder: replica}, sum: sum,
		noLease: true, expires: m.now().Add(JobTTL)}
	return nil
}

// ownLocked gives j to replica.
func (m *memJobs) ownLocked(j *memJob, replica string, lease time.Duration) JobRecord {
	m.unlineLocked(j)
	j.rec.Holder = replica
	j.claim = m.now().Add(lease)
	j.expires = m.now().Add(JobTTL)
	rec := j.rec
	rec.Events, rec.Images = slices.Clone(j.events), j.images
	return rec
}

func (m *memJobs) Claim(_ context.Context, replica string, n int, lease time.Duration) ([]JobRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var expired []*memJob
	for id := range m.recs {
		j := m.liveLocked(id)
		if j != nil && j.seq == 0 && j.rec.Holder != "" && !j.noLease && !JobDone(j.rec.State) && !now.Before(j.claim) {
			expired = append(expired, j)
		}
	}
	slices.SortFunc(expired, func(a, b *memJob) int { return a.claim.Compare(b.claim) })
	var out []JobRecord
	for _, j := range expired[:min(len(expired), n)] {
		out = append(out, m.ownLocked(j, replica, lease))
	}
	for len(out) < n && len(m.ring) > 0 {
		// The key at the head of the ring gives its first job and takes
		// its next turn after the others.
		key := m.ring[0]
		m.ring = append(m.ring[1:], key)
		out = append(out, m.ownLocked(m.byKey[key][0], replica, lease))
	}
	return out, nil
}

func (m *memJobs) Take(_ context.Context, id, replica string, lease time.Duration) (JobRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.liveLocked(id)
	if j == nil || j.seq == 0 {
		return JobRecord{}, false, nil
	}
	return m.ownLocked(j, replica, lease), true, nil
}

func (m *memJobs) Write(_ context.Context, replica string, ws []JobWrite) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var lost []string
	for _, w := range ws {
		j := m.liveLocked(w.ID)
		if j == nil || j.rec.Holder != replica {
			lost = append(lost, w.ID)
			continue
		}
		j.rec.State, j.rec.Live = w.State, w.Live
		for i, ev := range w.Events {
			if w.From+i == len(j.events) {
				j.events = append(j.events, ev)
			}
		}
		j.expires = m.now().Add(w.TTL)
		if JobDone(w.State) {
			j.images = nil
		}
	}
	return lost, nil
}

func (m *memJobs) Renew(_ context.Context, replica string, ids []string, lease time.Duration) (map[string]bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	held := map[string]bool{}
	for _, id := range ids {
		j := m.liveLocked(id)
		if j == nil || j.rec.Holder != replica || j.noLease || JobDone(j.rec.State) {
			continue
		}
		j.claim = m.now().Add(lease)
		j.expires = m.now().Add(JobTTL)
		held[id] = j.rec.Cancel
	}
	return held, nil
}

func (m *memJobs) Release(_ context.Context, replica string, ids []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		if j := m.liveLocked(id); j != nil && j.rec.Holder == replica && !JobDone(j.rec.State) {
			j.claim = time.Time{}
		}
	}
	return nil
}

func (m *memJobs) Read(_ context.Context, ids []string, from []int) ([]*JobRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireWaitingLocked()
	out := make([]*JobRecord, len(ids))
	for i, id := range ids {
		j := m.liveLocked(id)
		if j == nil {
			continue
		}
		rec := j.rec
		if j.seq != 0 {
			rec.Position = m.placeLocked(j)
		}
		rec.Events = slices.Clone(j.events[min(max(from[i], 0), len(j.events)):])
		out[i] = &rec
	}
	return out, nil
}

func (m *memJobs) AskCancel(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.liveLocked(id)
	if j == nil || JobDone(j.rec.State) {
		return false, nil
	}
	j.rec.Cancel = true
	return true, nil
}

func (m *memJobs) List(_ context.Context, key string, limit int) ([]JobListed, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []JobListed
	for id := range m.recs {
		if j := m.liveLocked(id); j != nil && (key == "" || j.sum.Key == key) {
			out = append(out, j.listed())
		}
	}
	slices.SortFunc(out, func(a, b JobListed) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out[max(0, len(out)-limit):], nil
}

func (m *memJobs) Line(_ context.Context, n int) (JobLine, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireWaitingLocked()
	l := JobLine{WaitingTotal: m.waiting}
	// Round r of the rotation takes the r-th job of every key, in ring order.
	for r := 0; len(l.Waiting) < n; r++ {
		more := false
		for _, k := range m.ring {
			if q := m.byKey[k]; r < len(q) {
				more = true
				if len(l.Waiting) < n {
					l.Waiting = append(l.Waiting, q[r].listed())
				}
			}
		}
		if !more {
			break
		}
	}
	var held []*memJob
	for id := range m.recs {
		if j := m.liveLocked(id); j != nil && j.seq == 0 && j.rec.Holder != "" && !j.noLease && !JobDone(j.rec.State) {
			held = append(held, j)
		}
	}
	slices.SortFunc(held, func(a, b *memJob) int { return a.sum.Created.Compare(b.sum.Created) })
	l.HeldTotal = len(held)
	for _, j := range held[:min(len(held), n)] {
		l.Held = append(l.Held, j.listed())
	}
	return l, nil
}

// redisJobs is Jobs in Redis. Every key carries the hash tag {jobs}, so
// the line's scripts, which touch the line and the records of the jobs
// they move, act on one Cluster slot:
//
//	comfygate:{jobs}:line        sorted set: waiting job ids by arrival (all keys)
//	comfygate:{jobs}:seq         the arrival counter (INCR)
//	comfygate:{jobs}:line_bytes  the waiting jobs' image bytes
//	comfygate:{jobs}:line_sizes  hash: waiting job id -> its image bytes
//	comfygate:{jobs}:line_keys   hash: waiting job id -> the API key it waits under
//	comfygate:{jobs}:ring        list: the API keys with waiting jobs, in turn (the head gives the next job)
//	comfygate:{jobs}:kline:<key> sorted set: the waiting job ids of API key <key> by arrival
//	comfygate:{jobs}:claims      sorted set: claimed job ids by the end of their lease (ms)
//	comfygate:{jobs}:list        sorted set: every job id by its creation (ms), for List
//	comfygate:{jobs}:list:<key>  sorted set: the job ids of API key <key> by creation (ms)
//	comfygate:{jobs}:job:<id>    hash: s static, l live, st state, h holder, c cancel asked, n images,
//	                             w workflow, t creation (ms), k API key
//	comfygate:{jobs}:job:<id>:ev list: the job's events in order
//	comfygate:{jobs}:job:<id>:img:<n> the bytes of its n-th image (1-based)
//
// A job id is a canonical UUID (the job API mints it): it names its keys
// as it is. An API key's name goes after kline: as it is ("" with keys
// off); the first {jobs} in a key is its hash tag whatever follows.
//
// A job in line without a line_keys entry (written without a key's
// turn) is claimed when no key has a job waiting, and its place is its
// rank in line.
type redisJobs struct{ rdb *redis.Client }

const jobsPrefix = Prefix + "{jobs}:"

var (
	jobsLine   = jobsPrefix + "line"
	jobsSeq    = jobsPrefix + "seq"
	jobsBytes  = jobsPrefix + "line_bytes"
	jobsSizes  = jobsPrefix + "line_sizes"
	jobsKeys   = jobsPrefix + "line_keys"
	jobsRing   = jobsPrefix + "ring"
	jobsByKey  = jobsPrefix + "kline:"
	jobsClaims = jobsPrefix + "claims"
	jobsRecord = jobsPrefix + "job:"
	jobsList   = jobsPrefix + "list"
)

// luaNow and luaDone are shared by the line's scripts: the server's clock
// in ms (every replica's lease is counted on the same clock), and the
// ended states.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function done(st) return st == 'completed' or st == 'failed' or st == 'cancelled' end
`

// luaPlace is shared by the scripts that tell a waiting job's place:
// round r of the rotation takes the r-th job of every key that has one,
// in ring order, so before the job of rank r (0-based) in its key's line
// go the first r jobs of every key, then the r-th job of the keys ahead
// of its key in the ring. O(keys).
const luaPlace = `
local function ringCounts(ring, prefix)
  local keys = redis.call('LRANGE', ring, 0, -1)
  local counts = {}
  for i, k in ipairs(keys) do counts[i] = redis.call('ZCARD', prefix .. k) end
  return keys, counts
end
local function place(keys, counts, key, rank)
  local pos, behind = 1, false
  for i, k in ipairs(keys) do
    pos = pos + math.min(counts[i], rank)
    if k == key then behind = true elseif not behind and counts[i] > rank then pos = pos + 1 end
  end
  return pos
end
`

// luaList is shared by the scripts that record a job: listed(rec, id,
// created ms, workflow, key, list key, ttl) gives its record what List
// shows and puts it in the fleet's list and its key's; entries older than
// a record lives leave them.
const luaList = `
local function listed(rk, id, created, wf, key, lk, ttl)
  redis.call('HSET', rk, 'w', wf, 't', created, 'k', key)
  local lists = {lk}
  if key ~= '' then lists[2] = lk .. ':' .. key end
  for _, l in ipairs(lists) do
    redis.call('ZADD', l, created, id)
    redis.call('ZREMRANGEBYSCORE', l, '-inf', tonumber(created) - tonumber(ttl))
  end
end
`

// addJob: KEYS line, seq, bytes, sizes, rec, ev, ring, line_keys; ARGV
// id, static, live, max waiting, max bytes, size, ttl, the queued event's
// halves, API key, kline prefix, created ms, workflow, list key, #images,
// images...
var addJob = redis.NewScript(luaPlace + luaList + `
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[4]) then return 0 end
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[5]) > 0 and n > 0 and held + tonumber(ARGV[6]) > tonumber(ARGV[5]) then return -1 end
local seq = redis.call('INCR', KEYS[2])
local ni = tonumber(ARGV[15])
redis.call('HSET', KEYS[5], 's', ARGV[2], 'l', ARGV[3], 'st', 'waiting', 'n', ni)
listed(KEYS[5], ARGV[1], ARGV[12], ARGV[13], ARGV[10], ARGV[14], ARGV[7])
redis.call('PEXPIRE', KEYS[5], ARGV[7])
for i = 1, ni do redis.call('SET', KEYS[5] .. ':img:' .. i, ARGV[15 + i], 'PX', ARGV[7]) end
redis.call('INCRBY', KEYS[3], ARGV[6])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
local kl = ARGV[11] .. ARGV[10]
local rank = redis.call('ZCARD', kl)
if rank == 0 then redis.call('RPUSH', KEYS[7], ARGV[10]) end
redis.call('ZADD', kl, seq, ARGV[1])
redis.call('HSET', KEYS[8], ARGV[1], ARGV[10])
if ARGV[8] ~= '' then
  local keys, counts = ringCounts(KEYS[7], ARGV[11])
  redis.call('RPUSH', KEYS[6], ARGV[8] .. place(keys, counts, ARGV[10], rank) .. ARGV[9])
  redis.call('PEXPIRE', KEYS[6], ARGV[7])
end
return seq`)

// createJob: KEYS rec; ARGV id, static, replica, ttl, created ms,
// workflow, API key, list key.
var createJob = redis.NewScript(luaList + `
redis.call('HSET', KEYS[1], 's', ARGV[2], 'st', 'submitting', 'h', ARGV[3], 'n', 0)
listed(KEYS[1], ARGV[1], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`)

// lineHead: KEYS line, ring, line_keys, claims; ARGV kline prefix, n:
// the line's length, the claims' count, then the first n waiting ids in
// the order Claim takes them (round r of the rotation takes the r-th job
// of every key, in ring order; then the jobs without a key's turn), an
// empty string, and the first n claimed ids.
var lineHead = redis.NewScript(`
local n = tonumber(ARGV[2])
local out = {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[4])}
local taken = 0
local keys = redis.call('LRANGE', KEYS[2], 0, -1)
local r = 0
while taken < n do
  local more = false
  for _, k in ipairs(keys) do
    local id = redis.call('ZRANGE', ARGV[1] .. k, r, r)[1]
    if id then
      more = true
      if taken < n then out[#out + 1] = id; taken = taken + 1 end
    end
  end
  if not more then break end
  r = r + 1
end
if taken < n then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, taken + n - 1)) do
    if taken < n and not redis.call('HGET', KEYS[3], id) then out[#out + 1] = id; taken = taken + 1 end
  end
end
out[#out + 1] = ''
if n > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, n - 1)) do out[#out + 1] = id end
end
return out`)

// claimJobs: KEYS line, claims, bytes, sizes, ring, line_keys; ARGV
// replica, n, lease, ttl, record prefix, kline prefix, and for takeJob the
// one id to take.
const claimBody = luaNow + `
local out = {}
local function own(id)
  local rk = ARGV[5] .. id
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
  redis.call('HSET', rk, 'h', ARGV[1])
  redis.call('PEXPIRE', rk, ARGV[4])
  redis.call('PEXPIRE', rk .. ':ev', ARGV[4])
  table.insert(out, id)
end
local function unline(id)
  local size = redis.call('HGET', KEYS[4], id)
  if size then
    redis.call('HDEL', KEYS[4], id)
    redis.call('DECRBY', KEYS[3], size)
  end
  local key = redis.call('HGET', KEYS[6], id)
  if key then redis.call('HDEL', KEYS[6], id) end
  return key
end
`

var claimJobs = redis.NewScript(claimBody + `
local n = tonumber(ARGV[2])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)) do
  local st = redis.call('HGET', ARGV[5] .. id, 'st')
  if not st or done(st) then redis.call('ZREM', KEYS[2], id) else own(id) end
end
-- The key at the head of the ring gives its first job and goes to the
-- back while it has more. A job no longer in line (taken) is skipped.
while #out < n do
  local id
  local key = redis.call('LPOP', KEYS[5])
  if key then
    local kl = ARGV[6] .. key
    local head = redis.call('ZPOPMIN', kl)
    if redis.call('ZCARD', kl) > 0 then redis.call('RPUSH', KEYS[5], key) end
    if #head > 0 and redis.call('ZREM', KEYS[1], head[1]) == 1 then id = head[1] end
  else
    local head = redis.call('ZPOPMIN', KEYS[1])
    if #head == 0 then break end
    id = head[1]
  end
  if id then
    unline(id)
    if redis.call('HGET', ARGV[5] .. id, 'st') == 'waiting' then own(id) end
  end
end
return out`)

var takeJob = redis.NewScript(claimBody + `
local id = ARGV[7]
if redis.call('ZREM', KEYS[1], id) == 0 then return out end
local key = unline(id)
if key then
  local kl = ARGV[6] .. key
  redis.call('ZREM', kl, id)
  if redis.call('ZCARD', kl) == 0 then redis.call('LREM', KEYS[5], 0, key) end
end
if redis.call('HGET', ARGV[5] .. id, 'st') == 'waiting' then own(id) end
return out`)

// placeJobs: KEYS line, ring, line_keys; ARGV kline prefix, ids...: each
// job's place in the line, 0 when it does not wait.
var placeJobs = redis.NewScript(luaPlace + `
local keys, counts = ringCounts(KEYS[2], ARGV[1])
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local p = 0
  local lrank = redis.call('ZRANK', KEYS[1], id)
  if lrank then
    local key = redis.call('HGET', KEYS[3], id)
    local rank = key and redis.call('ZRANK', ARGV[1] .. key, id)
    if rank then p = place(keys, counts, key, rank) else p = lrank + 1 end
  end
  out[#out + 1] = p
end
return out`)

// writeJob: KEYS rec, ev, claims; ARGV replica, state, live, ttl, from,
// id, events...
var writeJob = redis.NewScript(luaNow + `
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', ARGV[2], 'l', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local have = redis.call('LLEN', KEYS[2])
local from = tonumber(ARGV[5])
for i = 7, #ARGV do
  if from + i - 7 == have then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    have = have + 1
  end
end
if have > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
if done(ARGV[2]) then
  redis.call('ZREM', KEYS[3], ARGV[6])
  local ni = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
  for i = 1, ni do redis.call('DEL', KEYS[1] .. ':img:' .. i) end
  redis.call('HSET', KEYS[1], 'n', 0)
end
return 1`)

// renewJobs: KEYS claims; ARGV replica, lease, ttl, record prefix, ids...
var renewJobs = redis.NewScript(luaNow + `
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local rk = ARGV[4] .. id
  local r = 0
  if redis.call('HGET', rk, 'h') == ARGV[1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    redis.call('PEXPIRE', rk, ARGV[3])
    redis.call('PEXPIRE', rk .. ':ev', ARGV[3])
    r = 1
    if redis.call('HGET', rk, 'c') == '1' then r = 2 end
  end
  out[#out + 1] = r
end
return out`)

// releaseJobs: KEYS claims; ARGV replica, record prefix, ids...
var releaseJobs = redis.NewScript(`
for i = 3, #ARGV do
  if redis.call('HGET', ARGV[2] .. ARGV[i], 'h') == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[i])
  end
end
return 0`)

// askCancel: KEYS rec.
var askCancel = redis.NewScript(luaNow + `
local st = redis.call('HGET', KEYS[1], 'st')
if not st or done(st) then return 0 end
redis.call('HSET', KEYS[1], 'c', '1')
return 1`)

func (r *redisJobs) Add(ctx context.Context, a JobAdd) error {
	var size int64
	for _, im := range a.Images {
		size += int64(len(im))
	}
	rk := jobsRecord + a.ID
	args := []any{a.ID, a.Static, a.Live, a.MaxWaiting, a.MaxBytes, size, ms(JobTTL), a.Queued[0], a.Queued[1],
		a.Key, jobsByKey, a.Created.UnixMilli(), a.Workflow, jobsList, len(a.Images)}
	for _, im := range a.Images {
		args = append(args, im)
	}
	n, err := addJob.Run(ctx, r.rdb, []string{jobsLine, jobsSeq, jobsBytes, jobsSizes, rk, rk + ":ev", jobsRing, jobsKeys}, args...).Int64()
	switch {
	case err != nil:
		return errRedis("add job", err)
	case n == 0:
		return ErrLineFull
	case n < 0:
		return ErrLineBytes
	}
	return nil
}

func (r *redisJobs) Create(ctx context.Context, id, replica string, static []byte, sum JobSummary) error {
	err := createJob.Run(ctx, r.rdb, []string{jobsRecord + id},
		id, static, replica, ms(JobTTL), sum.Created.UnixMilli(), sum.Workflow, sum.Key, jobsList).Err()
	return errRedis("create job", err)
}

func (r *redisJobs) Claim(ctx context.Context, replica string, n int, lease time.Duration) ([]JobRecord, error) {
	ids, err := claimJobs.Run(ctx, r.rdb, []string{jobsLine, jobsClaims, jobsBytes, jobsSizes, jobsRing, jobsKeys},
		replica, n, ms(lease), ms(JobTTL), jobsRecord, jobsByKey).StringSlice()
	if err != nil {
		return nil, errRedis("claim jobs", err)
	}
	return r.claimed(ctx, ids)
}

func (r *redisJobs) Take(ctx context.Context, id, replica string, lease time.Duration) (JobRecord, bool, error) {
	ids, err := takeJob.Run(ctx, r.rdb, []string{jobsLine, jobsClaims, jobsBytes, jobsSizes, jobsRing, jobsKeys},
		replica, 1, ms(lease), ms(JobTTL), jobsRecord, jobsByKey, id).StringSlice()
	if err != nil {
		return JobRecord{}, false, errRedis("take job", err)
	}
	recs, err := r.claimed(ctx, ids)
	if err != nil || len(recs) == 0 {
		return JobRecord{}, false, err
	}
	return recs[0], true, nil
}

// claimed reads the records, whole event logs and images of jobs just
// claimed (they are the claimer's: nothing else changes them meanwhile).
func (r *redisJobs) claimed(ctx context.Context, ids []string) ([]JobRecord, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	recs, err := r.Read(ctx, ids, make([]int, len(ids)))
	if err != nil {
		return nil, err
	}
	out := make([]JobRecord, 0, len(recs))
	pipe := r.rdb.Pipeline()
	var imgs [][]*redis.StringCmd
	for _, rec := range recs {
		if rec == nil {
			continue
		}
		out = append(out, *rec)
		var cmds []*redis.StringCmd
		for i := 1; i <= rec.images; i++ {
			cmds = append(cmds, pipe.Get(ctx, jobsRecord+rec.ID+":img:"+strconv.Itoa(i)))
		}
		imgs = append(imgs, cmds)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, errRedis("read claimed jobs' images", err)
	}
	for i := range out {
		for _, c := range imgs[i] {
			b, _ := c.Bytes()
			out[i].Images = append(out[i].Images, b)
		}
	}
	return out, nil
}

func (r *redisJobs) Write(ctx context.Context, replica string, ws []JobWrite) ([]string, error) {
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ws))
	for i, w := range ws {
		rk := jobsRecord + w.ID
		args := []any{replica, w.State, w.Live, ms(w.TTL), w.From, w.ID}
		for _, ev := range w.Events {
			args = append(args, ev)
		}
		// EVAL, not EVALSHA: in a pipeline a script the server does not
		// hold yet could not fall back.
		cmds[i] = writeJob.Eval(ctx, pipe, []string{rk, rk + ":ev", jobsClaims}, args...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, errRedis("write jobs", err)
	}
	var lost []string
	for i, c := range cmds {
		if n, _ := c.Int64(); n == 0 {
			lost = append(lost, ws[i].ID)
		}
	}
	return lost, nil
}

func (r *redisJobs) Renew(ctx context.Context, replica string, ids []string, lease time.Duration) (map[string]bool, error) {
	held := map[string]bool{}
	if len(ids) == 0 {
		return held, nil
	}
	args := []any{replica, ms(lease), ms(JobTTL), jobsRecord}
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := renewJobs.Run(ctx, r.rdb, []string{jobsClaims}, args...).Int64Slice()
	if err != nil {
		return nil, errRedis("renew job claims", err)
	}
	for i, v := range res {
		if v > 0 && i < len(ids) {
			held[ids[i]] = v == 2
		}
	}
	return held, nil
}

func (r *redisJobs) Release(ctx context.Context, replica string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	args := []any{replica, jobsRecord}
	for _, id := range ids {
		args = append(args, id)
	}
	return errRedis("release job claims", releaseJobs.Run(ctx, r.rdb, []string{jobsClaims}, args...).Err())
}

// imageCount sets how many images a record's job still holds.
func (r *JobRecord) imageCount(v string) { r.images, _ = strconv.Atoi(v) }

func (r *redisJobs) Read(ctx context.Context, ids []string, from []int) ([]*JobRecord, error) {
	pipe := r.rdb.Pipeline()
	type reads struct {
		rec *redis.MapStringStringCmd
		ev  *redis.StringSliceCmd
	}
	cmds := make([]reads, len(ids))
	placeArgs := []any{jobsByKey}
	for i, id := range ids {
		rk := jobsRecord + id
		cmds[i] = reads{pipe.HGetAll(ctx, rk), pipe.LRange(ctx, rk+":ev", int64(max(from[i], 0)), -1)}
		placeArgs = append(placeArgs, id)
	}
	// EVAL, not EVALSHA: see Write.
	places := placeJobs.Eval(ctx, pipe, []string{jobsLine, jobsRing, jobsKeys}, placeArgs...)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, errRedis("read jobs", err)
	}
	place, _ := places.Int64Slice()
	out := make([]*JobRecord, len(ids))
	for i, c := range cmds {
		h := c.rec.Val()
		if h["st"] == "" {
			continue
		}
		rec := &JobRecord{ID: ids[i], Static: []byte(h["s"]), Live: []byte(h["l"]), State: h["st"], Holder: h["h"], Cancel: h["c"] == "1"}
		rec.imageCount(h["n"])
		if i < len(place) {
			rec.Position = int(place[i])
		}
		for _, ev := range c.ev.Val() {
			rec.Events = append(rec.Events, []byte(ev))
		}
		out[i] = rec
	}
	return out, nil
}

func (r *redisJobs) AskCancel(ctx context.Context, id string) (bool, error) {
	n, err := askCancel.Run(ctx, r.rdb, []string{jobsRecord + id}).Int64()
	if err != nil {
		return false, errRedis("ask to cancel job", err)
	}
	return n == 1, nil
}

func (r *redisJobs) List(ctx context.Context, key string, limit int) ([]JobListed, error) {
	lk := jobsList
	if key != "" {
		lk += ":" + key
	}
	ids, err := r.rdb.ZRange(ctx, lk, int64(-limit), -1).Result()
	if err != nil || len(ids) == 0 {
		return nil, errRedis("list jobs", err)
	}
	recs, err := r.summaries(ctx, ids)
	if err != nil {
		return nil, errRedis("list jobs", err)
	}
	out := make([]JobListed, 0, len(ids))
	var gone []any
	for i, rec := range recs {
		switch {
		case rec == nil:
			gone = append(gone, ids[i]) // expired
		case key == "" || rec.Key == key:
			out = append(out, *rec)
		}
	}
	if len(gone) > 0 {
		// Best effort: the next list, or the next job's pruning, tries again.
		_ = r.rdb.ZRem(ctx, lk, gone...).Err()
	}
	return out, nil
}

// summaries reads what List shows of jobs ids (nil for a job whose
// record is gone).
func (r *redisJobs) summaries(ctx context.Context, ids []string) ([]*JobListed, error) {
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, jobsRecord+id, "st", "l", "w", "t", "k")
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	out := make([]*JobListed, len(ids))
	for i, c := range cmds {
		v := c.Val()
		str := func(k int) string { s, _ := v[k].(string); return s }
		if str(0) == "" {
			continue
		}
		created, _ := strconv.ParseInt(str(3), 10, 64)
		out[i] = &JobListed{ID: ids[i], State: str(0), Live: []byte(str(1)),
			JobSummary: JobSummary{Key: str(4), Workflow: str(2), Created: time.UnixMilli(created)}}
	}
	return out, nil
}

func (r *redisJobs) Line(ctx context.Context, n int) (JobLine, error) {
	res, err := lineHead.Run(ctx, r.rdb, []string{jobsLine, jobsRing, jobsKeys, jobsClaims}, jobsByKey, n).Slice()
	if err != nil || len(res) < 2 {
		return JobLine{}, errRedis("read the job line", err)
	}
	waitingTotal, _ := res[0].(int64)
	heldTotal, _ := res[1].(int64)
	ids := make([]string, 0, len(res)-2)
	cut := -1
	for _, v := range res[2:] {
		s, _ := v.(string)
		if s == "" {
			cut = len(ids)
			continue
		}
		ids = append(ids, s)
	}
	recs, err := r.summaries(ctx, ids)
	if err != nil {
		return JobLine{}, errRedis("read the job line", err)
	}
	l := JobLine{WaitingTotal: int(waitingTotal), HeldTotal: int(heldTotal)}
	for i, rec := range recs {
		switch {
		case rec == nil:
		case i < cut:
			l.Waiting = append(l.Waiting, *rec)
		case !JobDone(rec.State):
			l.Held = append(l.Held, *rec)
		}
	}
	slices.SortFunc(l.Held, func(a, b JobListed) int { return a.Created.Compare(b.Created) })
	return l, nil
}
