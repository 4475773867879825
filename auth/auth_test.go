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
	if k := ks.Find([]byte("plain-key-0123456789")); k == nil || k.Name != "key1" || k.Admin {
		t.Errorf("Find(plain key) = %+v, want key1", k)
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

func TestOwners(t *testing.T) {
	t.Parallel()
	o := NewOwners(2)
	o.SetPrompt("p1", "a")
	o.SetPrompt("p2", "b")
	o.SetPrompt("p3", "a")
	o.SetPrompt("p3", "b") // a replay names p3 again
	if o.PromptOwner("p1") != "" || o.PromptOwner("p3") != "a" || o.PromptOwner("p2") != "b" {
		t.Errorf("owners after eviction: p1=%q p2=%q p3=%q", o.PromptOwner("p1"), o.PromptOwner("p2"), o.PromptOwner("p3"))
	}
	first := o.ClaimClient("c", "a")
	again := o.ClaimClient("c", "a")
	if !first || !again || o.ClaimClient("c", "b") {
		t.Error("a clientId is not kept by its first key")
	}
}
