//go:build linux

package capture

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// TestProcNamespacesScan: a scan of the real /proc finds the network
// namespace of a process that runs in it as another user, with its
// addresses, once however many processes share it.
func TestProcNamespacesScan(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.LookPath(t, "setpriv")
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	addr := netip.MustParseAddr("203.0.113.77")
	if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", addr.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for range 2 {
		// Like a pod's pause process: another user than the agent's.
		cmd := n.Command(ctx, nil, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	}
	want, err := redirect.NetnsCookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, err := ProcNamespaces{}.Scan()
		if err != nil {
			t.Fatal(err)
		}
		var found []Netns
		for _, f := range res.Found {
			if f.Cookie == want {
				found = append(found, f)
			}
		}
		if len(found) == 1 && slices.Equal(found[0].Addrs, []netip.Addr{addr}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("scan found %+v for the namespace (cookie %d), want it once with %s", found, want, addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProcNamespacesCookieSaysWhatIsGone: Cookie reads a namespace's
// cookie, and says "no namespace there" (what makes the controller drop a
// record) for a path with nothing at it or a file that is no namespace, as
// a runtime's netns path is once the sandbox is gone.
func TestProcNamespacesCookieSaysWhatIsGone(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	want, err := redirect.NetnsCookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := (ProcNamespaces{}).Cookie(n.Path()); err != nil || got != want {
		t.Errorf("Cookie(%s) = %d, %v; want %d", n.Path(), got, err, want)
	}
	file := filepath.Join(t.TempDir(), "cni-gone")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, filepath.Join(t.TempDir(), "missing")} {
		if _, err := (ProcNamespaces{}).Cookie(path); !errors.Is(err, redirect.ErrNoNetns) {
			t.Errorf("Cookie(%s) = %v, want an error wrapping ErrNoNetns", path, err)
		}
	}
}
