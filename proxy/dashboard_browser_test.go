package proxy_test

// The dashboard in a real browser: Debian's chromium, driven by chromedp,
// in front of a gateway and two simulated instances.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// chromium returns the browser's path. Without one the test is skipped,
// unless CI is set: CI installs chromium (.ci/run), so there a missing
// browser is a failure, not a silent pass.
func chromium(t *testing.T) string {
	t.Helper()
	return testkit.Tool(t, "chromium", "the dashboard's browser test needs it", "chromium", "chromium-browser", "google-chrome")
}

// browser starts a headless chromium for the test and returns a tab's
// context, bounded by limit.
func browser(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	path := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // loopback pages of the test only; root in containers cannot sandbox
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, limit)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	return ctx
}

// pageText returns the text of the first element matching sel ("" when none).
func pageText(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.textContent : ""; })()`, sel)
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
	if err != nil {
		t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

// screenshot writes a full-page screenshot to $DASHBOARD_SCREENSHOTS/name
// when that variable names a directory (to look at the page; never kept).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("DASHBOARD_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// upscale is a prompt whose upscale node runs for the simulator's Delay,
// reporting progress in Steps steps.
func upscale(color int) map[string]any {
	return map[string]any{"prompt": map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": "RealESRGAN_x2plus.pth"}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"3", 0}}},
	}}
}

func TestDashboardInBrowser(t *testing.T) {
	start := time.Now()
	ctx := browser(t, 2*time.Minute)
	st := stack.Start(t, stack.Options{
		Jobs: true,
		// Long enough to be seen running; progress in 8 steps.
		Sim: comfysim.Options{Delay: 4 * time.Second, Steps: 8},
		Config: func(c *config.Config) {
			c.Instances[0].Labels = map[string]string{"gpu": "rtx4090", "pool": "flux"}
			c.Instances[1].Labels = map[string]string{"gpu": "a4000"}
		},
	})
	names := st.Names()
	card := func(name, field string) string {
		return fmt.Sprintf(`article[data-instance=%q] [data-field=%q]`, name, field)
	}

	// Both instances listed, healthy.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(st.URL+"/dashboard"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`article[data-instance=%q]`, names[0]))),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`article[data-instance=%q]`, names[1]))),
	); err != nil {
		t.Fatalf("the dashboard did not list %v: %v", names, err)
	}
	for _, n := range names {
		if got := pageText(t, ctx, card(n, "health")); got != "healthy" {
			t.Errorf("%s shows health %q, want healthy", n, got)
		}
	}
	if got := pageText(t, ctx, `#conn-text`); got != "live" {
		t.Errorf("connection shows %q, want live", got)
	}

	// Drain the second through its button (the admin route): the page shows
	// it drained within a second of the click, measured in the page.
	drainJS := fmt.Sprintf(`new Promise((resolve, reject) => {
		const sel = %q;
		const t0 = performance.now();
		document.querySelector(%q).click();
		const check = () => {
			const e = document.querySelector(sel);
			if (e && e.textContent === "drained") { resolve(performance.now() - t0); return; }
			if (performance.now() - t0 > 1000) { reject(new Error("not drained after 1 s: " + (e ? e.textContent : "no badge"))); return; }
			requestAnimationFrame(check);
		};
		check();
	})`, card(names[1], "drain"), fmt.Sprintf(`article[data-instance=%q] button[data-action="drain"]`, names[1]))
	waited, err := chromedp.Run(ctx, chromedp.Evaluate[float64](drainJS, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("drain %s: %v", names[1], err)
	}
	if !st.Instance(names[1]).Status().Draining {
		t.Fatalf("%s is not draining after its Drain button", names[1])
	}
	testkit.Eventually(t, "the page to confirm the drain", func() bool {
		return strings.Contains(pageText(t, ctx, `#notice`), "drain "+names[1]+": done")
	})
	t.Logf("drained shown %.0f ms after the click", waited)

	// A prompt with run time goes to the first (the second is drained); the
	// page shows it running there with its progress.
	body, _ := json.Marshal(upscale(7))
	resp, err := http.Post(st.URL+"/prompt", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		PromptID string `json:"prompt_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || ans.PromptID == "" {
		t.Fatalf("POST /prompt: %d %v %q", resp.StatusCode, err, ans.PromptID)
	}
	running := card(names[0], "running")
	var last string
	testkit.Eventually(t, "the dashboard shows the prompt running with progress on "+names[0], func() bool {
		last = pageText(t, ctx, running)
		return strings.HasPrefix(last, "running "+ans.PromptID[:8]) && strings.Contains(last, "/8")
	})
	t.Logf("running line: %q", last)
	screenshot(t, ctx, "dashboard-desktop.png")

	// At a phone's width, nothing is wider than the screen.
	var widths []int
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`article[data-instance=%q]`, names[1]))),
	); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the dashboard laid out at 390 px", func() bool {
		var err error
		widths, err = chromedp.Run(ctx, chromedp.Evaluate[[]int](`[document.documentElement.scrollWidth, window.innerWidth]`))
		if err != nil {
			t.Fatal(err)
		}
		return len(widths) == 2 && widths[1] == 390
	})
	if widths[0] > widths[1] {
		t.Errorf("at 390x844 the page is %d px wide for a %d px screen", widths[0], widths[1])
	}
	for _, n := range names {
		if pageText(t, ctx, fmt.Sprintf(`article[data-instance=%q] .name`, n)) != n {
			t.Errorf("%s missing at phone width", n)
		}
	}
	screenshot(t, ctx, "dashboard-phone.png")
	t.Logf("browser test ran %v", time.Since(start).Round(time.Millisecond))
}
