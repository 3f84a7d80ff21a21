//go:build linux

package cnie2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// buildScript builds and caches the reference CNI plugins; relative to the
// repository root.
const buildScript = "scripts/build-cni-plugins.sh"

// binaryEnv names a prebuilt ztdns binary to test instead of building
// ./cmd/ztdns (e.g. bin/ztdns from `make build`); it must be built from the
// tree under test.
const binaryEnv = "ZTDNS_CNI_TEST_BINARY"

// referencePlugins are the plugins of containernetworking/plugins a runtime
// chains ztdns after.
var referencePlugins = []string{"bridge", "host-local", "loopback"}

// shared holds what every test of the package uses and checks or builds
// once: the ztdns binary (removed by TestMain) and the reference plugins'
// directory.
var shared struct {
	ztdnsOnce sync.Once
	ztdnsErr  error

	pluginsOnce sync.Once
	plugins     string
	pluginsErr  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}

// ztdnsBinary returns the ztdns binary under test: the one binaryEnv names,
// or ./cmd/ztdns built once per run. It checks once that the binary acts as
// a CNI plugin when a runtime runs it.
func ztdnsBinary(tb testing.TB) string {
	tb.Helper()
	bin := os.Getenv(binaryEnv)
	if bin == "" {
		bin = testenv.Build(tb, "github.com/ztdns/ztdns/cmd/ztdns")
	}
	shared.ztdnsOnce.Do(func() { shared.ztdnsErr = checkActsAsPlugin(bin) })
	if shared.ztdnsErr != nil {
		tb.Fatal(shared.ztdnsErr)
	}
	return bin
}

// checkActsAsPlugin runs bin the way a runtime asks a plugin for its
// versions.
func checkActsAsPlugin(bin string) error {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var info struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil || len(info.SupportedVersions) == 0 {
		return fmt.Errorf("%s does not act as a CNI plugin when CNI_COMMAND is set "+
			"(cmd/ztdns/main.go must call cni.PluginMain() then): VERSION gave %v, stdout %q, stderr %q",
			bin, runErr, stdout.String(), stderr.String())
	}
	return nil
}

// pluginsDir returns the directory of the reference plugins, built once by
// scripts/build-cni-plugins.sh (a no-op when they are cached). A machine
// that cannot build them fails the test in CI and skips it elsewhere.
func pluginsDir(tb testing.TB) string {
	tb.Helper()
	shared.pluginsOnce.Do(func() { shared.plugins, shared.pluginsErr = buildPlugins(tb) })
	if shared.pluginsErr != nil {
		testenv.Unavailable(tb, "reference CNI plugins: %v", shared.pluginsErr)
	}
	return shared.plugins
}

func buildPlugins(tb testing.TB) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, buildScript)
	check := exec.Command("bash", script, "--check")
	out, err := check.Output()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 3:
		tb.Logf("the reference CNI plugins are not cached: running %s (about 30 s)", buildScript)
		build := exec.Command("bash", script)
		var stderr bytes.Buffer
		build.Stderr = &stderr
		if out, err = build.Output(); err != nil {
			return "", fmt.Errorf("%s: %w\n%s", buildScript, err, stderr.String())
		}
	default:
		return "", fmt.Errorf("%s --check: %w", buildScript, err)
	}
	dir := strings.TrimSpace(string(out))
	for _, p := range referencePlugins {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return "", fmt.Errorf("%s printed %s, which lacks %s: %w", buildScript, dir, p, err)
		}
	}
	return dir, nil
}

// repoRoot walks up from the package directory to the one holding the
// build script.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, buildScript)); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no %s above %s", buildScript, dir)
		}
	}
}
