package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/comfygate/comfygate/internal/testkit"
)

// queueRequests is how many GET /queue a replica's /metrics counts.
func queueRequests(t *testing.T, base string) int {
	t.Helper()
	_, body := httpDo(t, "GET", base+"/metrics", nil)
	re := regexp.MustCompile(`(?m)^comfygate_http_requests_total\{[^}]*route="/queue"[^}]*\} (\d+)$`)
	n := 0
	for _, m := range re.FindAllStringSubmatch(string(body), -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

// TestDemoReplicasShareOnePrompt runs `comfygate demo -replicas 2`: a
// prompt submitted through replica 1 is read, downloaded and followed on a
// WebSocket through replica 2; the round-robin front reaches both; and on
// exit the demo's redis-server is gone.
func TestDemoReplicasShareOnePrompt(t *testing.T) {
	testkit.RedisServerBin(t) // skips, or fails in CI, without the redis-server demo -replicas runs
	d := startDemo(t, "demo", "-replicas", "2", "-listen", "127.0.0.1:0", "-delay", "0s", "-log-format", "json")
	replicaRE := regexp.MustCompile(`replica (\d): (http://127\.0\.0\.1:\d+)`)
	frontRE := regexp.MustCompile(`round robin: (http://127\.0\.0\.1:\d+)`)
	redisRE := regexp.MustCompile(`redis-server at redis://(127\.0\.0\.1:\d+)`)
	d.await(t, frontRE, 30*time.Second)
	text := d.out.String()
	m := replicaRE.FindAllStringSubmatch(text, -1)
	f, r := frontRE.FindStringSubmatch(text), redisRE.FindStringSubmatch(text)
	if len(m) != 2 || m[0][1] != "1" || m[1][1] != "2" || f == nil || r == nil {
		t.Fatalf("demo did not print two replicas, the front and redis:\n%s", text)
	}
	one, two, front, redisAddr := m[0][2], m[1][2], f[1], r[1]
	if one == two {
		t.Fatalf("both replicas at %s", one)
	}

	// A socket on replica 2, the prompt through replica 1.
	const clientID = "demo-replicas"
	conn, _, err := websocket.DefaultDialer.Dial(strings.Replace(two, "http", "ws", 1)+"/ws?clientId="+clientID, nil)
	if err != nil {
		t.Fatalf("WebSocket to replica 2: %v", err)
	}
	defer conn.Close()
	curl := demoCurl(one)
	payload := curl[strings.Index(curl, "-d '")+4 : len(curl)-1]
	payload = strings.Replace(payload, `{"prompt"`, `{"client_id":"`+clientID+`","prompt"`, 1)
	code, body := httpDo(t, "POST", one+"/prompt", []byte(payload))
	if code != 200 {
		t.Fatalf("POST /prompt to replica 1 = %d %s", code, body)
	}
	var accepted struct {
		PromptID string `json:"prompt_id"`
	}
	if err := json.Unmarshal(body, &accepted); err != nil || accepted.PromptID == "" {
		t.Fatalf("POST /prompt answer %s: %v", body, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for finished := false; !finished; {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("replica 2's socket before the prompt of replica 1 ended: %v", err)
		}
		var msg struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
			} `json:"data"`
		}
		if kind == websocket.TextMessage && json.Unmarshal(data, &msg) == nil {
			finished = msg.Type == "execution_success" && msg.Data.PromptID == accepted.PromptID
		}
	}

	// Its history and its image, through replica 2.
	type image struct{ Filename, Subfolder, Type string }
	var images []image
	testkit.Poll(20*time.Second, func() bool {
		_, hist := httpDo(t, "GET", two+"/history/"+accepted.PromptID, nil)
		var h map[string]struct {
			Outputs map[string]struct {
				Images []image `json:"images"`
			} `json:"outputs"`
		}
		if json.Unmarshal(hist, &h) != nil {
			return false
		}
		for _, o := range h[accepted.PromptID].Outputs {
			images = append(images, o.Images...)
		}
		return len(images) > 0
	})
	if len(images) != 1 {
		t.Fatalf("replica 2's history of %s never listed the image", accepted.PromptID)
	}
	code, pngBytes := httpDo(t, "GET", two+"/view?filename="+images[0].Filename+"&subfolder="+images[0].Subfolder+"&type="+images[0].Type, nil)
	if code != 200 {
		t.Fatalf("/view through replica 2 = %d", code)
	}
	img, err := png.Decode(bytes.NewReader(pngBytes))
	if err != nil {
		t.Fatalf("/view through replica 2 is not a PNG: %v", err)
	}
	if r, g, b, _ := img.At(10, 10).RGBA(); r>>8 != 0xED || g>>8 != 0xCB || b>>8 != 0xA9 {
		t.Fatalf("pixel = %02x%02x%02x, want edcba9", r>>8, g>>8, b>>8)
	}

	// The front hands each new connection to the next replica.
	before := []int{queueRequests(t, one), queueRequests(t, two)}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 4 {
		resp, err := client.Get(front + "/queue")
		if err != nil {
			t.Fatalf("GET /queue through the front: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /queue through the front = %d", resp.StatusCode)
		}
	}
	var got []int
	testkit.Poll(5*time.Second, func() bool {
		got = []int{queueRequests(t, one) - before[0], queueRequests(t, two) - before[1]}
		return got[0]+got[1] == 4
	})
	if fmt.Sprint(got) != "[2 2]" {
		t.Fatalf("4 connections to the front reached the replicas %v, want [2 2]", got)
	}

	d.stopWithin(t, 2*shutdownGrace+5*time.Second)
	if c, err := net.DialTimeout("tcp", redisAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the demo's redis-server at %s still answers after the demo ended", redisAddr)
	}
}

// TestDemoReplicasWithoutRedisSaysHowToInstallIt: with no redis-server on
// the PATH, -replicas 2 exits with an error saying how to install it.
func TestDemoReplicasWithoutRedisSaysHowToInstallIt(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := run(context.Background(), []string{"demo", "-replicas", "2", "-listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "redis-server") || !strings.Contains(err.Error(), "apt-get install redis-server") {
		t.Fatalf("demo -replicas 2 without redis-server = %v, want an error saying how to install it", err)
	}
	if err := run(context.Background(), []string{"demo", "-replicas", "0"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "-replicas 0") {
		t.Fatalf("demo -replicas 0 = %v, want an error naming the flag", err)
	}
}
