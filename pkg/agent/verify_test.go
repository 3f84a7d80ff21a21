//go:build linux

package agent

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/control"
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
