package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/redis/go-redis/v9"
)

// Prefix starts every key comfygate writes to Redis. Fleets that share one
// server keep apart by database number (redis://host:port/<db>).
const Prefix = "comfygate:"

// openTimeout bounds the first PING of Open: a server that does not answer
// stops start-up instead of hanging it.
const openTimeout = 5 * time.Second

// Store is the shared state's store: memory or Redis. Its pieces are
// made by QueueNumbers, Idempotency, ClientOwners and Leases.
type Store struct {
	rdb  *redis.Client // nil: in this process's memory
	addr string        // the server's address, for errors and /health

	numbers Counter
	leases  Leases
	jobs    Jobs

	eventsOnce sync.Once    // starts events
	events     *redisEvents // Events between replicas, once asked for
}

// Memory returns a store in this process's memory: the state of one
// replica, as state.url "" gives.
func Memory() *Store {
	return &Store{numbers: &memCounter{}, leases: newMemLeases(time.Now), jobs: newMemJobs(time.Now)}
}

// Open returns the store cfg names: Memory for an empty URL, else a Redis
// client for it (TLS and password from the URL) that answered PING within
// ctx and openTimeout. The error starts with the key, state.url.
func Open(ctx context.Context, cfg config.State) (*Store, error) {
	if cfg.URL == "" {
		return Memory(), nil
	}
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("state.url: %s: %w", redacted(cfg.URL), err)
	}
	// Every call is bounded by its context (a record read, /health, a
	// lease renewal): the deadline must reach the socket, not wait out
	// the client's read timeout on a Redis that stopped answering.
	opt.ContextTimeoutEnabled = true
	s := newRedis(redis.NewClient(opt), opt.Addr)
	pctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	if err := s.Ping(pctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("state.url: %s does not answer: %w", redacted(cfg.URL), err)
	}
	if s.clusterEnabled(pctx) {
		_ = s.Close()
		return nil, fmt.Errorf("state.url: %s is a node of a Redis Cluster; comfygate needs one Redis server "+
			"(a primary, with its replicas if you like, or a managed primary endpoint): the scripts that fence and adopt a prompt touch keys of several slots", redacted(cfg.URL))
	}
	return s, nil
}

// clusterEnabled reports whether the server says it runs in cluster mode
// (INFO cluster). A server that does not answer INFO is taken as not.
func (s *Store) clusterEnabled(ctx context.Context) bool {
	info, err := s.rdb.Info(ctx, "cluster").Result()
	return err == nil && strings.Contains(info, "cluster_enabled:1")
}

func newRedis(rdb *redis.Client, addr string) *Store {
	return &Store{rdb: rdb, addr: addr, numbers: &redisCounter{rdb: rdb, key: Prefix + "queue_number"},
		leases: &redisLeases{rdb: rdb}, jobs: &redisJobs{rdb: rdb}}
}

// Shared reports whether the store is a Redis server the replicas share
// (false: this process's memory, or a nil store).
func (s *Store) Shared() bool { return s != nil && s.rdb != nil }

// Addr is the Redis server's address ("" in memory).
func (s *Store) Addr() string { return s.addr }

// Ping checks that the store answers: always nil in memory, a PING to
// Redis otherwise.
func (s *Store) Ping(ctx context.Context) error {
	if s.rdb == nil {
		return nil
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", s.addr, err)
	}
	return nil
}

// Close closes the Redis client's connections (nothing in memory).
func (s *Store) Close() error {
	if s.rdb == nil {
		return nil
	}
	s.eventsOnce.Do(func() {}) // no Events after Close
	if s.events != nil {
		s.events.close()
	}
	return s.rdb.Close()
}

// QueueNumbers is the fleet's counter of queue numbers: one for all the
// store's users.
func (s *Store) QueueNumbers() Counter { return s.numbers }

// Leases is the store's table of instance leases: one for all its users.
func (s *Store) Leases() Leases { return s.leases }

// hashed names a key by the SHA-256 of a value a client chose, so that
// every key has the same bounded length whatever the value holds.
func hashed(prefix, value string) string {
	sum := sha256.Sum256([]byte(value))
	return Prefix + prefix + hex.EncodeToString(sum[:])
}

// hashedTag is hashed with the hash in a hash tag ({…}): the keys named
// from it share a Redis Cluster slot.
func hashedTag(prefix, value string) string {
	sum := sha256.Sum256([]byte(value))
	return Prefix + prefix + "{" + hex.EncodeToString(sum[:]) + "}"
}

// redacted is a URL as it may be shown: its password replaced.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the URL"
	}
	return fmt.Sprintf("%q", u.Redacted())
}

// ms is d in whole milliseconds, at least 1: Redis refuses a PX of 0.
func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// errRedis wraps a Redis error with what was being done.
func errRedis(what string, err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return nil
	}
	return fmt.Errorf("state: %s: %w", what, err)
}

// SetLogger sends the Redis client's own messages (failed dials, pool
// trouble) to log at warn level instead of the standard error. The client
// keeps one logger for the whole process, so main sets it once.
func SetLogger(log *slog.Logger) {
	if log != nil {
		redis.SetLogger(clientLog{log})
	}
}

// clientLog is the Redis client's logger interface over slog.
type clientLog struct{ log *slog.Logger }

func (l clientLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...), slog.String("component", "redis"))
}
