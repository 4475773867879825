package state

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// PromptTTL is how long a prompt's record and a file's pin stay in Redis
// after their last change: a prompt's routing changes (a send, an answer,
// a move, its end) and a file's pin each write it again. A day, as long as
// a client may be expected to come back for a finished prompt's history
// or outputs; a record that expired is a miss, which the replicas answer
// as they answer a prompt or file they never saw.
const PromptTTL = 24 * time.Hour

// PromptRecord is what a replica needs to route a read for a prompt that
// another replica submitted: where it is and under which id, who owns it.
// The replica that owns the prompt's instance writes it whenever the
// prompt's routing changes; the others only read it.
type PromptRecord struct {
	// ID is the client-facing id (comfygate's).
	ID string
	// Endpoint is the machine of the instance that holds it
	// (upstream.Instance.Endpoint), Instance that instance's name there.
	Endpoint string
	Instance string
	// UpstreamID is its id at that instance.
	UpstreamID string
	// Number is its fleet queue number (0: none yet).
	Number int64
	// Done: it finished.
	Done bool
	// Life is the prompt's lifecycle.State, JSON-encoded.
	Life []byte

	// Guard names the lease its writer acts under (the writing replica's
	// liveness lease) and Token that lease's fencing token: a record with
	// a Token is written only while Guard is held with Token, and only
	// over a record of the same guard (or none). 0: unfenced.
	Guard string
	Token int64
	// Body is the body of its last send, kept while it is not done so
	// that another replica can send it again (nil: kept as it is).
	Body []byte
	// Owner is the API key name that submitted it, written with the
	// record when not "" (SetPromptOwners writes it too).
	Owner string
}

// MaxPromptBody bounds the body a record keeps: a larger one is not kept,
// and its prompt cannot be sent again by another replica.
const MaxPromptBody = 4 << 20

// FilePin says that the machine at Endpoint holds File (a normalized
// file reference, "type/subfolder/name"). An empty Endpoint forgets the
// file's pin.
type FilePin struct {
	File     string
	Endpoint string
}

// PromptIndex is the replicas' shared index of prompts and file pins.
// Writes are batched by their callers (one pipeline per batch); every
// call is bounded by its context.
type PromptIndex interface {
	// PutPrompts writes the records (each its routing fields, keeping an
	// owner set before) and sets their TTL to PromptTTL.
	PutPrompts(ctx context.Context, recs []PromptRecord) error
	// SetPromptOwners records the API key name that owns each prompt id.
	SetPromptOwners(ctx context.Context, owners map[string]string) error
	// Prompt returns the record of id and its owner ("" when none was
	// recorded); ok false when no replica recorded it.
	Prompt(ctx context.Context, id string) (rec PromptRecord, owner string, ok bool, err error)
	// PinFiles writes (or, with an empty Endpoint, deletes) file pins.
	PinFiles(ctx context.Context, pins []FilePin) error
	// FileHolder returns the endpoint of the machine that holds file
	// ("" when none is recorded).
	FileHolder(ctx context.Context, file string) (string, error)
	// LivePrompts returns the records of the prompts not done at
	// instance (by name), with their guards and owners.
	LivePrompts(ctx context.Context, instance string) ([]PromptRecord, error)
	// PromptBody returns the body rec.ID's record keeps (ok false: none).
	PromptBody(ctx context.Context, id string) (body []byte, ok bool, err error)
	// Claim makes the prompt id guarded by guard with token, in one step
	// with the checks that replica holds instance's lease with instToken
	// and that the record is still guarded as rec says (rec.Guard,
	// rec.Token): false, changing nothing, when either does not hold.
	Claim(ctx context.Context, rec PromptRecord, instance, replica string, instToken int64, guard string, token int64) (bool, error)
}

// PromptIndex returns the replicas' shared prompt index, nil in memory:
// there the process's own prompt table is the whole index.
func (s *Store) PromptIndex() PromptIndex {
	if s == nil || s.rdb == nil {
		return nil
	}
	return &redisPrompts{rdb: s.rdb, ttl: PromptTTL}
}

// redisPrompts is PromptIndex in Redis: Prefix+"prompt:"+sha256(id) is a
// hash of the record's fields, Prefix+"file:"+sha256(file) the holder's
// endpoint.
type redisPrompts struct {
	rdb *redis.Client
	ttl time.Duration
}

// Field names of a prompt's hash.
const (
	fID       = "id"
	fEndpoint = "endpoint"
	fInstance = "instance"
	fUpstream = "upstream_id"
	fNumber   = "number"
	fDone     = "done"
	fLife     = "life"
	fOwner    = "owner"
	fGuard    = "guard"
)

// liveKey is the set of the ids of the prompts not done at instance, in
// the instance's hash tag like its lease.
func liveKey(instance string) string { return Prefix + "live:{" + instance + "}" }

// bodyKey keeps a live prompt's last body.
func bodyKey(id string) string { return hashed("body:", id) }

// guardValue is the guard field: "<lease> <token>".
func guardValue(guard string, token int64) string {
	return guard + " " + strconv.FormatInt(token, 10)
}

// parseGuard splits a guard field.
func parseGuard(v string) (string, int64) {
	sp := strings.LastIndexByte(v, ' ')
	if sp < 0 {
		return "", 0
	}
	t, _ := strconv.ParseInt(v[sp+1:], 10, 64)
	return v[:sp], t
}

// putFenced: KEYS prompt hash, the guard's lease, the instance's live
// set, the body; ARGV token, guard field, ttl ms, done, id, body, has
// body, then the record's field/value pairs. 1 when written; 0 when the
// guard's lease is not held with the token, or another guard holds the
// record.
var putFenced = redis.NewScript(`
local v = redis.call('GET', KEYS[2])
if not v or string.sub(v, 1, string.find(v, ' ', 1, true) - 1) ~= ARGV[1] then
  return 0
end
local g = redis.call('HGET', KEYS[1], 'guard')
if g and g ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'guard', ARGV[2], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[4])
else
  redis.call('SADD', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  if ARGV[7] == '1' then
    redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[3])
  end
end
return 1`)

// claimPrompt: KEYS prompt hash, the instance's lease; ARGV the lease's
// value ("<token> <replica>"), the guard field expected, the new one.
var claimPrompt = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if redis.call('HGET', KEYS[1], 'guard') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'guard', ARGV[3])
return 1`)

func promptKey(id string) string { return hashed("prompt:", id) }
func fileKey(file string) string { return hashed("file:", file) }

func (r *redisPrompts) PutPrompts(ctx context.Context, recs []PromptRecord) error {
	if len(recs) == 0 {
		return nil
	}
	var fenced []*redis.Cmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, rec := range recs {
			done := "0"
			if rec.Done {
				done = "1"
			}
			k := promptKey(rec.ID)
			if rec.Token != 0 {
				hasBody := "0"
				if rec.Body != nil && len(rec.Body) <= MaxPromptBody {
					hasBody = "1"
				}
				args := []any{rec.Token, guardValue(rec.Guard, rec.Token), ms(r.ttl), done, rec.ID, rec.Body, hasBody,
					fID, rec.ID, fEndpoint, rec.Endpoint, fInstance, rec.Instance, fUpstream, rec.UpstreamID,
					fNumber, strconv.FormatInt(rec.Number, 10), fDone, done, fLife, rec.Life}
				if rec.Owner != "" {
					args = append(args, fOwner, rec.Owner)
				}
				fenced = append(fenced, putFenced.Eval(ctx, p,
					[]string{k, leaseKey(rec.Guard), liveKey(rec.Instance), bodyKey(rec.ID)}, args...))
				continue
			}
			if rec.Owner != "" {
				p.HSet(ctx, k, fOwner, rec.Owner)
			}
			p.HSet(ctx, k, fID, rec.ID, fEndpoint, rec.Endpoint, fInstance, rec.Instance, fUpstream, rec.UpstreamID,
				fNumber, strconv.FormatInt(rec.Number, 10), fDone, done, fLife, rec.Life)
			p.PExpire(ctx, k, r.ttl)
		}
		return nil
	})
	if err != nil {
		return errRedis("record prompts", err)
	}
	stale := 0
	for _, c := range fenced {
		if n, _ := c.Int(); n != 1 {
			stale++
		}
	}
	if stale > 0 {
		return fmt.Errorf("%d of %d records: %w", stale, len(recs), ErrStaleToken)
	}
	return nil
}

func (r *redisPrompts) SetPromptOwners(ctx context.Context, owners map[string]string) error {
	if len(owners) == 0 {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, owner := range owners {
			k := promptKey(id)
			p.HSet(ctx, k, fOwner, owner)
			p.PExpire(ctx, k, r.ttl)
		}
		return nil
	})
	return errRedis("record prompt owners", err)
}

func (r *redisPrompts) Prompt(ctx context.Context, id string) (PromptRecord, string, bool, error) {
	m, err := r.rdb.HGetAll(ctx, promptKey(id)).Result()
	if err != nil {
		return PromptRecord{}, "", false, errRedis("read prompt", err)
	}
	// A record is one of the id asked for with an instance; a hash of only
	// an owner (its prompt's record not written yet) routes nothing.
	if m[fID] != id || m[fEndpoint] == "" {
		return PromptRecord{}, m[fOwner], false, nil
	}
	return recordOf(id, m), m[fOwner], true, nil
}

// recordOf is the record a prompt's hash holds.
func recordOf(id string, m map[string]string) PromptRecord {
	n, _ := strconv.ParseInt(m[fNumber], 10, 64)
	guard, token := parseGuard(m[fGuard])
	return PromptRecord{ID: id, Endpoint: m[fEndpoint], Instance: m[fInstance], UpstreamID: m[fUpstream],
		Number: n, Done: m[fDone] == "1", Life: []byte(m[fLife]), Guard: guard, Token: token, Owner: m[fOwner]}
}

func (r *redisPrompts) LivePrompts(ctx context.Context, instance string) ([]PromptRecord, error) {
	ids, err := r.rdb.SMembers(ctx, liveKey(instance)).Result()
	if err != nil {
		return nil, errRedis("read live prompts", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, promptKey(id))
		}
		return nil
	}); err != nil {
		return nil, errRedis("read live prompts", err)
	}
	var out []PromptRecord
	var gone []any
	for i, id := range ids {
		m := cmds[i].Val()
		// Expired, done, or moved to another instance since: not this
		// set's any more.
		if m[fID] != id || m[fDone] == "1" || m[fInstance] != instance {
			gone = append(gone, id)
			continue
		}
		out = append(out, recordOf(id, m))
	}
	if len(gone) > 0 {
		if err := r.rdb.SRem(ctx, liveKey(instance), gone...).Err(); err != nil {
			return out, errRedis("forget live prompts", err)
		}
	}
	return out, nil
}

func (r *redisPrompts) PromptBody(ctx context.Context, id string) ([]byte, bool, error) {
	b, err := r.rdb.Get(ctx, bodyKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, errRedis("read prompt body", err)
	}
	return b, true, nil
}

func (r *redisPrompts) Claim(ctx context.Context, rec PromptRecord, instance, replica string, instToken int64, guard string, token int64) (bool, error) {
	n, err := claimPrompt.Run(ctx, r.rdb, []string{promptKey(rec.ID), leaseKey(instance)},
		leaseValue(instToken, replica), guardValue(rec.Guard, rec.Token), guardValue(guard, token)).Int()
	if err != nil {
		return false, errRedis("claim prompt", err)
	}
	return n == 1, nil
}

func (r *redisPrompts) PinFiles(ctx context.Context, pins []FilePin) error {
	if len(pins) == 0 {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, pin := range pins {
			if pin.Endpoint == "" {
				p.Del(ctx, fileKey(pin.File))
				continue
			}
			p.Set(ctx, fileKey(pin.File), pin.Endpoint, r.ttl)
		}
		return nil
	})
	return errRedis("pin files", err)
}

func (r *redisPrompts) FileHolder(ctx context.Context, file string) (string, error) {
	v, err := r.rdb.Get(ctx, fileKey(file)).Result()
	if err != nil {
		return "", errRedis("read file pin", err)
	}
	return v, nil
}
