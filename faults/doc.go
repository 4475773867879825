// Package faults is comfygate's fault suite: integration tests (this
// package has no code of its own) that run the whole gateway in front of
// simulated ComfyUI instances (comfysim) and break an instance the ways
// real ones break: killed mid-prompt or with a queue, refusing connections,
// hung and resumed (SIGSTOP/SIGCONT), answering 500 to everything, slowed
// to a byte a second, its WebSocket dropped every second, flapping faster
// than the health checks, all down and then one back, comfygate itself
// restarted, client-caused 500s, and 1,000 concurrent submissions.
//
// Its replica faults (replicas_test.go) run two comfygate processes built
// from this module, sharing a real redis-server, in front of two
// simulated instances, with clients that send POST /prompt to one replica
// and hold their /ws on the other and move to the other replica when
// theirs fails: a replica killed (kill -9), stopped (SIGSTOP) and resumed,
// or restarted one after the other; Redis restarted, refusing both
// replicas, or cut off from one. They count what ran twice, what was lost
// and what was delivered twice, and table what each route answers while
// Redis does not.
//
// For each fault, clients that behave like ComfyUI's (POST /prompt and a
// /ws socket, and the job API) submit work, and the suite checks that every
// accepted prompt and job finishes exactly once or fails with a clear
// error, that no client gets another's events, and that goroutines and
// memory come back down. "Ran twice" is counted on the instances (each
// simulator knows which prompt ids it ran), "lost" on the clients.
//
// Run it alone with
//
//	go test -race -v -run . ./faults/ -faults.table=faults.md
//
// which logs one row per fault and writes the table as markdown
// (-faults.replicas.table=FILE writes the replica faults' table). A fault
// marked as needing a behaviour comfygate lacks is skipped, naming it;
// -faults.unskip runs it anyway. Under -race the concurrent-submissions
// fault submits 250, not 1,000, unless -faults.full. -faults.long adds a hang
// under production timing, which logs the time from SIGSTOP to failover, a
// replica stopped for longer than a lease, and the routes' answers while
// Redis is cut off rather than refusing.
package faults
