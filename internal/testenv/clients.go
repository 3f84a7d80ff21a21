//go:build linux

package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Environment variables that turn the test binary into a client.
const (
	helperEnv     = "ZTDNS_TESTENV_HELPER"
	helperNameEnv = "ZTDNS_TESTENV_NAME"
)

// RunHelper makes the test binary act as a client when GoLookup,
// ControlCallAsUser, StalledReadersAsUser, ConnectFloodAsUser or StartFlood started it (or as
// a server, when ListenAsUser did; or as the wrapper WithoutNetnsCookie
// names); call it
// first in TestMain. It returns when the binary runs as tests.
func RunHelper() {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "go-lookup":
		os.Exit(goLookup(os.Getenv(helperNameEnv)))
	case "control-call":
		os.Exit(controlCall())
	case "control-listen":
		os.Exit(controlListen())
	case "stalled-readers":
		os.Exit(stalledReaders())
	case "flood":
		os.Exit(flood())
	case "connect-flood":
		os.Exit(connectFlood())
	case "without-netns-cookie":
		os.Exit(withoutNetnsCookie(os.Args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// goLookup resolves name with Go's own resolver (not cgo), which reads
// resolv.conf itself and uses connected UDP sockets, then TCP on
// truncation.
func goLookup(name string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return 0
}

// GoLookup prepares the test binary, running Go's resolver for name (see
// RunHelper), inside the namespace and cgroup.
func (n *Netns) GoLookup(ctx context.Context, cg *Cgroup, name string) *exec.Cmd {
	cmd := n.Command(ctx, cg, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=go-lookup", helperNameEnv+"="+name)
	return cmd
}

// BuildMuslGetaddrinfo compiles testdata/getaddrinfo.c statically with musl-gcc
// and returns the binary: `BIN NAME [inet|inet6|any]` prints the addresses.
func BuildMuslGetaddrinfo(tb testing.TB) string {
	tb.Helper()
	cc := LookPath(tb, "musl-gcc")
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("testenv: cannot locate testdata/getaddrinfo.c")
	}
	src := filepath.Join(filepath.Dir(self), "testdata", "getaddrinfo.c")
	bin := filepath.Join(tb.TempDir(), "getaddrinfo-musl")
	out, err := exec.Command(cc, "-static", "-O2", "-Wall", "-o", bin, src).CombinedOutput()
	if err != nil {
		tb.Fatalf("musl-gcc: %v\n%s", err, out)
	}
	return bin
}

// Client prepares a stub resolver's command that looks up name from inside
// the pod and, with a cgroup, inside the cgroup.
type Client func(ctx context.Context, p *Pod, cg *Cgroup, name string) *exec.Cmd

// CommandClient is a Client that runs bin with args and then the name
// (getent, dig, BuildMuslGetaddrinfo's binary).
func CommandClient(bin string, args ...string) Client {
	return func(ctx context.Context, p *Pod, cg *Cgroup, name string) *exec.Cmd {
		return p.Command(ctx, cg, bin, slices.Concat(args, []string{name})...)
	}
}

// GoClient is a Client that runs Go's own resolver (see GoLookup).
func GoClient(ctx context.Context, p *Pod, cg *Cgroup, name string) *exec.Cmd {
	return p.GoLookup(ctx, cg, name)
}

// ParseAddrs returns every IP address among the whitespace-separated words
// a client printed, in order, each once.
func ParseAddrs(out string) []netip.Addr {
	var addrs []netip.Addr
	for _, w := range strings.Fields(out) {
		if a, err := netip.ParseAddr(w); err == nil && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs
}
