//go:build linux

package agent

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// processNetns is the network namespace of a process of its own (as an
// adopted pod's is found: /proc/PID/ns/net), with a veth whose other end,
// called dev, is in node. end kills the process, and so the namespace goes
// (its veth with it); the test's end does too.
func processNetns(t *testing.T, node *testenv.Node, dev string) (path string, end func()) {
	t.Helper()
	testenv.LookPath(t, "sleep")
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := testenv.StartOrphanProof(cmd); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	end = func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	t.Cleanup(end)
	pid := cmd.Process.Pid
	if out, err := exec.Command("ip", "-n", node.Name, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", fmt.Sprint(pid)).CombinedOutput(); err != nil {
		t.Fatalf("veth into process %d's namespace: %v\n%s", pid, err, out)
	}
	return fmt.Sprintf("/proc/%d/ns/net", pid), end
}

// TestLinkOwnersForgetADeadNamespace: the pod behind a node interface is
// the one whose network namespace is at its other end; once that
// namespace is gone, its record still there (a DEL not yet heard), a new
// namespace the node gives the same id (IFLA_LINK_NETNSID) is not taken
// for it: a link-local client there is nobody's, until a record of its
// own names it. (Without asking a namespace's id again when a new link
// shows it, the new namespace's interface was the dead pod's.)
func TestLinkOwnersForgetADeadNamespace(t *testing.T) {
	node := testenv.NewNode(t)
	pods := podcache.New("cluster.local")
	l := newLinkOwners(pods, capture.ProcNamespaces{}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err := node.Do(l.open); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(l.fd) })
	ifindex := func(dev string) uint32 {
		t.Helper()
		var ifi *net.Interface
		if err := node.Do(func() (err error) {
			ifi, err = net.InterfaceByName(dev)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return uint32(ifi.Index)
	}
	record := func(name, path string) {
		t.Helper()
		cookie, err := netns.Cookie(path)
		if err != nil {
			t.Fatal(err)
		}
		pods.Attach(podcache.Attachment{ContainerID: name, Namespace: "shop", Name: name, NetnsPath: path, NetnsCookie: cookie})
	}
	ownerOf := func(ifindex uint32) string {
		t.Helper()
		if err := l.refresh(); err != nil {
			t.Fatal(err)
		}
		if p := l.owner(ifindex); p != nil {
			return p.Key()
		}
		return "nobody"
	}

	pathA, endA := processNetns(t, node, "vethA")
	record("a", pathA)
	a := ifindex("vethA")
	if got := ownerOf(a); got != "shop/a" {
		t.Fatalf("behind vethA: %s, want shop/a", got)
	}
	nsid := l.links[a]
	endA()
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		links, err := l.dumpLinks()
		if _, ok := links[a]; ok || err != nil {
			return fmt.Errorf("vethA still there (%v)", err)
		}
		return nil
	})

	pathB, _ := processNetns(t, node, "vethB")
	b := ifindex("vethB")
	if got := ownerOf(b); got != "nobody" {
		t.Errorf("behind vethB, a namespace no record names: %s, want nobody", got)
	}
	if l.links[b] != nsid {
		t.Fatalf("the node gave the new namespace id %d, not the dead one's (%d): nothing tested", l.links[b], nsid)
	}
	record("b", pathB)
	if got := ownerOf(b); got != "shop/b" {
		t.Errorf("behind vethB, once recorded: %s, want shop/b", got)
	}
}
