package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/config"
)

func TestKeys(t *testing.T) {
	t.Parallel()
	h := sha256.Sum256([]byte("file-key-0123456789"))
	file := fmt.Sprintf("# team keys\nops sha256:%s admin\nscrape sha256:%s metrics\n\n", hex.EncodeToString(h[:]), strings.Repeat("ab", 32))
	keys, err := ParseKeysFile([]byte(file))
	if err != nil || len(keys) != 2 || !keys[0].Admin || !keys[1].MetricsOnly || keys[0].MetricsOnly {
		t.Fatalf("ParseKeysFile: %+v %v", keys, err)
	}
	cfg := config.Default()
	cfg.Auth.Keys = []string{"plain-key-0123456789"}
	ks, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ks.keys = append(ks.keys, keys...)
	if k := ks.Find([]byte("file-key-0123456789")); k == nil || k.Name != "ops" {
		t.Errorf("Find(file key) = %+v, want ops", k)
	}
	if k := ks.Find([]byte("plain-key-0123456789")); k == nil || k.Name != PlainKeyName("key", "plain-key-0123456789") || !strings.HasPrefix(k.Name, "key-") || k.Admin {
		t.Errorf("Find(plain key) = %+v, want key-<hex>", k)
	}
	for _, bad := range []string{"", "plain-key-012345678", "x"} {
		if k := ks.Find([]byte(bad)); k != nil {
			t.Errorf("Find(%q) = %+v, want nil", bad, k)
		}
	}
	for _, bad := range []string{"a", "a sha256:zz", "a md5:" + strings.Repeat("a", 64), "a sha256:" + strings.Repeat("a", 64) + " root"} {
		if _, err := ParseKeysFile([]byte(bad)); err == nil {
			t.Errorf("ParseKeysFile(%q): no error", bad)
		}
	}
}

func TestViews(t *testing.T) {
	t.Parallel()
	mine := func(id string) bool { return id == "mine" }
	iso := View{Visible: mine, Own: mine, Redact: []string{"api_key_comfy_org"}}
	open := View{Redact: []string{"api_key_comfy_org"}}
	queue := `{"queue_running": [[0, "mine", {}, {"api_key_comfy_org": "s1", "client_id": "c"}, []]], "queue_pending": [[1, "other", {}, {"api_key_comfy_org": "s2", "x": 1}, []]]}`
	if got := string(iso.Queue([]byte(queue))); strings.Contains(got, "other") || !strings.Contains(got, "s1") {
		t.Errorf("isolated queue: %s", got)
	}
	if got := string(open.Queue([]byte(queue))); strings.Contains(got, "s1") || strings.Contains(got, "s2") || !strings.Contains(got, `"x": 1`) {
		t.Errorf("open queue: %s", got)
	}
	hist := `{"other": {"prompt": [1, "other", {}, {"api_key_comfy_org": "s2"}, []], "status": {}}, "mine": {"prompt": [0, "mine", {}, {"api_key_comfy_org": "s1"}, []]}}`
	if got := string(iso.History([]byte(hist))); strings.Contains(got, "other") || !strings.Contains(got, "s1") {
		t.Errorf("isolated history: %s", got)
	}
	if got := string(open.History([]byte(hist))); strings.Contains(got, "s2") || strings.Contains(got, "s1") {
		t.Errorf("open history: %s", got)
	}
	jobs := `{"jobs": [{"id": "other", "extra_data": {"api_key_comfy_org": "s2"}}, {"id": "mine"}], "pagination": {}}`
	if got := string(iso.Jobs([]byte(jobs))); strings.Contains(got, "other") || !strings.Contains(got, "mine") {
		t.Errorf("isolated jobs: %s", got)
	}
	if got := string(open.Jobs([]byte(jobs))); strings.Contains(got, "s2") {
		t.Errorf("open jobs: %s", got)
	}
	plain := `{"queue_running": [], "queue_pending": []}`
	if got := string(open.Queue([]byte(plain))); got != plain {
		t.Errorf("a queue with nothing to hide was rewritten: %s", got)
	}
}

// FuzzViews: any answer body gives no panic, and a valid JSON answer
// stays valid JSON.
func FuzzViews(f *testing.F) {
	f.Add([]byte(`{"queue_running": [[0, "a", {}, {"api_key_comfy_org": "zz-secret"}, []]], "queue_pending": []}`))
	f.Add([]byte(`{"a": {"prompt": [0, "a", {}, {"api_key_comfy_org": "zz-secret"}]}}`))
	f.Add([]byte(`{"jobs": [{"id": "a", "extra_data": {"api_key_comfy_org": "zz-secret"}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		v := View{Visible: func(id string) bool { return id != "hidden" }, Redact: []string{"api_key_comfy_org"}}
		valid := json.Valid(body)
		for _, out := range [][]byte{v.Queue(body), v.History(body), v.Jobs(body)} {
			if valid && !json.Valid(out) {
				t.Fatalf("%s became invalid JSON: %s", body, out)
			}
		}
	})
}

// TestOwners: each key's records are bounded on their own, its oldest
// forgotten first; one key's churn never makes another key's records go,
// and a clientId held by a live socket is never forgotten.
func TestOwners(t *testing.T) {
	t.Parallel()
	o := NewOwners(2)
	o.SetPrompt("p1", "a")
	o.SetPrompt("p2", "b")
	o.SetPrompt("p3", "a")
	o.SetPrompt("p3", "b") // a replay names p3 again
	for i := range 10 {
		o.SetPrompt(fmt.Sprint("churn-", i), "a")
	}
	if o.PromptOwner("p1") != "" || o.PromptOwner("p3") != "" || o.PromptOwner("p2") != "b" || o.PromptOwner("churn-9") != "a" {
		t.Errorf("prompt owners after a's churn: p1=%q p2=%q p3=%q churn-9=%q, want p2 kept for b and a's oldest gone",
			o.PromptOwner("p1"), o.PromptOwner("p2"), o.PromptOwner("p3"), o.PromptOwner("churn-9"))
	}

	first := o.ClaimClient("c", "a")
	again := o.ClaimClient("c", "a")
	if !first || !again || o.ClaimClient("c", "b") {
		t.Error("a clientId is not kept by its first key")
	}
	if !o.ClaimClient("of-b", "b") || !o.HoldClient("held-by-a", "a") {
		t.Fatal("claims of fresh clientIds refused")
	}
	for i := range 10 {
		if !o.ClaimClient(fmt.Sprint("churn-", i), "a") {
			t.Fatalf("a's claim %d refused", i)
		}
	}
	if o.ClaimClient("of-b", "a") {
		t.Error("a's churn freed b's clientId for a")
	}
	if o.ClaimClient("held-by-a", "b") || o.HoldClient("held-by-a", "b") {
		t.Error("a's churn freed the clientId a's live socket holds")
	}
	if !o.ClaimClient("c", "b") {
		t.Error("a's oldest clientId, held by nothing, outlived a's churn")
	}
	// Released, it is a's newest record; a's own later claims push it out.
	o.ReleaseClient("held-by-a", "a")
	o.ReleaseClient("held-by-a", "b") // not b's: ignored
	if o.ClaimClient("held-by-a", "b") {
		t.Error("a released clientId went to another key at once")
	}
	for i := range 2 {
		o.ClaimClient(fmt.Sprint("more-", i), "a")
	}
	if !o.ClaimClient("held-by-a", "b") {
		t.Error("a released clientId outlived a's own later claims")
	}
	// Two sockets hold one clientId: it stays until both are gone.
	o.HoldClient("twice", "b")
	o.HoldClient("twice", "b")
	o.ReleaseClient("twice", "b")
	for i := range 4 {
		o.ClaimClient(fmt.Sprint("b-", i), "b")
	}
	if o.ClaimClient("twice", "a") {
		t.Error("a clientId one socket still holds was forgotten")
	}
}
