package state

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// ResultIndex is the job API's result cache index the replicas share:
// for each cached result's key, what the job that made it output and the
// instances that hold those files, so that another replica can complete
// the same job again from them. Each replica keeps the bytes in its own
// cache; the index says only where they came from.
type ResultIndex interface {
	// Put records entry (opaque to the store) as key's for ttl.
	Put(ctx context.Context, key string, entry []byte, ttl time.Duration) error
	// Get returns key's entry; ok is false when there is none.
	Get(ctx context.Context, key string) (entry []byte, ok bool, err error)
	// Drop removes key's entry (its files are gone).
	Drop(ctx context.Context, key string) error
}

// Results returns the store's result cache index, nil in memory: there a
// replica's own cache is the fleet's.
func (s *Store) Results() ResultIndex {
	if s == nil || s.rdb == nil {
		return nil
	}
	return redisResults{rdb: s.rdb}
}

// redisResults is ResultIndex in Redis: one string per key,
// comfygate:result:<sha256(key)>.
type redisResults struct{ rdb *redis.Client }

func (r redisResults) Put(ctx context.Context, key string, entry []byte, ttl time.Duration) error {
	return errRedis("record a cached result", r.rdb.Set(ctx, hashed("result:", key), entry, ttl).Err())
}

func (r redisResults) Get(ctx context.Context, key string) ([]byte, bool, error) {
	b, err := r.rdb.Get(ctx, hashed("result:", key)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, false, nil
	case err != nil:
		return nil, false, errRedis("read a cached result", err)
	}
	return b, true, nil
}

func (r redisResults) Drop(ctx context.Context, key string) error {
	return errRedis("drop a cached result", r.rdb.Del(ctx, hashed("result:", key)).Err())
}
