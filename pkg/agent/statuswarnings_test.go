package agent

import (
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestStatusWarningsMostPressingFirst: an agent with every warning of its
// own at once lists them in `ztdns status` most pressing first (which
// shows five without -o wide): the CNI plugin not installed (pods that
// start now go uncaptured), then a memory limit below the agent's bound
// (the kernel may kill it), the open-file limit, an upstream left out for
// being the agent itself, IPv6 off on the node, and only then the table's
// warnings. None is empty.
func TestStatusWarningsMostPressingFirst(t *testing.T) {
	listen := testenv.FreePort(t)
	a, err := newAgent(Config{
		Source:    configdir.New(t.TempDir()),
		Listen:    []netip.AddrPort{listen},
		Upstreams: []netip.AddrPort{listen, testenv.DeadAddr(t)}, // the agent itself: left out
		Socket:    filepath.Join(t.TempDir(), "ztdns.sock"),
		Logger:    slog.New(slog.DiscardHandler),
		CNI:       &CNIConfig{BinDir: t.TempDir(), ConfDir: t.TempDir()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.server.Close(); a.fwd.Close() })

	// The installer's look failed, as cni.KeepInstalled reports it.
	a.cniInstall.set(errors.New("05-a.conf is not one ztdns wrote"))
	// The agent's cgroup allows 16 MiB, below its bound.
	proc, root := fakeProc(t, "12:memory:/a\n0::/a\n", "31 24 0:27 / %s/memory rw - cgroup cgroup rw,memory\n", nil)
	write(t, filepath.Join(root, "memory/a/memory.limit_in_bytes"), "16777216\n")
	a.memory = &memoryLimiter{limit: agentLimits{cgroup: findSelfCgroup(proc, 7, "")}.memory, env: math.MaxInt64, bound: a.memoryBound,
		set: func(n int64) int64 { return n }, log: a.log}
	a.memory.check()
	// An open-file limit of 64.
	a.nofile = nofileWarning(64, true, a.descriptorBudget())
	// IPv6 off on the node since the start.
	a.mu.Lock()
	a.ipv6.atStart, a.ipv6.now, a.ipv6.dropped = "disable_ipv6=1", "disable_ipv6=1", []string{"[fd00:7a74:646e::53]:53"}
	a.warnings = []string{"ServiceEntry default/bad: left out"}
	a.mu.Unlock()

	st := controlAPI{a}.Status()
	want := []string{
		"the CNI plugin is not installed",
		"the memory limit (16.0 MiB) is below what the agent may hold",
		"the open-file limit (RLIMIT_NOFILE) is 64",
		"upstream " + listen.String() + " left out",
		"IPv6 is off on this node",
		"ServiceEntry default/bad: left out",
	}
	if len(st.Warnings) != len(want) {
		t.Fatalf("status warnings %q: want %d, in the order %q", st.Warnings, len(want), want)
	}
	for i, w := range want {
		if !strings.HasPrefix(st.Warnings[i], w) {
			t.Errorf("status warning %d is %q, want the one starting %q", i, st.Warnings[i], w)
		}
	}
}
