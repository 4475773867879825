package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/valyala/fasthttp"
)

// maxIdempotencyKeys bounds the remembered keys; past it the oldest go.
const maxIdempotencyKeys = 100_000

// maxIdempotencyKeyLen bounds a key's length.
const maxIdempotencyKeyLen = 255

// idemKey is an Idempotency-Key as its owner sent it: each API key has
// its own keys, so one key's value never replays another key's job.
type idemKey struct {
	owner string // the API key's name; "" with keys off
	key   string // the header's value
}

// fingerprint identifies a submission by what it asks: the workflow,
// the images, the inputs, the parameters and the webhook (so a retry of
// the same request matches whatever multipart boundary it used).
func fingerprint(wf string, sub *submission, values map[string]json.RawMessage, images map[string][]byte, hook string) [sha256.Size]byte {
	h := sha256.New()
	field := func(h hash.Hash, b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	field(h, []byte(wf))
	if sub.spool != nil {
		// The same bytes as field(h, image) would hash, read from the file.
		_ = binary.Write(h, binary.BigEndian, uint64(sub.spool.size))
		if f, err := os.Open(sub.spool.path); err == nil {
			_, _ = io.Copy(h, f)
			_ = f.Close()
		}
	} else {
		field(h, sub.image)
	}
	for _, k := range slices.Sorted(maps.Keys(sub.inputs)) {
		field(h, []byte(k))
		field(h, sub.inputs[k])
	}
	field(h, []byte("params"))
	for _, k := range slices.Sorted(maps.Keys(values)) {
		field(h, []byte(k))
		field(h, values[k])
	}
	field(h, []byte("images"))
	for _, k := range slices.Sorted(maps.Keys(images)) {
		field(h, []byte(k))
		field(h, images[k])
	}
	field(h, []byte(hook))
	if sub.webhookProgress {
		field(h, []byte("progress"))
	}
	var fp [sha256.Size]byte
	h.Sum(fp[:0])
	return fp
}

// idemTimeout bounds one call to the shared state store for a key: a
// store that does not answer gets the caller a 503, not a hang.
const idemTimeout = 5 * time.Second

// stateKey is key as the shared store names it: the owner, then the
// header's value (no header value holds a NUL byte).
func (k idemKey) stateKey() string { return k.owner + "\x00" + k.key }

// idemBegin looks key up: the job id it created (same submission), or a
// 422 (another submission) or 409 (the first request is still creating
// its job). An unknown key is reserved for this request ("" returned):
// the caller ends it with idemDone or idemAbort.
func (s *store) idemBegin(key idemKey, fp [sha256.Size]byte) (string, *apiError) {
	if len(key.key) > maxIdempotencyKeyLen {
		return "", badRequest(errInvalidRequest, "Idempotency-Key longer than %d bytes", maxIdempotencyKeyLen)
	}
	ctx, cancel := context.WithTimeout(s.ctx, idemTimeout)
	defer cancel()
	fpHex := hex.EncodeToString(fp[:])
	e, claimed, err := s.idem.Claim(ctx, key.stateKey(), fpHex, s.cfg.IdempotencyTTL)
	switch {
	case err != nil:
		s.log.Warn("idempotency key not checked", slog.Any("error", err))
		return "", &apiError{status: fasthttp.StatusServiceUnavailable, typ: errStateUnavailable,
			msg: "comfygate cannot check the Idempotency-Key now", retryAfter: 1}
	case claimed:
		return "", nil
	case e.FP != fpHex:
		return "", &apiError{status: fasthttp.StatusUnprocessableEntity, typ: errIdempotency,
			msg: "this Idempotency-Key was used with another request body"}
	case e.JobID == "":
		return "", &apiError{status: fasthttp.StatusConflict, typ: errIdemInProgress,
			msg: "a request with this Idempotency-Key is still being processed", retryAfter: 1}
	}
	return e.JobID, nil
}

// idemDone records the job a reserved key created.
func (s *store) idemDone(key idemKey, fp [sha256.Size]byte, jobID string) {
	ctx, cancel := context.WithTimeout(s.ctx, idemTimeout)
	defer cancel()
	if err := s.idem.Complete(ctx, key.stateKey(), hex.EncodeToString(fp[:]), jobID); err != nil {
		// The reservation stays until its TTL: a retry gets 409.
		s.log.Warn("idempotency key not completed", slog.String("job", jobID), slog.Any("error", err))
	}
}

// idemAbort frees a reserved key whose request created no job, so that
// its retry may.
func (s *store) idemAbort(key idemKey, fp [sha256.Size]byte) {
	ctx, cancel := context.WithTimeout(s.ctx, idemTimeout)
	defer cancel()
	if err := s.idem.Abort(ctx, key.stateKey(), hex.EncodeToString(fp[:])); err != nil {
		s.log.Warn("idempotency key not freed", slog.Any("error", err))
	}
}

// sweepIdem forgets expired keys kept in memory (Redis expires its own).
func (s *store) sweepIdem() {
	if m, ok := s.idem.(interface{ Sweep() }); ok {
		m.Sweep()
	}
}
