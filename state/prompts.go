package state

import (
	"context"
	"strconv"
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
}

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
)

func promptKey(id string) string { return hashed("prompt:", id) }
func fileKey(file string) string { return hashed("file:", file) }

func (r *redisPrompts) PutPrompts(ctx context.Context, recs []PromptRecord) error {
	if len(recs) == 0 {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, rec := range recs {
			done := "0"
			if rec.Done {
				done = "1"
			}
			k := promptKey(rec.ID)
			p.HSet(ctx, k, fID, rec.ID, fEndpoint, rec.Endpoint, fInstance, rec.Instance, fUpstream, rec.UpstreamID,
				fNumber, strconv.FormatInt(rec.Number, 10), fDone, done, fLife, rec.Life)
			p.PExpire(ctx, k, r.ttl)
		}
		return nil
	})
	return errRedis("record prompts", err)
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
	n, _ := strconv.ParseInt(m[fNumber], 10, 64)
	return PromptRecord{ID: id, Endpoint: m[fEndpoint], Instance: m[fInstance], UpstreamID: m[fUpstream],
		Number: n, Done: m[fDone] == "1", Life: []byte(m[fLife])}, m[fOwner], true, nil
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
