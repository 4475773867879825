// Package state owns the state several comfygate replicas share, and its
// store: this process's memory when state.url is empty (one replica, the
// default), or a Redis-protocol server named by state.url. It opens the
// store from the configuration (Open), answers for its health (Ping), and
// offers each shared piece behind one small interface with a memory and a
// Redis implementation:
//
//   - Counter: the fleet-wide queue number of accepted prompts (INCR);
//   - Idempotency: the job API's Idempotency-Keys, each the job it created,
//     for jobs.idempotency_ttl (SET NX PX);
//   - ClientOwners: which API key holds each WebSocket clientId;
//   - Leases: which replica owns an instance, with a fencing token, and
//     writes that a replica whose lease was lost cannot make (Lua scripts);
//   - Events: WebSocket events for a clientId whose socket is on another
//     replica (pub/sub for live delivery, a stream per clientId for the
//     catch-up of a reconnect; a no-op in memory);
//   - Jobs: the job API's wait line and job records: jobs claimed by one
//     replica at a time with a lease, written only by their holder, read
//     by any replica, claimed again when their holder died (Lua scripts);
//   - RateLimits: the token buckets of the rate limits, per key (a Lua
//     script on the server's clock; nil in memory, where a replica's own
//     buckets are the fleet's);
//   - ResultIndex: the job API's result cache index: for each cached
//     result, the outputs and the instances that hold them (nil in memory);
//   - PromptIndex: where each prompt a replica submitted is (instance, its
//     id there, owner, number, done, its lifecycle.State) and which
//     instance holds each file, for reads that land on another replica
//     (one hash or string per prompt or file, PromptTTL; nil in memory,
//     where the prompt table is the whole index).
//
// Every Redis key starts with Prefix and has a TTL or a bound; docs/state.md
// lists the layout. The package keeps no state of its own beyond the store:
// its users decide what the pieces mean.
package state
