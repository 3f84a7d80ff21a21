//go:build linux

// Package e2e proves DNS capture end to end with the real ztdns binary: it
// is built once per test binary, runs as `ztdns agent` in a node network
// namespace exactly as a user starts it, and pods made of network namespaces
// are marked with `ztdns capture add`. Real clients (glibc, musl, Go, dig)
// resolve from inside those pods; the tests kill, stop and restart the
// agent under load and read the pinned maps with bpftool.
//
// Run as root: CI=true go test ./test/e2e/ (without root or a needed tool
// the tests skip, or fail under CI=true).
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// helperEnv turns the test binary into one of this package's clients (see
// runHelper); testenv has its own for the Go resolver client.
const helperEnv = "ZTDNS_E2E_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h, os.Args[1:]))
	}
	testenv.RunHelper()
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}

// runHelper runs the client named by helperEnv inside a pod.
func runHelper(name string, args []string) int {
	switch name {
	case "dnsloop":
		return dnsLoop(args)
	case "kept":
		return keptSocket()
	}
	fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, name)
	return 2
}

// ztdnsBinary is ./cmd/ztdns, built once per test binary (removed by
// TestMain).
func ztdnsBinary(tb testing.TB) string {
	tb.Helper()
	return testenv.Build(tb, "github.com/ztdns/ztdns/cmd/ztdns")
}
