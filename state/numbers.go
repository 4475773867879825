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
	// Next returns the next number, at least floor: a replica passes the
	// number after the last one it saw, so that a store that lost the
	// counter (a Redis restarted empty) goes on after the numbers the
	// live replicas handed out instead of from 0.
	Next(ctx context.Context, floor int64) (int64, error)
}

// memCounter is Counter in memory.
type memCounter struct{ n atomic.Int64 }

func (c *memCounter) Next(_ context.Context, floor int64) (int64, error) {
	for {
		cur := c.n.Load()
		next := max(cur, floor)
		if c.n.CompareAndSwap(cur, next+1) {
			return next, nil
		}
	}
}

// redisCounter is Counter on one Redis key: one integer, so it needs no
// TTL. The key holds how many numbers were taken (the next number).
type redisCounter struct {
	rdb *redis.Client
	key string
}

// nextNumber takes the next number, at least ARGV[1], in one step.
var nextNumber = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if n <= floor then
  n = floor + 1
  redis.call('SET', KEYS[1], n)
end
return n - 1
`)

func (c *redisCounter) Next(ctx context.Context, floor int64) (int64, error) {
	n, err := nextNumber.Run(ctx, c.rdb, []string{c.key}, floor).Int64()
	if err != nil {
		return 0, errRedis("next queue number", err)
	}
	return n, nil
}
