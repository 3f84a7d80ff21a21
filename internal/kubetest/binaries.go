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

	"github.com/ztdns/ztdns/internal/testenv"
)

// buildScript is the script, relative to the repo root, that builds and
// caches kube-apiserver and etcd.
const buildScript = "scripts/build-kube.sh"

// coldBuildBudget is how much test time a cold build of kube-apiserver needs
// on a 2-core machine (about 12 minutes), with a margin.
const coldBuildBudget = 20 * time.Minute

// errNotBuilt says cached binaries are missing and were not built.
var errNotBuilt = errors.New("not built")

// binaries are the server executables an Env runs.
type binaries struct {
	apiserver string
	etcd      string
}

// requireBuilt ends the test when a cached helper could not be had (not
// built in time, or its build failed: no network, say): a failure under
// CI=true, a skip with the reason outside CI, as testenv.Unavailable does
// for every missing tool.
func requireBuilt(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		testenv.Unavailable(tb, "kubetest: %v", err)
	}
}

// requireBinaries returns the binaries from findBinaries, and ends the test
// when there are none: a failure under CI=true, a skip outside CI.
func requireBinaries(tb testing.TB) binaries {
	tb.Helper()
	bins, err := findBinaries(tb)
	requireBuilt(tb, err)
	return bins
}

// findBinaries returns the cached binaries, building them first with
// scripts/build-kube.sh when they are missing or stale.
func findBinaries(tb testing.TB) (binaries, error) {
	tb.Helper()
	dir, err := cachedBuild(tb, buildScript, "kube-apiserver and etcd", "about 12 minutes", coldBuildBudget)
	if err != nil {
		return binaries{}, err
	}
	return binaries{
		apiserver: filepath.Join(dir, "kube-apiserver"),
		etcd:      filepath.Join(dir, "etcd"),
	}, nil
}

// cachedBuild returns the directory a scripts/build-*.sh script caches its
// build in, running the script first when the build is missing or stale
// (what, took and budget name the build, how long it takes and how much
// test time it needs, for the log and errors). A build that would outlive
// the test's deadline is an error wrapping errNotBuilt.
func cachedBuild(tb testing.TB, script, what, took string, budget time.Duration) (string, error) {
	tb.Helper()
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	path := filepath.Join(root, script)
	check := exec.Command("bash", path, "--check")
	var checkErr bytes.Buffer
	check.Stderr = &checkErr
	out, err := check.Output()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		// Cached and current.
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 3:
		if err := runBuild(tb, path, script, what, took, budget); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("%s --check: %w: %s", script, err, checkErr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// runBuild runs a build script, streaming its progress to the test log.
func runBuild(tb testing.TB, path, script, what, took string, budget time.Duration) error {
	tb.Helper()
	if d, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok && time.Until(deadline) < budget {
			return fmt.Errorf("%w: %s, and a cold build (%s) would outlive this test's deadline: "+
				"run %s first, or go test with a longer -timeout", errNotBuilt, what, took, script)
		}
	}
	tb.Logf("%s not in the cache: running %s, a cold build takes %s", what, script, took)
	cmd := exec.Command("bash", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("%s: %w", script, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", script, err)
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
		return fmt.Errorf("%s: %w:\n%s", script, err, strings.Join(last, "\n"))
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
