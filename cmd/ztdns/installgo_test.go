//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// installGo runs scripts/install-go.sh into dest with a fake go reporting
// goVersion and a fake curl that downloads "not a zip" (and records that
// it ran) first on PATH, so nothing leaves the machine. It returns the
// script's output, whether it succeeded, and whether curl ran.
func installGo(t *testing.T, dest, goVersion string) (out string, ok, downloaded bool) {
	t.Helper()
	testenv.LookPath(t, "bash")
	bin := t.TempDir()
	marker := filepath.Join(bin, "downloaded")
	fakes := map[string]string{
		"go": "#!/bin/sh\n[ \"$1 $2\" = 'env GOVERSION' ] && echo go" + goVersion + "\n",
		// curl ... -o FILE URL
		"curl": "#!/bin/sh\ntouch " + marker + "\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo 'not a zip' >\"$2\"; shift; done\n",
	}
	for name, script := range fakes {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("../../scripts/install-go.sh", dest)
	cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin")
	b, err := cmd.CombinedOutput()
	_, statErr := os.Stat(marker)
	return string(b), err == nil, statErr == nil
}

// TestInstallGoScript: README.md's Set-up installs Go with
// scripts/install-go.sh, which leaves a recent enough go alone and refuses
// a download whose sha256 is not the pinned one, leaving nothing behind.
func TestInstallGoScript(t *testing.T) {
	t.Run("recent enough", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "go")
		out, ok, downloaded := installGo(t, dest, "1.99.0")
		if !ok || downloaded || !strings.Contains(out, "nothing to install") {
			t.Errorf("with go 1.99.0 in PATH: succeeded %v, downloaded %v, output:\n%s", ok, downloaded, out)
		}
	})
	t.Run("wrong sum", func(t *testing.T) {
		parent := t.TempDir()
		out, ok, downloaded := installGo(t, filepath.Join(parent, "go"), "1.20")
		if ok || !downloaded || !strings.Contains(out, "is go 1.20, not go.mod's") || !strings.Contains(out, "not installing it") {
			t.Errorf("with go 1.20 in PATH and a download of the wrong sum: succeeded %v, downloaded %v, output:\n%s", ok, downloaded, out)
		}
		if left, _ := os.ReadDir(parent); len(left) > 0 {
			t.Errorf("left behind in the destination's directory: %v", left)
		}
	})
}
