package state

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientTTL is how long a clientId stays its API key's in Redis after the
// key last claimed it (a WebSocket handshake or a prompt naming it).
const ClientTTL = 24 * time.Hour

// errChurn: a key kept expiring between two commands that read it.
var errChurn = errors.New("the key changed on every try")

// ClientOwners decides which API key holds each WebSocket clientId: the
// first key to claim one holds it, and another key's claim is refused.
type ClientOwners interface {
	// ClaimClient gives clientID to key unless another key holds it, and
	// reports whether key may use it.
	ClaimClient(ctx context.Context, clientID, key string) (bool, error)
}

// LocalOwners is the process's own table of clientId owners (the proxy's
// auth.Owners, which also holds a clientId for each live socket).
type LocalOwners interface {
	ClaimClient(clientID, key string) bool
}

// ClientOwners returns the store's clientId owners: in memory, local
// itself (bounded per key as it is); in Redis, keys shared by every
// replica, each living ClientTTL after its last claim.
func (s *Store) ClientOwners(local LocalOwners) ClientOwners {
	if s.rdb != nil {
		return &redisClients{rdb: s.rdb, ttl: ClientTTL}
	}
	return memClients{local}
}

// memClients is ClientOwners over the process's own table.
type memClients struct{ local LocalOwners }

func (m memClients) ClaimClient(_ context.Context, clientID, key string) (bool, error) {
	return m.local.ClaimClient(clientID, key), nil
}

// redisClients is ClientOwners in Redis: Prefix+"client:"+sha256(clientId)
// holds the key's name, with a TTL renewed by each claim of that key.
type redisClients struct {
	rdb *redis.Client
	ttl time.Duration
}

// claimClient sets an unheld clientId to the claiming key, or renews the
// TTL when that key holds it already; 0 when another key does.
var claimClient = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0`)

func (r *redisClients) ClaimClient(ctx context.Context, clientID, key string) (bool, error) {
	n, err := claimClient.Run(ctx, r.rdb, []string{hashed("client:", clientID)}, key, ms(r.ttl)).Int()
	if err != nil {
		return false, errRedis("claim clientId", err)
	}
	return n == 1, nil
}
