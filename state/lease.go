package state

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrStaleToken refuses a fenced write whose token is not the current
// lease's: the writer lost its lease (it expired, or another replica
// took the instance since).
var ErrStaleToken = errors.New("state: stale fencing token: the lease is no longer held with it")

// Leases says which replica owns each instance. A lease lasts its TTL
// unless renewed; each acquisition gets a fencing token greater than every
// token issued before for that instance, and fenced writes carry it, so a
// replica that lost its lease (paused, cut off) cannot overwrite what the
// new owner writes. A replica id holds no space.
type Leases interface {
	// Acquire takes instance's lease for replica for ttl and returns its
	// token; ok is false when another replica holds it. A replica that
	// holds it already gets its token again, with the TTL renewed.
	Acquire(ctx context.Context, instance, replica string, ttl time.Duration) (token int64, ok bool, err error)
	// Renew extends the lease replica holds with token to ttl from now;
	// false when it no longer holds it.
	Renew(ctx context.Context, instance, replica string, token int64, ttl time.Duration) (bool, error)
	// Release ends the lease replica holds with token (nothing when it no
	// longer holds it).
	Release(ctx context.Context, instance, replica string, token int64) error
	// WriteFenced sets key of instance to value for ttl, atomically with a
	// check that token is the instance's current lease; ErrStaleToken
	// when it is not (and nothing is written).
	WriteFenced(ctx context.Context, instance string, token int64, key string, value []byte, ttl time.Duration) error
	// ReadFenced returns key of instance as last written (ok false when
	// absent or expired).
	ReadFenced(ctx context.Context, instance, key string) (value []byte, ok bool, err error)
	// Tokens returns the token each named lease is held with now (0 when
	// nobody holds it): a writer whose token is not its lease's lost it.
	Tokens(ctx context.Context, instances []string) (map[string]int64, error)
	// Live notes replica alive for ttl from now and returns how many
	// replicas are alive (replica counted), so that each can take its
	// share of the instances' leases.
	Live(ctx context.Context, replica string, ttl time.Duration) (int, error)
}

// memLeases is Leases in this process's memory. Tokens count per
// instance from 1 and are never reused.
type memLeases struct {
	now func() time.Time

	mu     sync.Mutex // guards the fields below
	leases map[string]memLease
	fence  map[string]int64 // instance -> the last token issued
	data   map[string]memValue
	// swept is len(data) after the last sweep of expired values: the next
	// runs when data has doubled, so writes sweep in amortised O(1).
	swept int
	alive map[string]time.Time // replica -> when it stops counting as alive
}

type memLease struct {
	replica string
	token   int64
	expires time.Time
}

type memValue struct {
	v       []byte
	expires time.Time
}

func newMemLeases(now func() time.Time) *memLeases {
	return &memLeases{now: now, leases: map[string]memLease{}, fence: map[string]int64{}, data: map[string]memValue{},
		alive: map[string]time.Time{}}
}

// heldLocked is instance's lease while it lasts.
func (m *memLeases) heldLocked(instance string) (memLease, bool) {
	l, ok := m.leases[instance]
	if !ok || !m.now().Before(l.expires) {
		delete(m.leases, instance)
		return memLease{}, false
	}
	return l, true
}

func (m *memLeases) Acquire(_ context.Context, instance, replica string, ttl time.Duration) (int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.heldLocked(instance); ok {
		if l.replica != replica {
			return 0, false, nil
		}
		l.expires = m.now().Add(ttl)
		m.leases[instance] = l
		return l.token, true, nil
	}
	m.fence[instance]++
	l := memLease{replica: replica, token: m.fence[instance], expires: m.now().Add(ttl)}
	m.leases[instance] = l
	return l.token, true, nil
}

func (m *memLeases) Renew(_ context.Context, instance, replica string, token int64, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.heldLocked(instance)
	if !ok || l.replica != replica || l.token != token {
		return false, nil
	}
	l.expires = m.now().Add(ttl)
	m.leases[instance] = l
	return true, nil
}

func (m *memLeases) Release(_ context.Context, instance, replica string, token int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.heldLocked(instance); ok && l.replica == replica && l.token == token {
		delete(m.leases, instance)
	}
	return nil
}

func (m *memLeases) WriteFenced(_ context.Context, instance string, token int64, key string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.heldLocked(instance); !ok || l.token != token {
		return ErrStaleToken
	}
	now := m.now()
	if len(m.data) >= 2*max(m.swept, 64) {
		for k, v := range m.data {
			if !now.Before(v.expires) {
				delete(m.data, k)
			}
		}
		m.swept = len(m.data)
	}
	m.data[fencedKey(instance, key)] = memValue{v: append([]byte(nil), value...), expires: now.Add(ttl)}
	return nil
}

func (m *memLeases) ReadFenced(_ context.Context, instance, key string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.data[fencedKey(instance, key)]
	if !ok || !m.now().Before(v.expires) {
		return nil, false, nil
	}
	return append([]byte(nil), v.v...), true, nil
}

func (m *memLeases) Tokens(_ context.Context, instances []string) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(instances))
	for _, inst := range instances {
		l, _ := m.heldLocked(inst)
		out[inst] = l.token
	}
	return out, nil
}

func (m *memLeases) Live(_ context.Context, replica string, ttl time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.alive[replica] = now.Add(ttl)
	for r, until := range m.alive {
		if !now.Before(until) {
			delete(m.alive, r)
		}
	}
	return len(m.alive), nil
}

// The Redis keys of instance's lease, all with the instance in a hash tag
// ({…}), so that a Redis Cluster keeps them in one slot, as the scripts
// that touch several of them need:
//
//	Prefix+"lease:{instance}"          "<token> <replica>", PX the lease's TTL
//	Prefix+"fence:{instance}"          the last token issued (INCR); no TTL:
//	                                   a token must never be issued twice
//	Prefix+"fenced:{instance}:" + key  a fenced write's value, PX its TTL
func leaseKey(instance string) string { return Prefix + "lease:{" + instance + "}" }

// replicasKey is the sorted set of the replicas alive: each scored with
// the server's time (ms) at which it stops counting.
const replicasKey = Prefix + "replicas"

func fenceKey(instance string) string { return Prefix + "fence:{" + instance + "}" }
func fencedKey(instance, key string) string {
	return Prefix + "fenced:{" + instance + "}:" + key
}

// redisLeases is Leases in Redis, each operation one Lua script.
type redisLeases struct{ rdb *redis.Client }

// acquireLease: KEYS lease, fence; ARGV replica, ttl ms. Returns the
// token, or 0 when another replica holds the lease.
var acquireLease = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local sp = string.find(v, ' ', 1, true)
  if string.sub(v, sp + 1) ~= ARGV[1] then
    return 0
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(v, 1, sp - 1))
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t .. ' ' .. ARGV[1], 'PX', ARGV[2])
return t`)

// renewLease: KEYS lease; ARGV "<token> <replica>", ttl ms.
var renewLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// releaseLease: KEYS lease; ARGV "<token> <replica>".
var releaseLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// writeFenced: KEYS lease, the value's key; ARGV token, value, ttl ms.
// Returns 1 when written, 0 when the token is not the current lease's.
var writeFenced = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, string.find(v, ' ', 1, true) - 1) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`)

// liveReplica: KEYS replicas; ARGV replica, ttl ms. Scores replica with
// the server's clock plus ttl, drops the replicas past their score and
// returns how many are left.
var liveReplica = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])`)

func leaseValue(token int64, replica string) string {
	return strconv.FormatInt(token, 10) + " " + replica
}

func (r *redisLeases) Acquire(ctx context.Context, instance, replica string, ttl time.Duration) (int64, bool, error) {
	if strings.Contains(replica, " ") {
		return 0, false, errors.New("state: a replica id must not hold a space")
	}
	t, err := acquireLease.Run(ctx, r.rdb, []string{leaseKey(instance), fenceKey(instance)}, replica, ms(ttl)).Int64()
	if err != nil {
		return 0, false, errRedis("acquire lease of "+instance, err)
	}
	return t, t > 0, nil
}

func (r *redisLeases) Renew(ctx context.Context, instance, replica string, token int64, ttl time.Duration) (bool, error) {
	n, err := renewLease.Run(ctx, r.rdb, []string{leaseKey(instance)}, leaseValue(token, replica), ms(ttl)).Int()
	if err != nil {
		return false, errRedis("renew lease of "+instance, err)
	}
	return n == 1, nil
}

func (r *redisLeases) Release(ctx context.Context, instance, replica string, token int64) error {
	err := releaseLease.Run(ctx, r.rdb, []string{leaseKey(instance)}, leaseValue(token, replica)).Err()
	return errRedis("release lease of "+instance, err)
}

func (r *redisLeases) WriteFenced(ctx context.Context, instance string, token int64, key string, value []byte, ttl time.Duration) error {
	n, err := writeFenced.Run(ctx, r.rdb, []string{leaseKey(instance), fencedKey(instance, key)}, token, value, ms(ttl)).Int()
	if err != nil {
		return errRedis("fenced write of "+instance, err)
	}
	if n != 1 {
		return ErrStaleToken
	}
	return nil
}

func (r *redisLeases) ReadFenced(ctx context.Context, instance, key string) ([]byte, bool, error) {
	v, err := r.rdb.Get(ctx, fencedKey(instance, key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, errRedis("read fenced value of "+instance, err)
	}
	return v, true, nil
}

func (r *redisLeases) Tokens(ctx context.Context, instances []string) (map[string]int64, error) {
	out := make(map[string]int64, len(instances))
	if len(instances) == 0 {
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(instances))
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, inst := range instances {
			cmds[i] = p.Get(ctx, leaseKey(inst))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, errRedis("read leases", err)
	}
	for i, inst := range instances {
		out[inst] = 0
		if v, err := cmds[i].Result(); err == nil {
			if sp := strings.IndexByte(v, ' '); sp > 0 {
				out[inst], _ = strconv.ParseInt(v[:sp], 10, 64)
			}
		}
	}
	return out, nil
}

func (r *redisLeases) Live(ctx context.Context, replica string, ttl time.Duration) (int, error) {
	n, err := liveReplica.Run(ctx, r.rdb, []string{replicasKey}, replica, ms(ttl)).Int()
	if err != nil {
		return 0, errRedis("note replica alive", err)
	}
	return n, nil
}
