//go:build linux

// Package testenv builds the test topology of README.md ("The two
// commands") on the running kernel: a "node" network namespace, pod
// network namespaces wired to it with veth pairs and their own
// resolv.conf, a child cgroup v2 for the processes under test, a private
// bpffs mount, dnstest servers listening inside a namespace, `ztdns agent`
// processes, and real client commands run inside a pod and the cgroup. Everything is removed with tb.Cleanup, also
// when the test fails, and every name is unique so tests can run in
// parallel.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Unavailable stops a test that cannot run here because something it needs
// is missing: a failure when CI=true (CI must run every test), a skip with
// the reason otherwise.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		tb.Fatalf("required in CI: %s", msg)
	}
	tb.Skipf("skipping: %s (with CI=true this fails)", msg)
}

// RequireRoot stops the test unless it runs as root (network namespaces,
// cgroups, BPF and mounts all need it).
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "needs root")
	}
}

// LookPath returns the path of a binary the test needs.
func LookPath(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(tb, "needs %s in PATH: %v", name, err)
	}
	return p
}

// UniqueName returns prefix plus a random suffix, short enough for an
// interface name when prefix is at most 6 bytes.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return prefix + hex.EncodeToString(b[:])
}

// run executes a setup command and fails the test with its output.
func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// runCleanup executes a teardown command and reports, not stops, a failure.
func runCleanup(tb testing.TB, name string, args ...string) {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Errorf("cleanup: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
