package deploy

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/comfygate/comfygate/config"
)

// loadCompose loads a compose file the way `docker compose` does
// (compose-go: schema validation, interpolation, merge of anchors and
// extends, consistency checks), with an empty environment.
func loadCompose(t *testing.T, path string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithName("comfygate"),
		cli.WithEnv([]string{}),
		cli.WithInterpolation(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// TestComposeFilesLoadWithComposeGo: both compose files load with the
// library docker compose itself uses, so a file Docker would reject fails
// here even where no Docker engine runs.
func TestComposeFilesLoadWithComposeGo(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"docker-compose.yml", "docker-compose.demo.yml"} {
		p, err := loadCompose(t, f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, name := range []string{"comfygate", "comfyui-0", "comfyui-1"} {
			if _, err := p.GetService(name); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
		gw, err := p.GetService("comfygate")
		if err != nil {
			continue
		}
		if len(gw.Ports) != 1 || gw.Ports[0].Target != 8188 {
			t.Errorf("%s: comfygate ports %+v, want one published to 8188", f, gw.Ports)
		}
		// The environment compose hands comfygate is a valid configuration.
		var env []string
		for k, v := range gw.Environment {
			if v != nil {
				env = append(env, k+"="+*v)
			}
		}
		if _, err := config.Load("", env); err != nil {
			t.Errorf("%s: comfygate rejects its environment: %v", f, err)
		}
	}
}

// TestComposeGoRejectsABrokenFile shows the check can fail: a key Docker
// does not know, or a service mounting an undeclared volume.
func TestComposeGoRejectsABrokenFile(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		"services:\n  a:\n    image: x\n    imagee: y\n",
		"services:\n  a:\n    image: x\n    volumes: [\"missing:/data\"]\n",
	} {
		path := filepath.Join(t.TempDir(), "compose.yml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadCompose(t, path); err == nil {
			t.Errorf("compose-go accepted %q", body)
		}
	}
}

// TestComposeDrainExample: the drain commands in docker-compose.yml name
// an instance comfygate has with the compose file's environment, and use
// the admin routes comfygate serves.
func TestComposeDrainExample(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`/admin/instances/([^/\s]+)/(drain|undrain)`)
	m := re.FindAllStringSubmatch(string(data), -1)
	if len(m) < 2 {
		t.Fatal("docker-compose.yml shows no drain and undrain")
	}
	p, err := loadCompose(t, "docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	gw, _ := p.GetService("comfygate")
	var env []string
	for k, v := range gw.Environment {
		if v != nil {
			env = append(env, k+"="+*v)
		}
	}
	cfg, err := config.Load("", env)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, in := range cfg.Instances {
		names = append(names, in.Name)
	}
	for _, x := range m {
		if !slices.Contains(names, x[1]) {
			t.Errorf("drain example names %q; comfygate's instances are %v", x[1], names)
		}
	}
	if !strings.Contains(string(data), "docker compose stop comfyui-0") || !strings.Contains(string(data), ".drained") {
		t.Error("the drain example does not wait for drained before docker compose stop")
	}
}
