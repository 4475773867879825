// Package prompts owns the life of every prompt comfygate forwards to the
// instances of an upstream.Pool: submission (selecting through the pool,
// pinning before the POST leaves), the prompt table whose transitions are
// the pure state machine of internal/lifecycle, the one event WebSocket
// per instance that routes events to each prompt's sink in order (through
// per-instance outboxes), failover of the prompts of a dead or hung
// instance, the tombstones that keep a moved prompt from running twice,
// and the pins of the files instances hold (outputs, uploads, copies
// between instances).
//
// It depends on upstream, never the reverse: Table is the pool's
// upstream.PromptOwner, told about instances coming, going and dying.
package prompts
