package agent

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestCaptureThatCannotAttachLeavesNoInterface: an agent whose --cgroup
// is no cgroup fails at start, and leaves the node as it found it: no
// resolver interface (before: ztdns0 with its six addresses stayed).
func TestCaptureThatCannotAttachLeavesNoInterface(t *testing.T) {
	testenv.RequireRoot(t)
	assertFailedStartLeavesNoInterface(t,
		&CaptureConfig{BPFFS: filepath.Join(testenv.NewBPFFS(t), "ztdns"), Cgroup: filepath.Join(t.TempDir(), "no-cgroup")},
		"no-cgroup")
}

// TestCaptureThatCannotLoadLeavesNoInterface: an agent whose programs
// cannot be loaded after its resolver interface was made (here
// --mount-bpffs=false and --bpffs on no bpf filesystem) fails at start
// and takes away the interface it made (before: ztdns0 with its six
// addresses stayed, on every crash-loop restart).
func TestCaptureThatCannotLoadLeavesNoInterface(t *testing.T) {
	testenv.RequireRoot(t)
	assertFailedStartLeavesNoInterface(t,
		&CaptureConfig{BPFFS: filepath.Join(t.TempDir(), "ztdns"), RequireBPFFS: true, Cgroup: testenv.NewCgroup(t).Path},
		"no bpf filesystem")
}

// assertFailedStartLeavesNoInterface runs an agent with capture in a
// fresh node, wants its start to fail with an error that says want, and
// the node to have no resolver interface after it.
func assertFailedStartLeavesNoInterface(t *testing.T, capture *CaptureConfig, want string) {
	t.Helper()
	node := testenv.NewNode(t)
	dir, socket, _, up := handoffSetup(t)
	a, err := newAgent(Config{
		Source:    configdir.New(dir),
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")},
		Upstreams: []netip.AddrPort{up},
		Socket:    socket,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Capture:   capture,
	})
	if err != nil {
		t.Fatal(err)
	}
	err = node.Do(func() error { return a.run(t.Context()) })
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("run = %v, want an error that says %q", err, want)
	}
	_ = node.Do(func() error {
		if _, lerr := netlink.LinkByName(redirect.DefaultInterface); lerr == nil {
			t.Errorf("%s exists after a start that failed (%s)", redirect.DefaultInterface, want)
		}
		return nil
	})
}
