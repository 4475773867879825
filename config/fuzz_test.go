package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad: any configuration file either loads into a configuration that
// validates, or fails with an error; it never panics.
func FuzzLoad(f *testing.F) {
	if data, err := os.ReadFile("../config.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("listen: 127.0.0.1:1\ninstances: [{address: 'http://a:1'}]\nlimits: {max_body_bytes: -1}\n"))
	f.Add([]byte("auth: {keys_file: x, allowed_origins: [evil]}\nrate_limit: {prompts_per_second: -1}\n"))
	f.Add([]byte("timeout: 5\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path, []string{})
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a configuration that does not validate: %v", err)
		}
	})
}
