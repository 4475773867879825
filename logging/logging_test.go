package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lines decodes each JSON line of b.
func lines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %v: %q", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStdoutJSONByDefault(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, closer, err := New(Config{Stdout: &buf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closer.Close() })
	log.Debug("hidden")
	log.Info("request", "method", "GET", "status", 200)
	got := lines(t, buf.Bytes())
	if len(got) != 1 {
		t.Fatalf("want 1 line at info level, got %d: %s", len(got), buf.Bytes())
	}
	if got[0]["service"] != Service || got[0]["msg"] != "request" || got[0]["status"] != 200.0 {
		t.Errorf("line: %v", got[0])
	}
}

func TestLevelsAndFormats(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc    string
		cfg     Config
		want    string // substring of the output
		wantErr bool
	}{
		{desc: "text format", cfg: Config{Format: "text"}, want: "service=comfygate"},
		{desc: "TEXT upper case", cfg: Config{Format: "TEXT", Level: "DEBUG"}, want: "level=INFO"},
		{desc: "warn hides info", cfg: Config{Level: "warn"}, want: ""},
		{desc: "bad level", cfg: Config{Level: "verbose"}, wantErr: true},
		{desc: "bad format", cfg: Config{Format: "xml"}, wantErr: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			tc.cfg.Stdout = &buf
			log, closer, err := New(tc.cfg)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer closer.Close()
			log.Info("hello")
			if tc.want == "" {
				if buf.Len() != 0 {
					t.Errorf("want no output, got %q", buf.String())
				}
				return
			}
			if !strings.Contains(buf.String(), tc.want) {
				t.Errorf("output %q lacks %q", buf.String(), tc.want)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "logs") // New creates it
	log, closer, err := New(Config{Directory: dir, Stdout: io.Discard, Level: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CombinedFile, ErrorFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s not created at start-up: %v", name, err)
		}
	}
	child := log.With("instance", "a")
	child.Debug("dbg")
	child.Info("info")
	child.Warn("warn")
	child.Error("boom", Err(errors.New("x")))
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}

	combined := lines(t, readFile(t, filepath.Join(dir, CombinedFile)))
	if len(combined) != 4 {
		t.Fatalf("combined.log: want 4 lines, got %d", len(combined))
	}
	errs := lines(t, readFile(t, filepath.Join(dir, ErrorFile)))
	if len(errs) != 1 || errs[0]["msg"] != "boom" || errs[0]["level"] != "ERROR" {
		t.Fatalf("error.log: want only the error line, got %v", errs)
	}
	for _, l := range append(combined, errs...) {
		if l["service"] != Service || l["instance"] != "a" {
			t.Errorf("line lacks service or instance: %v", l)
		}
	}
}

func TestRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log, closer, err := New(Config{Directory: dir, Stdout: io.Discard, MaxSizeMB: 1, MaxBackups: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closer.Close() })

	// Just over 1 MB in 16 KiB lines rotates combined.log by size.
	pad := strings.Repeat("x", 16<<10)
	for range 70 {
		log.Info("fill", "pad", pad)
	}
	count := func(prefix string) (n int) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix+"-") && strings.HasSuffix(e.Name(), ".log") {
				n++
			}
		}
		return n
	}
	if n := count("combined"); n < 1 {
		t.Errorf("combined.log not rotated by size after >1 MB")
	}
	if n := count("error"); n != 0 {
		t.Errorf("error.log rotated before Rotate: %d", n)
	}
	// Rotate (SIGHUP) rotates both files, error.log too.
	log.Error("before rotate")
	if err := closer.(interface{ Rotate() error }).Rotate(); err != nil {
		t.Fatal(err)
	}
	log.Error("after rotate")

	if n := count("error"); n != 1 {
		t.Errorf("error.log rotated %d times, want 1", n)
	}
	if got := lines(t, readFile(t, filepath.Join(dir, ErrorFile))); len(got) != 1 || got[0]["msg"] != "after rotate" {
		t.Errorf("current error.log: %v", got)
	}
	info, err := os.Stat(filepath.Join(dir, CombinedFile))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() > 1<<20 {
		t.Errorf("combined.log is %d bytes, over MaxSize", info.Size())
	}
}

func TestBadDirectoryFailsFast(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := New(Config{Directory: filepath.Join(file, "logs"), Stdout: io.Discard}); err == nil {
		t.Fatal("want an error for a directory under a regular file")
	}
}

type codeErr struct{ code int }

func (e *codeErr) Error() string { return fmt.Sprintf("status %d", e.code) }

func TestErrChain(t *testing.T) {
	t.Parallel()
	root := &codeErr{502}
	wrapped := fmt.Errorf("forward prompt to a: %w", fmt.Errorf("read response: %w", root))
	joined := errors.Join(wrapped, fs.ErrNotExist)

	for _, tc := range []struct {
		desc      string
		err       error
		wantType  string
		wantChain []string
	}{
		{desc: "plain", err: root, wantType: "*logging.codeErr"},
		{desc: "wrapped", err: wrapped, wantType: "*fmt.wrapError", wantChain: []string{
			"*fmt.wrapError: read response: status 502",
			"*logging.codeErr: status 502",
		}},
		{desc: "joined", err: joined, wantType: "*errors.joinError", wantChain: []string{
			"*fmt.wrapError: forward prompt to a: read response: status 502",
			"*fmt.wrapError: read response: status 502",
			"*logging.codeErr: status 502",
			"*errors.errorString: file does not exist",
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			log, _, err := New(Config{Stdout: &buf})
			if err != nil {
				t.Fatal(err)
			}
			log.Error("failed", Err(tc.err))
			got := lines(t, buf.Bytes())[0]["error"].(map[string]any)
			if got["msg"] != tc.err.Error() || got["type"] != tc.wantType {
				t.Errorf("error attr: %v", got)
			}
			var chain []string
			if c, ok := got["chain"].([]any); ok {
				for _, s := range c {
					chain = append(chain, s.(string))
				}
			}
			if fmt.Sprint(chain) != fmt.Sprint(tc.wantChain) {
				t.Errorf("chain:\n got %q\nwant %q", chain, tc.wantChain)
			}
		})
	}
}

func TestErrNil(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, _, _ := New(Config{Stdout: &buf})
	log.Info("ok", Err(nil))
	if strings.Contains(buf.String(), "error") {
		t.Errorf("nil error logged: %s", buf.String())
	}
}
