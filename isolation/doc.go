// Package isolation is the gateway-wide isolation property test (this
// package has no code of its own). Two ordinary API keys, A and B, use one
// comfygate in front of simulated ComfyUI instances. B has prompts running,
// waiting and finished, a job, an uploaded input and an open WebSocket;
// A then sends generated requests: every route that names a prompt, a job,
// a clientId or a file, in every framing (Content-Length, chunked), key
// case, element type, duplicate key, path form ("//", "/./", "..", "%2F",
// a trailing "/", percent-encoded letters) and query form. After each one,
// B's prompts, history, job, upload, clientId and socket are as they were,
// and no answer or event A received carries anything of B's.
//
// The default test run sends a fixed sample of those requests and every
// seed of FuzzIsolation; .ci/fuzz fuzzes it briefly, and
//
//	go test -run '^$' -fuzz '^FuzzIsolation$' -fuzztime 10m ./isolation/
//	go test -run TestIsolationProperty -isolation.n 20000 ./isolation/
//
// run it longer.
package isolation
