//go:build linux

package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Netns is a named network namespace (/run/netns/NAME) made by the test.
type Netns struct {
	Name string
}

// Path is the bind mount of the namespace, for setns and netns.Cookie.
func (n *Netns) Path() string { return filepath.Join("/run/netns", n.Name) }

// NewNetns creates a named network namespace with loopback up, deleted at
// cleanup.
func NewNetns(tb testing.TB, name string) *Netns {
	tb.Helper()
	RequireRoot(tb)
	LookPath(tb, "ip")
	record(tb, ledgerNetns, name)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { runCleanup(tb, "ip", "netns", "delete", name) })
	run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return &Netns{Name: name}
}

// AddAddr adds cidr (address/prefix) to the namespace's interface dev. An
// IPv6 address is added without DAD (nodad): a tentative one cannot be
// bound until DAD's work runs, even on lo.
func (n *Netns) AddAddr(tb testing.TB, cidr, dev string) {
	tb.Helper()
	args := []string{"-n", n.Name, "addr", "add", cidr, "dev", dev}
	if p, err := netip.ParsePrefix(cidr); err != nil {
		tb.Fatalf("AddAddr %q: %v", cidr, err)
	} else if p.Addr().Is6() {
		args = append(args, "nodad")
	}
	run(tb, "ip", args...)
}

// WaitIn waits until the process pid lives in the namespace: one started
// with Command is in the test's own until `ip netns exec` has entered it,
// which a scan of /proc could see.
func (n *Netns) WaitIn(tb testing.TB, pid int) {
	tb.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(n.Path(), &want); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	Eventually(tb, 5*time.Second, fmt.Sprintf("process %d in network namespace %s", pid, n.Name), func() bool {
		var st syscall.Stat_t
		return syscall.Stat(path, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino
	})
}

// Do runs fn on an OS thread switched into the namespace; sockets fn opens
// stay in it.
func (n *Netns) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path(), func(ns.NetNS) error { return fn() })
}

// Ifindex is the index of the interface dev in the namespace (a link-local
// address's zone there), asked from a thread in it.
func (n *Netns) Ifindex(tb testing.TB, dev string) uint32 {
	tb.Helper()
	var index int
	if err := n.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err == nil {
			index = ifi.Index
		}
		return err
	}); err != nil {
		tb.Fatalf("interface %s in %s: %v", dev, n.Name, err)
	}
	return uint32(index)
}

// WriteSysctl sets the sysctl name (dotted, as `sysctl -w` takes it:
// "net.ipv6.conf.lo.disable_ipv6"; no interface name with a dot) to value
// in the namespace, as `sysctl -w` run there does, without procps:
// /proc/sys/net is the namespace of the thread that opens it.
func (n *Netns) WriteSysctl(tb testing.TB, name, value string) {
	tb.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value+"\n"), 0o644) }); err != nil {
		tb.Fatalf("testenv: sysctl %s=%s in %s: %v", name, value, n.Name, err)
	}
}

// Command prepares name+args to run inside the namespace with `ip netns
// exec`, which also bind-mounts /etc/netns/NAME/* (the pod's resolv.conf)
// over /etc. With a cgroup, the process is created directly inside it
// (clone3 CLONE_INTO_CGROUP), so every socket it opens is subject to the
// programs attached there. ctx ends the process.
func (n *Netns) Command(ctx context.Context, cg *Cgroup, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	if cg != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD()}
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Nsenter prepares name+args to run inside the namespace with nsenter
// --net. Unlike Command's `ip netns exec`, it does not remount /sys, so the
// process sees the machine's cgroup2 and bpf mounts, as `ztdns agent` and
// `ztdns uninstall` must. ctx ends the process.
func (n *Netns) Nsenter(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), name}, args...)...)
}

// Output runs a command like Command with a timeout and returns its
// combined output and error.
func (n *Netns) Output(tb testing.TB, cg *Cgroup, timeout time.Duration, name string, args ...string) (string, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), timeout)
	defer cancel()
	out, err := n.Command(ctx, cg, name, args...).CombinedOutput()
	return string(out), err
}

// Node is the "node" network namespace: the host side of every pod veth,
// the resolver and the test DNS servers live here. Forwarding is left off,
// and it has no route off the machine, so an unredirected query dies here.
type Node struct {
	Netns

	mu   sync.Mutex
	pods int
}

// NewNode creates a node namespace. Commands run in it see an empty
// resolv.conf: nothing in a test may query the machine's own nameserver.
func NewNode(tb testing.TB) *Node {
	tb.Helper()
	RequireRoot(tb)
	name := UniqueName("ztdns-") + "-node"
	WriteResolvConf(tb, name, PodConfig{})
	return &Node{Netns: *NewNetns(tb, name)}
}

// PodConfig describes a fake pod.
type PodConfig struct {
	// Nameservers become `nameserver` lines of the pod's resolv.conf; the
	// file is written even when empty, so no client in the pod ever sees
	// the machine's own resolv.conf.
	Nameservers []string
	// Search becomes a `search` line, as kubelet writes a ClusterFirst
	// pod's ("ns.svc.cluster.local", "svc.cluster.local", "cluster.local"),
	// so its stub resolver walks them before (or after) the name asked.
	Search []string
	// Options become an `options` line, e.g. "timeout:1", "attempts:1",
	// "ndots:5".
	Options []string
}

// Pod is a network namespace wired to the node with a veth pair.
type Pod struct {
	Netns
	Node     *Node
	HostVeth string // the veth end in the node namespace
	// IPv4 is 10.253.N.2/24, with its default route via 10.253.N.1, and
	// IPv6 2001:db8:N::2/64 via 2001:db8:N::1: N is unique on the machine
	// while the test runs (podSubnet).
	IPv4 netip.Addr
	IPv6 netip.Addr
}

// Gateway4 is the node's address on the pod's veth, the pod's IPv4
// default route (10.253.N.1).
func (p *Pod) Gateway4() netip.Addr {
	a := p.IPv4.As4()
	a[3] = 1
	return netip.AddrFrom4(a)
}

// Gateway6 is the node's IPv6 address on the pod's veth (2001:db8:N::1).
func (p *Pod) Gateway6() netip.Addr {
	a := p.IPv6.As16()
	a[15] = 1
	return netip.AddrFrom16(a)
}

// AddPod creates a pod namespace with a veth to the node, addresses,
// default routes via the node, and /etc/netns/NAME/resolv.conf.
func (n *Node) AddPod(tb testing.TB, cfg PodConfig) *Pod {
	tb.Helper()
	n.mu.Lock()
	n.pods++
	idx := n.pods
	n.mu.Unlock()
	if idx > 250 {
		tb.Fatal("testenv: at most 250 pods per node")
	}

	subnet := podSubnet(tb) // given back after the namespace goes
	name := fmt.Sprintf("%s-pod%d", strings.TrimSuffix(n.Name, "-node"), idx)
	WriteResolvConf(tb, name, cfg)
	pod := NewNetns(tb, name)

	p := &Pod{
		Netns:    *pod,
		Node:     n,
		HostVeth: fmt.Sprintf("veth%d", idx),
		IPv4:     netip.AddrFrom4([4]byte{10, 253, byte(subnet), 2}),
		IPv6:     netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::2", subnet)),
	}
	gw4, gw6 := p.Gateway4().String(), p.Gateway6().String()

	// The veth is created in the node namespace with its peer directly in
	// the pod: nothing touches the machine's own namespace.
	run(tb, "ip", "-n", n.Name, "link", "add", p.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
	// Deleted before the namespace, not with it: `ip netns delete` only
	// unmounts it, and the kernel destroys a namespace, veths and all,
	// later (at once if nothing else holds it, after an RCU grace period).
	// Until then the node kept this veth, its gateway address and its
	// route to the subnet, which podSubnet hands to the node's next pod:
	// replies to that pod followed the old route into the dying
	// namespace. The pair's deletion is synchronous.
	tb.Cleanup(func() { deleteLink(tb, n.Name, p.HostVeth) })
	n.AddAddr(tb, gw4+"/24", p.HostVeth)
	n.AddAddr(tb, gw6+"/64", p.HostVeth)
	run(tb, "ip", "-n", n.Name, "link", "set", p.HostVeth, "up")

	pod.AddAddr(tb, p.IPv4.String()+"/24", "eth0")
	pod.AddAddr(tb, p.IPv6.String()+"/64", "eth0")
	run(tb, "ip", "-n", pod.Name, "link", "set", "eth0", "up")
	run(tb, "ip", "-n", pod.Name, "route", "add", "default", "via", gw4)
	run(tb, "ip", "-n", pod.Name, "-6", "route", "add", "default", "via", gw6)
	return p
}

// deleteLink deletes the interface dev of the namespace ns, if it still
// has one: a test may have deleted it itself.
func deleteLink(tb testing.TB, ns, dev string) {
	tb.Helper()
	out, err := exec.Command("ip", "-n", ns, "link", "delete", "dev", dev).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot find device") {
		tb.Errorf("cleanup: ip -n %s link delete dev %s: %v\n%s", ns, dev, err, out)
	}
}

// WriteResolvConf writes /etc/netns/NAME/resolv.conf, which `ip netns
// exec NAME` (Command) binds over /etc/resolv.conf, with cfg's nameservers,
// search domains and options; it is removed at cleanup. It is recorded in the ledger
// first, as the namespace NAME is (callers write it before they make the
// namespace), so the next test run removes it if this process is killed.
func WriteResolvConf(tb testing.TB, name string, cfg PodConfig) {
	tb.Helper()
	RequireRoot(tb)
	dir := filepath.Join("/etc/netns", name)
	record(tb, ledgerNetns, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
		// Leave /etc/netns only if another test still uses it.
		_ = os.Remove(filepath.Dir(dir))
	})
	var b strings.Builder
	b.WriteString("# written by internal/testenv\n")
	for _, ns := range cfg.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(cfg.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(cfg.Search, " "))
	}
	if len(cfg.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(cfg.Options, " "))
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(b.String()), 0o644); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
}

// HTTPGet fetches url over a connection opened inside the namespace (so
// "127.0.0.1" is the namespace's own loopback) and returns the body; the
// test fails on any error or a status other than 200.
func (n *Netns) HTTPGet(tb testing.TB, url string) string {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	var conn net.Conn
	if err := n.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", req.URL.Host, 5*time.Second)
		return err
	}); err != nil {
		tb.Fatalf("testenv: GET %s in %s: %v", url, n.Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req.Close = true
	if err := req.Write(conn); err != nil {
		tb.Fatalf("testenv: GET %s: %v", url, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		tb.Fatalf("testenv: GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("testenv: GET %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}
