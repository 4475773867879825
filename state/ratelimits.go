package state

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// RateLimits are token buckets by name (an API key's name, or a client
// address with keys off) that every replica takes from: a key's rate is
// the fleet's, however a balancer spreads its requests.
type RateLimits interface {
	// Take takes one token from bucket name of kind (rate tokens a
	// second, at most burst saved, at least 1). When none is left ok is
	// false and wait is how long until one is.
	Take(ctx context.Context, kind, name string, rate float64, burst int) (ok bool, wait time.Duration, err error)
}

// RateLimits returns the store's rate limits, nil in memory: there a
// replica's own buckets are the fleet's.
func (s *Store) RateLimits() RateLimits {
	if s == nil || s.rdb == nil {
		return nil
	}
	return redisRateLimits{rdb: s.rdb}
}

// takeToken: KEYS the bucket (a hash: n tokens, t last fill in ms on the
// server's clock); ARGV rate a second, burst. Returns 0 when a token was
// taken, else the ms until one is. The bucket expires once it would be
// full again, which is the same as a new one.
var takeToken = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'n', 't')
local tokens, last = tonumber(v[1]), tonumber(v[2])
if not tokens or not last then tokens, last = burst, now end
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000)
  last = now
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.max(1, math.ceil((1 - tokens) / rate * 1000)) end
redis.call('HSET', KEYS[1], 'n', tostring(tokens), 't', last)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait`)

// redisRateLimits is RateLimits in Redis: one hash per bucket,
// comfygate:rate:<kind>:<sha256(name)>.
type redisRateLimits struct{ rdb *redis.Client }

func (r redisRateLimits) Take(ctx context.Context, kind, name string, rate float64, burst int) (bool, time.Duration, error) {
	wait, err := takeToken.Run(ctx, r.rdb, []string{hashed("rate:"+kind+":", name)}, rate, max(burst, 1)).Int64()
	if err != nil {
		return false, 0, errRedis("take a rate-limit token", err)
	}
	return wait == 0, time.Duration(wait) * time.Millisecond, nil
}
