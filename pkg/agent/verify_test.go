//go:build linux

package agent

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestInspectNetnsOpensNothingElse: a path that is no network namespace (a
// regular file, a device) is refused as such without being opened: an open
// of a device may have side effects, and one on a stuck FUSE mount hangs.
// inotify sees every real open of the file; the agent's look at it is none.
func TestInspectNetnsOpensNothingElse(t *testing.T) {
	a, _ := cniAgent(t)
	file := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(in) })
	if _, err := unix.InotifyAddWatch(in, file, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, "/dev/null"} {
		_, err := a.inspectNetns(path)
		if err == nil || control.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), path+" is not a network namespace") {
			t.Errorf("inspectNetns(%s) = %v (status %d), want refused as no network namespace (400)", path, err, control.StatusOf(err))
		}
	}
	buf := make([]byte, 4096)
	if n, err := unix.Read(in, buf); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("inotify read %d bytes, %v: the agent opened %s", n, err, file)
	}
}

// TestNodeCookiesWarnsWithoutPID1: where the node's /proc is not at the
// proc root (a container started without it), PID 1's network namespace
// cannot be read and the host-namespace guard knows only the agent's own:
// a warning says so, naming the path. Where PID 1's can be read there is
// none, and the guard knows both.
func TestNodeCookiesWarnsWithoutPID1(t *testing.T) {
	testenv.RequireRoot(t)
	own, err := ownNetnsCookie()
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	fake := t.TempDir() // a proc root without PID 1
	if got := nodeCookies(fake, slog.New(slog.NewTextHandler(&logged, nil)), slog.LevelWarn); !slices.Equal(got, []uint64{own}) {
		t.Errorf("without PID 1 the node's cookies are %v, want the agent's own alone (%d)", got, own)
	}
	if out := logged.String(); strings.Count(out, "level=WARN") != 1 ||
		!strings.Contains(out, "cannot read the node's network namespace (PID 1's)") || !strings.Contains(out, filepath.Join(fake, "1/ns/net")) {
		t.Errorf("logged %q, want one warning that PID 1's network namespace at %s cannot be read", out, filepath.Join(fake, "1/ns/net"))
	}

	// A proc root whose PID 1 lives in another namespace: it is the node's.
	node := testenv.NewNetns(t, testenv.UniqueName("ztnode-"))
	if err := os.MkdirAll(filepath.Join(fake, "1/ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(node.Path(), filepath.Join(fake, "1/ns/net")); err != nil {
		t.Fatal(err)
	}
	logged.Reset()
	if got, want := nodeCookies(fake, slog.New(slog.NewTextHandler(&logged, nil)), slog.LevelWarn), []uint64{own, cookieOf(t, node)}; !slices.Equal(got, want) || logged.Len() > 0 {
		t.Errorf("with PID 1 in a namespace of its own: cookies %v, logged %q; want %v and nothing logged", got, logged.String(), want)
	}
}

// TestNoPID1WarningWithoutCapture: an agent with --capture=false that
// cannot read PID 1's network namespace (run unprivileged, as the
// standalone demo is) does not warn about it: it captures nothing the
// host-namespace guard would keep from the node's namespace. It says so
// at debug level; with capture on it warns, as before. (Before: the
// warning at every start, capture or not.)
func TestNoPID1WarningWithoutCapture(t *testing.T) {
	for _, tc := range []struct {
		name    string
		capture *CaptureConfig
		level   string
	}{
		{"capture off", nil, "level=DEBUG"},
		{"capture on", &CaptureConfig{}, "level=WARN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logged bytes.Buffer
			procRoot := t.TempDir() // no PID 1 in it
			a, err := newAgent(Config{Source: configdir.New(t.TempDir()), Capture: tc.capture, ProcRoot: procRoot,
				Listen: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")}, Upstreams: []netip.AddrPort{testenv.DeadAddr(t)},
				Logger: slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.server.Close(); a.fwd.Close() })
			var pid1 []string
			for l := range strings.Lines(logged.String()) {
				if strings.Contains(l, "PID 1's") {
					pid1 = append(pid1, l)
				}
			}
			if len(pid1) != 1 || !strings.Contains(pid1[0], tc.level) || !strings.Contains(pid1[0], filepath.Join(procRoot, "1/ns/net")) {
				t.Errorf("logged %q about PID 1's network namespace, want one line at %s naming %s", pid1, tc.level, filepath.Join(procRoot, "1/ns/net"))
			}
		})
	}
}
