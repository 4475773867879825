package prompts

// A client that got no answer to its POST /prompt (its connection was cut,
// it timed out, the replica that read it died) sends it again, often to
// another replica. When the first copy reached an instance, running the
// second would run the prompt twice. So a POST that repeats the prompt_id
// of a prompt comfygate knows (in its table or, with replicas, in the
// shared index), from the same API key and with the same body, is the same
// submission: it is answered as that prompt, not sent again.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

// resubmitWait bounds how long a repeated POST waits for the first copy's
// send to settle (its instance accepted it, or refused it). It is shorter
// than the attempt timeouts clients use, so that the repeat is answered,
// with 200 or with a clear "pending", before its client gives up on it.
const resubmitWait = 1500 * time.Millisecond

// resubmitPoll is how often a waiting repeat looks again.
const resubmitPoll = 100 * time.Millisecond

// Fingerprint names a POST /prompt body for recognising a repeat of it: a
// client that sends its request again sends the same bytes.
func Fingerprint(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}

// Resubmission is what the table knows of a POST /prompt that names a
// prompt_id (Table.Resubmission).
type Resubmission struct {
	// Known: comfygate knows a prompt of that id. When Same is false it is
	// another submission's (another body or key): the new one needs an id
	// of its own.
	Known bool
	// Same: the same submission (the id, the API key and the body).
	Same bool
	// Accepted: an instance accepted it (or shows it): answer it as
	// accepted. Same and not Accepted: its send is not settled yet
	// (pending); the client should ask again.
	Accepted bool
	// Number is its fleet number when HasNumber (the client's own is in
	// its body).
	Number    int64
	HasNumber bool
	// Instance is where it is (nil when unknown here).
	Instance *upstream.Instance
}

// Resubmission looks for a prompt with id (owner's, with the body whose
// Fingerprint is fp): in the table, else in the shared index. A pending
// one is waited for at most resubmitWait (bounded by ctx): another
// replica's is looked for at its instance meanwhile, which settles it as
// accepted when the instance has it. A prompt that was refused is not the
// same submission: a repeat goes to the instances again.
func (t *Table) Resubmission(ctx context.Context, id, owner, fp string) Resubmission {
	if id == "" || fp == "" {
		return Resubmission{}
	}
	ctx, cancel := context.WithTimeout(ctx, resubmitWait)
	defer cancel()
	for {
		r, settled := t.resubmission(ctx, id, owner, fp)
		if settled || !sleepCtx(ctx, t.p.Clock(), resubmitPoll) {
			if r.Same {
				t.m.PromptRepeated(r.Accepted)
			}
			if r.Known {
				t.log.Debug("prompts: a POST names a known prompt_id", "prompt_id", id, "same", r.Same, "accepted", r.Accepted)
			}
			return r
		}
	}
}

// resubmission is one look; settled false: the same submission, pending.
func (t *Table) resubmission(ctx context.Context, id, owner, fp string) (Resubmission, bool) {
	if pr, ok := t.idx.get(id); ok {
		life := pr.Life()
		r := Resubmission{Known: true, Instance: pr.Instance()}
		if pr.submission != fp || pr.owner != owner || life.Adopted || life.Phase == lifecycle.Dropped {
			return r, true
		}
		r.Same, r.Accepted = true, life.Accepted
		if n, ok := pr.Number(); ok {
			r.Number, r.HasNumber = int64(n), true
		}
		return r, r.Accepted
	}
	sp, found := t.SharedPrompt(ctx, id)
	if !found {
		return Resubmission{}, true
	}
	r := Resubmission{Known: true, Instance: sp.Instance}
	if sp.Submission != fp || sp.Owner != owner || sp.Refused {
		return r, true
	}
	r.Same, r.Accepted, r.Number, r.HasNumber = true, sp.Accepted, sp.Number, sp.Numbered
	if !r.Accepted && sp.Instance != nil && sp.UpstreamID != "" {
		// Its replica may be stopped or gone: the instance decides.
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
		_, r.Accepted, _ = probeAt(pctx, sp.Instance, sp.UpstreamID)
		cancel()
	}
	return r, r.Accepted
}
