package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
)

// uploadTo posts an image to a ComfyUI's /upload/image and returns the name it kept.
func uploadTo(t *testing.T, baseURL, name string, data []byte) string {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", name)
	_, _ = fw.Write(data)
	_ = mw.Close()
	resp, err := http.Post(baseURL+"/upload/image", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res struct{ Name string }
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&res) != nil {
		t.Fatalf("upload: status %d", resp.StatusCode)
	}
	return res.Name
}

func getView(t *testing.T, baseURL, query string) []byte {
	t.Helper()
	resp, err := http.Get(baseURL + "/view?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/view?%s: status %d", query, resp.StatusCode)
	}
	return b
}

func TestEnsureInputsBetweenSimulators(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	b := testkit.Sim(t, comfysim.Options{Version: "0.3.40"})
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ia, ib := p.Instances()[0], p.Instances()[1]

	img := simPNG(t, a)
	name := uploadTo(t, a.URL(), "upload_test.png", img)
	p.PinFile(FileRef{Filename: name, Type: "input"}, ia) // what the proxy does after an upload
	if err := p.EnsureInputs(context.Background(), ib, loadImagePrompt(name)); err != nil {
		t.Fatal(err)
	}
	if got := getView(t, b.URL(), "type=input&filename="+name); !bytes.Equal(got, img) {
		t.Fatalf("b serves %d bytes, want the %d uploaded to a", len(got), len(img))
	}
}

// simPNG returns a real PNG: the simulator's own output of an EmptyImage
// is not needed, any PNG bytes the simulator accepts will do.
func simPNG(t *testing.T, _ *comfysim.Server) []byte {
	t.Helper()
	// 1x1 transparent PNG.
	return []byte{
		0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
		0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
		0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
		0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
		0x42, 0x60, 0x82,
	}
}

func TestFileOwnerProbesSimulators(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	b := testkit.Sim(t, comfysim.Options{})
	if err := os.MkdirAll(filepath.Join(b.OutputDir(), "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.OutputDir(), "sub", "only_b.png"), simPNG(t, b), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	got, ok := p.FileOwner(context.Background(), FileRef{Filename: "only_b.png", Subfolder: "sub", Type: "output"})
	if !ok || got != p.Instances()[1] {
		t.Fatalf("FileOwner = %v %v, want b", got, ok)
	}
}

func TestSimulatorKilledIsConfirmedDeadAndComesBack(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{Version: "0.3.40"})
	p := newCorePool(t, coreConfig(a.Addr()), true)
	inst := p.Instances()[0]
	if !inst.State().Healthy() || inst.Version() != "0.3.40" || inst.SupportsClientPromptID() {
		t.Fatalf("after start: healthy %v version %q", inst.State().Healthy(), inst.Version())
	}
	a.Kill()
	start := time.Now()
	p.SocketLost(inst)
	testkit.Eventually(t, "confirmed dead", func() bool { return !inst.State().Healthy() })
	t.Logf("killed instance confirmed dead in %v", time.Since(start))
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	p.SocketRestored(inst)
	testkit.Eventually(t, "healthy again", func() bool { return inst.State().Healthy() })
}
