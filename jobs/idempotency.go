package jobs

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"hash"
	"io"
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

// idemEntry is one Idempotency-Key (IETF httpapi draft): the submission
// it came with and the job it created. Guarded by the engine's lock.
type idemEntry struct {
	fp      [sha256.Size]byte
	jobID   string // "" while the first request is still creating the job
	created time.Time
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

// idemBegin looks key up: the job id it created (same submission), or a
// 422 (another submission) or 409 (the first request is still creating
// its job). An unknown key is reserved for this request ("" returned):
// the caller ends it with idemDone or idemAbort.
func (s *store) idemBegin(key idemKey, fp [sha256.Size]byte) (string, *apiError) {
	if len(key.key) > maxIdempotencyKeyLen {
		return "", badRequest(errInvalidRequest, "Idempotency-Key longer than %d bytes", maxIdempotencyKeyLen)
	}
	s.eng.lock()
	defer s.eng.unlock()
	now := s.eng.timeNow()
	if e := s.idem[key]; e != nil && now.Sub(e.created) < s.cfg.IdempotencyTTL {
		switch {
		case e.fp != fp:
			return "", &apiError{status: fasthttp.StatusUnprocessableEntity, typ: errIdempotency,
				msg: "this Idempotency-Key was used with another request body"}
		case e.jobID == "":
			return "", &apiError{status: fasthttp.StatusConflict, typ: errIdemInProgress,
				msg: "a request with this Idempotency-Key is still being processed", retryAfter: 1}
		}
		return e.jobID, nil
	}
	if len(s.idem) >= maxIdempotencyKeys {
		s.expireIdemLocked(now, true)
	}
	s.idem[key] = &idemEntry{fp: fp, created: now}
	return "", nil
}

// idemDone records the job a reserved key created.
func (s *store) idemDone(key idemKey, jobID string) {
	s.eng.lock()
	if e := s.idem[key]; e != nil {
		e.jobID = jobID
	}
	s.eng.unlock()
}

// idemAbort frees a reserved key whose request created no job, so that
// its retry may.
func (s *store) idemAbort(key idemKey) {
	s.eng.lock()
	if e := s.idem[key]; e != nil && e.jobID == "" {
		delete(s.idem, key)
	}
	s.eng.unlock()
}

// expireIdemLocked forgets keys older than the TTL; with full set, also
// the oldest tenth of the rest.
func (s *store) expireIdemLocked(now time.Time, full bool) {
	for k, e := range s.idem {
		if now.Sub(e.created) >= s.cfg.IdempotencyTTL {
			delete(s.idem, k)
		}
	}
	if !full || len(s.idem) < maxIdempotencyKeys {
		return
	}
	keys := slices.SortedFunc(maps.Keys(s.idem), func(a, b idemKey) int { return s.idem[a].created.Compare(s.idem[b].created) })
	for _, k := range keys[:len(keys)/10+1] {
		if s.idem[k].jobID != "" {
			delete(s.idem, k)
		}
	}
}
