//go:build linux

package redirect

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestPinDirectoryIsRoots: capture pins its maps and links only in a
// directory root alone can write in. Another user who could make the pin
// directory first (in a bpffs mounted with its default mode, 1777) would
// own root's pins: remove the heartbeat and the pods map, move the links
// aside, or plant a directory where a pin goes. MountBPFFS (`ztdns
// mount-bpffs`, --mount-bpffs) mounts 0700, and Load refuses such a
// directory with a sentence naming it, having pinned nothing there.
func TestPinDirectoryIsRoots(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)

	t.Run("mount-bpffs mounts it 0700", func(t *testing.T) {
		root := mountPoint(t)
		mounted, err := MountBPFFS(root)
		if err != nil || !mounted {
			t.Fatalf("MountBPFFS: mounted=%v, %v", mounted, err)
		}
		fi, err := os.Stat(root)
		if err != nil {
			t.Fatal(err)
		}
		// The kernel sets sticky on every bpffs root, whatever the mode.
		if want := os.ModeDir | os.ModeSticky | 0o700; fi.Mode() != want {
			t.Errorf("the bpffs root is %v, want %v", fi.Mode(), want)
		}
		if out, err := mkdirAsNobody(t, root, "ztdns"); err == nil {
			t.Errorf("uid 65534 made %s/ztdns in the bpffs mounted: %s", root, out)
		}
	})

	t.Run("pin directory made by another user first", func(t *testing.T) {
		// What bpffs's default mode, 1777, let uid 65534 do before the
		// agent's first start.
		root := mountPoint(t)
		mountBPFFSDefaultMode(t, root)
		if out, err := mkdirAsNobody(t, root, "ztdns"); err != nil {
			t.Fatalf("uid 65534: mkdir %s/ztdns: %v\n%s", root, err, out)
		}
		pinDir := filepath.Join(root, "ztdns")
		loadRefused(t, pinDir, pinDir+" belongs to uid 65534, not root", "--bpffs")
		if entries, err := os.ReadDir(pinDir); err != nil || len(entries) != 0 {
			t.Errorf("%s holds %v (%v), want nothing pinned in another user's directory", pinDir, entries, err)
		}
	})

	t.Run("links directory of another user", func(t *testing.T) {
		pinDir := filepath.Join(testenv.NewBPFFS(t), "ztdns")
		links := filepath.Join(pinDir, linksDir)
		mkdirAll(t, links)
		if err := os.Chown(links, int(testenv.Nobody.Uid), 0); err != nil {
			t.Fatal(err)
		}
		loadRefused(t, pinDir, links+" belongs to uid 65534, not root", "--bpffs")
		if entries, err := os.ReadDir(pinDir); err != nil || len(entries) != 1 {
			t.Errorf("%s holds %v (%v), want nothing pinned beside the links directory", pinDir, entries, err)
		}
	})

	t.Run("pin directory others can write in", func(t *testing.T) {
		pinDir := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
		if err := os.Chmod(pinDir, 0o777); err != nil {
			t.Fatal(err)
		}
		loadRefused(t, pinDir, pinDir+" is writable by others", "--bpffs")
	})

	t.Run("directory where a map pin goes", func(t *testing.T) {
		pinDir := filepath.Join(testenv.NewBPFFS(t), "ztdns")
		planted := mkdirAll(t, pinPath(pinDir, ztdnsMapHeartbeat))
		loadRefused(t, pinDir, planted+" is a directory where ztdns pins a map or link of its own: remove it")
	})
}

// loadRefused checks that Load with pinDir fails, saying every one of want.
func loadRefused(t *testing.T, pinDir string, want ...string) {
	t.Helper()
	r, err := Load(Config{BPFFS: pinDir, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})
	if err == nil {
		r.Close()
		t.Fatalf("Load pinned in %s, want it refused", pinDir)
	}
	t.Logf("Load: %v", err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Load: %v\nwant it to say %q", err, w)
		}
	}
}

// mountPoint returns an empty directory to mount a bpffs on, unmounted at
// cleanup.
func mountPoint(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "bpf")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.RecordMount(t, root)
	t.Cleanup(func() {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("cleanup: unmount %s: %v", root, err)
		}
	})
	return root
}

// mountBPFFSDefaultMode mounts a bpffs at root as `mount -t bpf bpf ROOT`
// does: its root mode 1777.
func mountBPFFSDefaultMode(t *testing.T, root string) {
	t.Helper()
	if err := unix.Mount("bpf", root, "bpf", 0, ""); err != nil {
		testenv.Unavailable(t, "cannot mount bpffs: %v", err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := os.ModeDir | os.ModeSticky | 0o777; fi.Mode() != want {
		t.Fatalf("bpffs mounted with no options is %v, want %v", fi.Mode(), want)
	}
}

// mkdirAsNobody runs mkdir as uid 65534 to make name in dir. dir is handed
// to it open, as /proc/self/fd/3: the test's temporary directories above
// it are root's, 0700, and only dir's own mode is to decide.
func mkdirAsNobody(t *testing.T, dir, name string) (string, error) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cmd := testenv.AsUser(t, t.Context(), testenv.Nobody, testenv.LookPath(t, "mkdir"), filepath.Join("/proc/self/fd/3", name))
	cmd.ExtraFiles = []*os.File{d}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
