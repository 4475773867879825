package state

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Counter hands out the fleet's queue numbers: 0, 1, 2, … in the order
// they are asked for, each once, across every replica sharing the store
// (ComfyUI numbers from 0 too). A number taken and not used is skipped.
type Counter interface {
	// Next returns the next number.
	Next(ctx context.Context) (int64, error)
}

// memCounter is Counter in memory.
type memCounter struct{ n atomic.Int64 }

func (c *memCounter) Next(context.Context) (int64, error) { return c.n.Add(1) - 1, nil }

// redisCounter is Counter on one Redis key (INCR): one integer, so it
// needs no TTL. It counts from 1; Next subtracts 1.
type redisCounter struct {
	rdb *redis.Client
	key string
}

func (c *redisCounter) Next(ctx context.Context) (int64, error) {
	n, err := c.rdb.Incr(ctx, c.key).Result()
	if err != nil {
		return 0, errRedis("next queue number", err)
	}
	return n - 1, nil
}
