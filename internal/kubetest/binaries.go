package kubetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildScript is the script, relative to the repo root, that builds and
// caches kube-apiserver and etcd.
const buildScript = "scripts/build-kube.sh"

// coldBuildBudget is how much test time a cold build of kube-apiserver needs
// on a 2-core machine (about 12 minutes), with a margin.
const coldBuildBudget = 20 * time.Minute

// errNotBuilt says the binaries are missing and were not built.
var errNotBuilt = errors.New("kube-apiserver and etcd are not built")

// binaries are the server executables an Env runs.
type binaries struct {
	apiserver string
	etcd      string
}

// requireBinaries returns the binaries from findBinaries, and ends the test
// when there are none: a failure under CI=true, a skip outside CI when they
// were only not built.
func requireBinaries(tb testing.TB) binaries {
	tb.Helper()
	bins, err := findBinaries(tb)
	if errors.Is(err, errNotBuilt) && os.Getenv("CI") != "true" {
		tb.Skipf("kubetest: %v", err)
	}
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return bins
}

// findBinaries returns the cached binaries, building them first with
// scripts/build-kube.sh when they are missing or stale.
func findBinaries(tb testing.TB) (binaries, error) {
	tb.Helper()
	root, err := repoRoot()
	if err != nil {
		return binaries{}, err
	}
	script := filepath.Join(root, buildScript)

	check := exec.Command("bash", script, "--check")
	var checkErr bytes.Buffer
	check.Stderr = &checkErr
	out, err := check.Output()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		// Cached and current.
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 3:
		if err := buildBinaries(tb, script); err != nil {
			return binaries{}, err
		}
	default:
		return binaries{}, fmt.Errorf("%s --check: %w: %s", buildScript, err, checkErr.String())
	}
	dir := strings.TrimSpace(string(out))
	return binaries{
		apiserver: filepath.Join(dir, "kube-apiserver"),
		etcd:      filepath.Join(dir, "etcd"),
	}, nil
}

// buildBinaries runs the build script, streaming its progress to the test log.
func buildBinaries(tb testing.TB, script string) error {
	tb.Helper()
	if d, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok && time.Until(deadline) < coldBuildBudget {
			return fmt.Errorf("%w, and a cold build (~12 min) would outlive this test's deadline: "+
				"run %s first, or go test with -timeout 30m", errNotBuilt, buildScript)
		}
	}
	tb.Logf("kube-apiserver and etcd are not in the cache: running %s, a cold build takes about 12 minutes", buildScript)
	cmd := exec.Command("bash", script)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("%s: %w", buildScript, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", buildScript, err)
	}
	var last []string // the build's last lines, for the error message
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		tb.Log(lines.Text())
		last = append(last, lines.Text())
		if len(last) > 20 {
			last = last[1:]
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s: %w:\n%s", buildScript, err, strings.Join(last, "\n"))
	}
	return nil
}

// repoRoot walks up from the working directory (a test's package directory)
// to the directory that holds the build script.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, buildScript)); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("find repo root: no %s above %s", buildScript, dir)
		}
	}
}
