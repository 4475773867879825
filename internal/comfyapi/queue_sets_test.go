package comfyapi

import "testing"

func TestQueueIDSets(t *testing.T) {
	q, err := ParseQueue([]byte(`{"queue_running": [[0, "r1", {}, {}, []]], "queue_pending": [[1, "p1", {}, {}, []], [2, 7, {}, {}, []], [3, "p2", {}, {}, []]]}`))
	if err != nil {
		t.Fatal(err)
	}
	running, pending := q.IDSets()
	if len(running) != 1 || !running["r1"] || len(pending) != 2 || !pending["p1"] || !pending["p2"] {
		t.Fatalf("IDSets = %v, %v; want {r1} and {p1, p2}", running, pending)
	}
}
