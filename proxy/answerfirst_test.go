package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// eventsFirstComfy is a scripted ComfyUI that sends a prompt's whole run
// on its socket (a cached prompt: start, cached, success, the end) and
// only then, after a pause, answers the POST /prompt.
func eventsFirstComfy(t *testing.T, pause time.Duration) *testkit.MiniComfy {
	t.Helper()
	f := testkit.Mini(t, "0.3.65")
	f.BeforeAnswer(func(id string) {
		f.Emit(`{"type": "execution_start", "data": {"prompt_id": "%s", "timestamp": 1}}`, id)
		f.Emit(`{"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": "%s", "timestamp": 1}}`, id)
		f.Emit(`{"type": "execution_success", "data": {"prompt_id": "%s", "timestamp": 2}}`, id)
		f.Emit(`{"type": "executing", "data": {"node": null, "prompt_id": "%s"}}`, id)
		time.Sleep(pause)
	})
	return f
}

// TestEventsWaitForTheAnswer: the instance sends a prompt's events before
// its answer; the client sees none of them before its POST /prompt answer
// is on its connection, and then sees them all, in order. So it is on one
// gateway and on two replicas with the POST on one and the socket on the
// other.
func TestEventsWaitForTheAnswer(t *testing.T) {
	t.Parallel()
	forEachTarget(t, func(t *testing.T, kind targetKind) {
		fake := eventsFirstComfy(t, 150*time.Millisecond)
		tg := startTarget(t, kind, func(opts func(*Options)) *gate {
			return startGateWith(t, []string{fake.Addr()}, nil, opts)
		})
		ws := dialWS(t, tg.front.wsURL("answer-first"))

		post, err := net.Dial("tcp", tg.front.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer post.Close()
		body := `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "client_id": "answer-first", "prompt_id": "p-answer-first"}`
		fmt.Fprintf(post, "POST /prompt HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", tg.front.addr, len(body), body)

		// Status broadcasts (queue counts) are no prompt's events.
		next := func() wsMsg {
			for {
				if m := ws.read(); m.typ() != "status" {
					return m
				}
			}
		}
		first := next()
		if !strings.Contains(string(first.data), "p-answer-first") {
			t.Fatalf("first message: %s", first.data)
		}
		// The answer was flushed before the first event went out: on loopback
		// its bytes are already here.
		_ = post.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		resp, err := http.ReadResponse(bufio.NewReader(post), nil)
		if err != nil {
			t.Fatalf("the event %s came before the answer to POST /prompt (%v)", first.typ(), err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /prompt: %d", resp.StatusCode)
		}
		got := []string{first.typ()}
		for len(got) < 4 {
			got = append(got, next().typ())
		}
		if want := "execution_start,execution_cached,execution_success,executing"; strings.Join(got, ",") != want {
			t.Errorf("events %s, want %s", strings.Join(got, ","), want)
		}
		tg.checkSpread(t)
	})
}
