package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/state"
	"github.com/redis/go-redis/v9"
)

// TestPromptsAcrossReplicas: two replicas share a real Redis and the same
// two instances. A prompt submitted on the first (with an id of the
// client's own, so the instances know it by another) is read on the
// second: its history under the client's id, its job view, its output
// through /view, also by the bare file name that another instance holds
// a file of too; another key sees nothing of it there; an interrupt on the
// second stops the first's running prompt, and a delete there removes its
// pending one (another key's delete does not). With Redis down the second
// answers as for an unknown prompt, and counts the failed lookups.
func TestPromptsAcrossReplicas(t *testing.T) {
	t.Parallel()
	rurl := testkit.Redis(t)
	ss := sims(t, 2, comfysim.Options{Delay: time.Minute, Steps: 240, Version: "0.38.0"})
	replica := func(m *metrics.Metrics) *gate {
		st, err := state.Open(context.Background(), config.State{URL: rurl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return startGateMetrics(t, addrsOf(ss), withKeys, m, func(o *Options) { o.State = st })
	}
	m2 := metrics.New("test")
	g1, g2 := replica(nil), replica(m2)

	const id, clientID = "job-on-replica-one", "client-of-a-replicas"
	body := map[string]any{"prompt": emptyImagePrompt(0x112233, "replicas"), "client_id": clientID, "prompt_id": id}
	var a promptAnswer
	if status, raw := postJSON(t, g1.base+"/prompt", bearer(keyA), body, &a); status != http.StatusOK || a.PromptID != id {
		t.Fatalf("POST /prompt on the first replica: %d %s", status, raw)
	}
	if p, ok := g1.prompts.Prompt(id); !ok || p.UpstreamID() == id || p.UpstreamID() == "" {
		t.Fatalf("the instance should know the prompt by an id of its own")
	}
	e1 := waitHistory2(t, g1, keyA, id)

	// Its history on the second replica, as the first answers it.
	e2 := waitHistory2(t, g2, keyA, id)
	if !e2.Status.Completed || len(e2.Prompt) < 4 {
		t.Fatalf("history on the second replica: %+v", e2)
	}
	var got string
	if json.Unmarshal(e2.Prompt[1], &got) != nil || got != id {
		t.Errorf("history's prompt id on the second replica: %s, want %q", e2.Prompt[1], id)
	}
	var extra map[string]any
	if json.Unmarshal(e2.Prompt[3], &extra) != nil || extra["client_id"] != clientID {
		t.Errorf("history's extra_data on the second replica: %s, want client_id %q", e2.Prompt[3], clientID)
	}
	if !bytes.Equal(e1.Prompt[0], e2.Prompt[0]) {
		t.Errorf("queue number: first replica %s, second %s", e1.Prompt[0], e2.Prompt[0])
	}
	var ref fileRef
	for _, o := range e2.Outputs {
		if len(o.Images) > 0 {
			ref = o.Images[0]
		}
	}
	if ref.Filename == "" || !strings.HasPrefix(ref.Subfolder, "@") {
		t.Fatalf("outputs on the second replica: %+v", e2.Outputs)
	}
	status, _, jb := gateDo(t, "GET", g2.base+"/api/jobs/"+id, bearer(keyA), nil)
	var job map[string]any
	if status != http.StatusOK || json.Unmarshal(jb, &job) != nil || job["id"] != id {
		t.Errorf("GET /api/jobs/{id} on the second replica: %d %s", status, jb)
	}

	// Its output: by the reference handed out, and by the bare name, which
	// the other instance holds a file of too (written directly to it).
	view := func(g *gate, key, filename, subfolder string) (int, []byte) {
		q := url.Values{"filename": {filename}, "subfolder": {subfolder}, "type": {"output"}}
		st, _, b := gateDo(t, "GET", g.base+"/view?"+q.Encode(), bearer(key), nil)
		return st, b
	}
	st1, want := view(g1, keyA, ref.Filename, ref.Subfolder)
	if st1 != http.StatusOK || len(want) == 0 {
		t.Fatalf("/view on the first replica: %d", st1)
	}
	var other *comfysim.Server
	for _, s := range ss {
		if st, _, _ := gateDo(t, "GET", "http://"+s.Addr()+"/view?filename="+url.QueryEscape(ref.Filename)+"&type=output", nil, nil); st != http.StatusOK {
			other = s
		}
	}
	if other == nil {
		t.Fatalf("both instances hold %s already", ref.Filename)
	}
	var direct promptAnswer
	if st, raw := postJSON(t, "http://"+other.Addr()+"/prompt", nil, map[string]any{"prompt": emptyImagePrompt(0xffeedd, "replicas")}, &direct); st != http.StatusOK {
		t.Fatalf("direct prompt: %d %s", st, raw)
	}
	testkit.Eventually(t, "the other instance's file", func() bool {
		st, _, _ := gateDo(t, "GET", "http://"+other.Addr()+"/view?filename="+url.QueryEscape(ref.Filename)+"&type=output", nil, nil)
		return st == http.StatusOK
	})
	if st, b := view(g2, keyA, ref.Filename, ref.Subfolder); st != http.StatusOK || !bytes.Equal(b, want) {
		t.Errorf("/view of the output reference on the second replica: %d, %d bytes, same %v", st, len(b), bytes.Equal(b, want))
	}
	// A fresh third replica has read no history: only the shared pin
	// tells the two instances' files of that name apart.
	g3 := replica(nil)
	for range 4 {
		if st, b := view(g3, keyA, ref.Filename, ""); st != http.StatusOK || !bytes.Equal(b, want) {
			t.Fatalf("/view of the bare name on another replica: %d, %d bytes, the prompt's file: %v", st, len(b), bytes.Equal(b, want))
		}
	}

	// Another key gets nothing of it on the second replica.
	if h := historyOf(t, g2, keyB, "/history/"+id); len(h) != 0 {
		t.Errorf("B's GET /history/{id} of A's prompt on the second replica: %v", h)
	}
	if st, _, b := gateDo(t, "GET", g2.base+"/api/jobs/"+id, bearer(keyB), nil); st != http.StatusNotFound {
		t.Errorf("B's GET /api/jobs/{id} of A's prompt on the second replica: %d %s", st, b)
	}
	if st, raw := postJSON(t, g2.base+"/interrupt", bearer(keyB), map[string]any{"prompt_id": id}, nil); st != http.StatusForbidden {
		t.Errorf("B's interrupt of A's prompt on the second replica: %d %s", st, raw)
	}

	// An interrupt on the second replica stops the first's running prompt.
	const slow = "slow-on-replica-one"
	slowPrompt := upscalePrompt("RealESRGAN_x2plus.pth", nil) // a minute, interruptible at each step
	if st, raw := postJSON(t, g1.base+"/prompt", bearer(keyA), map[string]any{"prompt": slowPrompt, "prompt_id": slow}, nil); st != http.StatusOK {
		t.Fatalf("slow prompt: %d %s", st, raw)
	}
	testkit.Eventually(t, "the slow prompt runs", func() bool {
		p, ok := g1.prompts.Prompt(slow)
		return ok && p.Life().StartedAt.After(time.Time{})
	})
	testkit.Eventually(t, "the second replica sees it running", func() bool {
		sp, ok := g2.prompts.SharedPrompt(context.Background(), slow)
		return ok && sp.Running
	})
	if st, raw := postJSON(t, g2.base+"/interrupt", bearer(keyA), map[string]any{"prompt_id": slow}, nil); st != http.StatusOK {
		t.Fatalf("A's interrupt on the second replica: %d %s", st, raw)
	}
	hs := waitHistory2(t, g2, keyA, slow)
	if hs.Status.StatusStr != "error" {
		t.Errorf("the interrupted prompt's status: %+v", hs.Status)
	}

	// A delete on the second replica removes the first's pending prompt
	// from its instance's queue; another key's delete leaves it.
	var pending []string
	for i := range 4 {
		pid := "queued-on-replica-one-" + string(rune('a'+i))
		if st, raw := postJSON(t, g1.base+"/prompt", bearer(keyA), map[string]any{"prompt": upscalePrompt("RealESRGAN_x2plus.pth", nil), "prompt_id": pid}, nil); st != http.StatusOK {
			t.Fatalf("prompt %s: %d %s", pid, st, raw)
		}
		pending = append(pending, pid)
	}
	queued := func() (string, string, *comfysim.Server) {
		for _, pid := range pending {
			p, ok := g1.prompts.Prompt(pid)
			if !ok || p.Life().Phase.String() != "queued" {
				continue
			}
			for k, s := range g1.pool.Instances() {
				if s == p.Instance() {
					return pid, p.UpstreamID(), ss[k]
				}
			}
		}
		return "", "", nil
	}
	var qid, qup string
	var qsim *comfysim.Server
	testkit.Eventually(t, "a pending prompt", func() bool { qid, qup, qsim = queued(); return qid != "" })
	inQueue := func() bool {
		_, _, qb := gateDo(t, "GET", "http://"+qsim.Addr()+"/queue", nil, nil)
		return bytes.Contains(qb, []byte(qup))
	}
	if !inQueue() {
		t.Fatalf("%s (%s) is not in its instance's queue", qid, qup)
	}
	if st, raw := postJSON(t, g2.base+"/queue", bearer(keyB), map[string]any{"delete": []string{qid}}, nil); st != http.StatusOK || !inQueue() {
		t.Errorf("B's delete of A's prompt on the second replica: %d %s; gone from the queue: %v", st, raw, !inQueue())
	}
	if st, raw := postJSON(t, g2.base+"/queue", bearer(keyA), map[string]any{"delete": []string{qid}}, nil); st != http.StatusOK {
		t.Errorf("A's delete on the second replica: %d %s", st, raw)
	}
	testkit.Eventually(t, "the pending prompt leaves its instance's queue", func() bool { return !inQueue() })

	// Redis stops: the second replica answers A's prompt as unknown and
	// counts the failed reads.
	state.SetLogger(slog.New(slog.DiscardHandler))
	opt, _ := redis.ParseURL(rurl)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	_ = rdb.ShutdownNoSave(context.Background()).Err()
	if h := historyOf(t, g2, keyA, "/history/"+id); len(h) != 0 {
		t.Errorf("history with Redis down: %v, want {}", h)
	}
	if n := counterValue(t, m2, "comfygate_state_index_errors_total", map[string]string{"op": "read"}); n < 1 {
		t.Errorf("failed reads counted: %v", n)
	}
}
