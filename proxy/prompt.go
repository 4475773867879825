package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/upstream"
	"strconv"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/ids"

	"github.com/comfygate/comfygate/prompts"
	"github.com/valyala/fasthttp"
)

// maxPromptBody caps a POST /prompt body, which comfygate reads whole to
// parse it. ComfyUI's own limit is --max-upload-size (100 MB by default);
// a prompt with an embedded workflow is rarely over a few MB.
const maxPromptBody = 64 << 20

// maxSmallBody caps the JSON bodies of /queue, /history, /interrupt,
// /free and /api/jobs/cancel.
const maxSmallBody = 4 << 20

// submitter serves POST /prompt (parse once, place, hand to the prompt
// table) and GET /prompt.
type submitter struct {
	pool    *upstream.Pool
	prompts *prompts.Table
	policy  *placement.Policy
	hub     *Hub
	fwd     *forwarder
	bodies  *clientBodies
	keys    *keyGuard
	files   *fileRoutes  // the key's own file names in the prompt
	fleet   *fleetRoutes // where the prompt may run
	answers *answerWaits // its events wait for its answer
}

// writeComfyError answers in ComfyUI's POST /prompt error shape.
func writeComfyError(ctx *fasthttp.RequestCtx, code int, typ, message, details string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
	ctx.SetContentType(jsonContentType)
	b := append([]byte(`{"error": {"type": `), quoteJSON(typ)...)
	b = append(b, `, "message": `...)
	b = append(b, quoteJSON(message)...)
	b = append(b, `, "details": `...)
	b = append(b, quoteJSON(details)...)
	b = append(b, `, "extra_info": {}}, "node_errors": {}}`...)
	ctx.SetBody(b)
}

// postPrompt serves POST /prompt: parse, choose the prompt id, and hand
// the prompt to the prompt table, which picks the instance, pins the id before
// sending, and rewrites ids both ways.
//
// Differences from one ComfyUI, on purpose:
//   - a body that is not JSON, or not a JSON object, gets 400
//     invalid_prompt in ComfyUI's error shape (ComfyUI answers a plain-text
//     500 from its exception handler);
//   - a body over maxPromptBody gets 413 before any instance sees it;
//   - prompt_id: comfygate keeps the client's id when it is a non-empty
//     string or a number (stringified, as ComfyUI's 2025 releases do) and not
//     already known to comfygate; ids that are not canonical UUIDs are fine
//     here, the prompt table maps them to UUIDs it mints for 2026 instances.
//     Otherwise (absent, null, other types, or in use: ComfyUI itself would
//     run a duplicate id twice and overwrite its history) comfygate mints a
//     lowercase UUIDv4, which the answer carries;
//   - a POST that repeats a known prompt's prompt_id with the same body,
//     from the same API key (a client sending again a request whose answer
//     it did not get, to this replica or another) is that prompt: it is
//     answered with its id and number and not sent again, or 503
//     prompt_pending with Retry-After while the first copy's send has not
//     settled (writeResubmitted);
//   - string inputs "@<instance>~<id>/name [output]" (an output reference
//     comfygate handed out, loaded as an input) steer the prompt to that
//     instance and lose their "@<instance>~<id>/", or name a copy of the file
//     where the prompt runs elsewhere (outputref.go);
//   - "number" in the answer is the fleet's queue number
//     (prompts.Prompt.Number), not the instance's: every instance counts
//     from 0 on its own. Like ComfyUI's counter, it advances when a prompt
//     is sent, before the instance validates it. A client's "front" and "number" still order the
//     prompt only within the queue of the instance that runs it; the
//     number shown for them is ComfyUI's (-counter, and the client's own
//     value).
func (s *submitter) postPrompt(ctx *fasthttp.RequestCtx) {
	// The liveness lease it arrived under (replicas): a replica paused
	// past it while holding this request does not send it on waking.
	lease := s.prompts.Lease()
	body, err := s.bodies.readClientBody(ctx, maxPromptBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) || errors.Is(err, errBodiesBusy) {
			s.fwd.writeError(ctx, err)
			return
		}
		writeComfyError(ctx, fasthttp.StatusBadRequest, "invalid_prompt", "Invalid prompt: the request body could not be read", "")
		return
	}
	req, err := comfyapi.ParsePromptRequest(body)
	if err != nil {
		details := "the request body must be a JSON object"
		var se *json.SyntaxError
		if errors.As(err, &se) {
			details = "invalid JSON at byte " + strconv.FormatInt(se.Offset, 10) + ": " + se.Error()
		}
		writeComfyError(ctx, fasthttp.StatusBadRequest, "invalid_prompt", "Invalid prompt: the request body is not a JSON object", details)
		return
	}
	fields := req.Fields
	if !req.HasPrompt() {
		// ComfyUI's own answer (Oct-2025 and later).
		writeComfyError(ctx, fasthttp.StatusBadRequest, "no_prompt", "No prompt provided", "No prompt provided")
		return
	}
	if ns := s.files.keyNamespace(ctx); ns != "" {
		// An isolated key's uploads live in its own folder (keyfiles.go).
		graph, err := s.files.namespacePrompt(ns, fields["prompt"])
		if err != nil {
			writeComfyError(ctx, fasthttp.StatusBadRequest, "invalid_prompt", "Invalid prompt: "+err.Error(), err.Error())
			return
		}
		fields["prompt"] = graph
	}
	clientID := req.EffectiveClientID()
	if !s.keys.claimClientID(ctx, clientID) {
		return
	}
	promptID := comfyapi.ClientPromptID(req.PromptID)
	fingerprint := ""
	if promptID != "" {
		fingerprint = prompts.Fingerprint(body)
		re := s.prompts.Resubmission(context.Background(), promptID, keyName(ctx), fingerprint)
		switch {
		case re.Same:
			writeResubmitted(ctx, promptID, req, re)
			return
		case re.Known:
			promptID = "" // another submission's id
		}
	}
	if promptID == "" {
		fingerprint = ""
		promptID = newUUID()
	}
	// Outputs loaded as inputs by a reference comfygate handed out
	// ("@<instance>~<id>/x.png [output]"): run where they are, or have them
	// copied (outputref.go).
	files, prefer := promptFiles(s.pool.Instances(), fields["prompt"])
	// Only instances that can run it (catalogue) and carry the labels it
	// asks for (X-Comfygate-Pool); among them, one that ran the same
	// models last (affinity), unless its files decide.
	pl, ok := s.fleet.place(ctx, fields["prompt"])
	if !ok {
		return
	}
	if prefer == nil {
		prefer = pl.Prefer
	}
	header := map[string]string{"Content-Type": "application/json"}
	for _, h := range []string{"Comfy-User", "Comfy-Usage-Source"} {
		if v := ctx.Request.Header.Peek(h); v != nil {
			header[h] = string(v)
		}
	}
	// The prompt's events wait for this answer (answerfirst.go).
	held := newHeldSink(s.hub.sinkFor(keyName(ctx)))
	s.answers.afterAnswer(ctx, held.release)
	res, err := s.prompts.Submit(context.Background(), prompts.SubmitRequest{
		Body:     fields,
		PromptID: promptID,
		ClientID: clientID,
		Owner:    keyName(ctx),
		Sink:     held,
		// A repeat of this request is answered as this prompt.
		Submission: fingerprint,
		Lease:      lease,
		Header:     header,
		Prefer:     prefer,
		Files:      files,
		Eligible:   pl.Eligible,
	})
	if errors.Is(err, prompts.ErrRepeated) {
		// The same request arrived twice at once: both passed the look
		// above before either was in the table.
		writeResubmitted(ctx, promptID, req, s.prompts.Resubmission(context.Background(), promptID, keyName(ctx), fingerprint))
		return
	}
	if res.Instance != nil {
		setInstance(ctx, res.Instance)
	}
	if err != nil {
		s.fwd.writeError(ctx, err)
		return
	}
	body = res.Body
	if res.Prompt != nil {
		s.policy.Ran(res.Instance, pl)
		body = setAnswerNumber(body, res.Prompt)
	}
	ctx.SetStatusCode(res.Status)
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(body)
}

// writeResubmitted answers a POST /prompt that repeats one comfygate
// already took (the same prompt_id, API key and body), without sending it
// again: as ComfyUI answered the first, when an instance accepted it
// (node_errors is empty: only the first answer carried the instance's
// words), else 503 prompt_pending with Retry-After, for a client to ask
// again once the first copy's send settled.
func writeResubmitted(ctx *fasthttp.RequestCtx, id string, req comfyapi.PromptRequest, re prompts.Resubmission) {
	if re.Instance != nil {
		setInstance(ctx, re.Instance)
	}
	if !re.Accepted {
		writeComfyError(ctx, fasthttp.StatusServiceUnavailable, "prompt_pending",
			"This prompt_id was submitted with this body and is still being sent to an instance",
			"send the same request again to get its answer")
		ctx.Response.Header.Set("Retry-After", "1")
		return
	}
	b := append([]byte(`{"prompt_id": `), quoteJSON(id)...)
	switch {
	case re.HasNumber:
		b = append(append(b, `, "number": `...), strconv.FormatInt(re.Number, 10)...)
	case req.HasNumber():
		b = append(append(b, `, "number": `...), req.Number...)
	}
	b = append(b, `, "node_errors": {}}`...)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(b)
}

// getPrompt serves GET /prompt: the fleet's queue_remaining, which is what
// one ComfyUI running all of the fleet's work would report.
func (s *submitter) getPrompt(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType(jsonContentType)
	b := append([]byte(`{"exec_info": {"queue_remaining": `), strconv.Itoa(s.pool.QueueRemaining())...)
	ctx.SetBody(append(b, "}}"...))
}

// newUUID returns a random lowercase UUIDv4.
func newUUID() string { return ids.UUID() }
