//go:build linux

package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source/configdir"
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
	pods := podcache.New()
	l := newLinkOwners(pods, capture.ProcNamespaces{}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err := node.Do(l.open); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(l.fd) })
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
		p := l.Owner(ifindex)
		if q := l.Owners()[ifindex]; q != p {
			t.Errorf("Owners has %v behind interface %d, Owner %v", q, ifindex, p)
		}
		if p != nil {
			return p.Key()
		}
		return "nobody"
	}
	// The resolver syncs the kernel's filter on each change it is told of:
	// once for each change, not for each look.
	var changes atomic.Int32
	defer l.OnChange(func() { changes.Add(1) })()
	changed := func(step string, want bool) {
		t.Helper()
		if got := changes.Swap(0) > 0; got != want {
			t.Errorf("%s: told of a change: %v, want %v", step, got, want)
		}
	}

	pathA, endA := processNetns(t, node, "vethA")
	record("a", pathA)
	a := node.Ifindex(t, "vethA")
	if got := ownerOf(a); got != "shop/a" {
		t.Fatalf("behind vethA: %s, want shop/a", got)
	}
	changed("vethA's pod found", true)
	ownerOf(a)
	changed("a look that found nothing new", false)
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
	b := node.Ifindex(t, "vethB")
	if got := ownerOf(b); got != "nobody" {
		t.Errorf("behind vethB, a namespace no record names: %s, want nobody", got)
	}
	if l.links[b] != nsid {
		t.Fatalf("the node gave the new namespace id %d, not the dead one's (%d): nothing tested", l.links[b], nsid)
	}
	changed("vethA gone", true)
	record("b", pathB)
	if got := ownerOf(b); got != "shop/b" {
		t.Errorf("behind vethB, once recorded: %s, want shop/b", got)
	}
	changed("vethB's pod found", true)
}

// replies counts the replies c reads until it is closed.
func replies(c *dns.Conn) func() int {
	var n atomic.Int64
	go func() {
		for {
			if _, err := c.ReadMsg(); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return func() int { return int(n.Load()) }
}

// TestLinkLocalClientIsItsPodInTheKernel: the query rate of UDP, applied
// in the kernel, is one for a pod whether it asks from its pod IP or from
// its link-local addresses (fe80::…, through its veth): its burst spent
// from its pod IP, nothing more is answered from fe80::2 or fe80::3, and
// those drops are the pod's. The agent tells the kernel's filter which pod
// is behind which interface as it learns it. Before, each link-local
// address the pod took had a burst and a rate of its own in the kernel.
func TestLinkLocalClientIsItsPodInTheKernel(t *testing.T) {
	node := testenv.NewNode(t)
	pod := node.AddPod(t, testenv.PodConfig{})
	nodeLL := netip.MustParseAddr("fe80::1")
	podLL := []netip.Addr{netip.MustParseAddr("fe80::2"), netip.MustParseAddr("fe80::3")}
	node.AddAddr(t, nodeLL.String()+"/64", pod.HostVeth)
	for _, a := range podLL {
		pod.AddAddr(t, a.String()+"/64", "eth0")
	}

	done := make(chan struct{})
	upstream := dnstest.Start(t, "127.0.0.1:0", holdingUpstream{done: done})
	t.Cleanup(func() { close(done) })
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	const port, burst = 53, 10
	a, client := runInNode(t, node, Config{
		Source:    configdir.New(t.TempDir()),
		Listen:    []netip.AddrPort{netip.AddrPortFrom(netip.IPv6Unspecified(), port)},
		Upstreams: []netip.AddrPort{upstream.Addr},
		Socket:    socket,
		Limits:    quota.Limits{QPS: 0.01, Burst: burst}, // no new token while the test runs
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	addWeb0(t, client, pod, "c0ffee12")
	hostVeth := node.Ifindex(t, pod.HostVeth)
	testenv.Eventually(t, 30*time.Second, "the agent finds the pod behind its veth", func() bool {
		return a.links.Owner(hostVeth) != nil
	})
	// The look that found it tells the resolver (its filter's map) after
	// publishing it, holding what OnChange takes: once OnChange returns,
	// the kernel knows.
	a.links.OnChange(func() {})()
	known := a.pods.Lookup(pod.IPv6)

	// send sends n queries on c and waits until each is answered or
	// dropped as the pod's; it returns how many were answered.
	send := func(c *dns.Conn, n int) int {
		t.Helper()
		answered := replies(c)
		dropped := func() int { return int(a.server.PodUsage(known).RateLimited) }
		before := dropped()
		for i := range n {
			q := new(dns.Msg)
			q.SetQuestion(fmt.Sprintf("q%d.example.", i), dns.TypeA)
			if err := c.WriteMsg(q); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, 30*time.Second, "every query answered or dropped as the pod's", func() bool {
			return answered()+dropped()-before >= n
		})
		return answered()
	}
	podIP := dialIn(t, pod, "udp6", netip.AddrPortFrom(pod.IPv6, 0), netip.AddrPortFrom(pod.Gateway6(), port))
	if n := send(podIP, burst+5); n != burst {
		t.Fatalf("%d of %d answered from the pod IP, want its burst of %d", n, burst+5, burst)
	}
	for _, ll := range podLL {
		if n := send(linkLocalDial(t, pod, "udp6", ll, nodeLL, port), 5); n != 0 {
			t.Errorf("%d of 5 answered from the pod's %s after it spent its burst from its pod IP, want none: one rate", n, ll)
		}
	}
	if got := a.server.PodUsage(known).RateLimited; got != 15 {
		t.Errorf("the pod's rate-limited count is %d, want the 15 the kernel dropped", got)
	}
}
