//go:build linux

package redirect

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestEnsureInterface creates the resolver interface in a node namespace
// and proves every address is locally delivered: reachable from the node
// itself and from a pod through its default route.
func TestEnsureInterface(t *testing.T) {
	t.Parallel()
	node := testenv.NewNode(t)
	pod := node.AddPod(t, testenv.PodConfig{})
	want := DefaultInterfaceAddrs()

	var kind string
	inNode(t, node, func() error {
		var err error
		kind, err = EnsureInterface(testLogger(t), DefaultInterface, want)
		return err
	})
	t.Logf("resolver interface kind: %s", kind)
	if !slices.Contains([]string{"dummy", "bridge", "ifb"}, kind) {
		t.Errorf("kind %q, want dummy, bridge or ifb", kind)
	}
	if got := interfaceAddrs(t, node, DefaultInterface); !slices.Equal(got, sortedPrefixes(want)) {
		t.Errorf("addresses %v, want %v", got, sortedPrefixes(want))
	}

	t.Run("idempotent and converging", func(t *testing.T) {
		// A second run keeps the interface and drops addresses not asked
		// for.
		inNode(t, node, func() error {
			l, err := netlink.LinkByName(DefaultInterface)
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("169.254.99.1"), Mask: net.CIDRMask(32, 32)}})
		})
		inNode(t, node, func() error {
			again, err := EnsureInterface(testLogger(t), DefaultInterface, want)
			if err == nil && again != kind {
				t.Errorf("second run kind %q, want %q", again, kind)
			}
			return err
		})
		if got := interfaceAddrs(t, node, DefaultInterface); !slices.Equal(got, sortedPrefixes(want)) {
			t.Errorf("addresses %v, want %v", got, sortedPrefixes(want))
		}
	})

	for _, p := range want {
		addr := netip.AddrPortFrom(p.Addr(), 5353)
		t.Run("reachable "+addr.String(), func(t *testing.T) {
			startUDPEcho(t, &node.Netns, addr)
			for _, from := range []*testenv.Netns{&node.Netns, &pod.Netns} {
				if err := udpRoundTrip(from, addr); err != nil {
					t.Errorf("from %s: %v", from.Name, err)
				}
			}
		})
	}

	t.Run("foreign interface is left alone", func(t *testing.T) {
		inNode(t, node, func() error {
			return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "notours0"}})
		})
		inNode(t, node, func() error {
			if _, err := EnsureInterface(testLogger(t), "notours0", want); err == nil || !strings.Contains(err.Error(), "not created by ztdns") {
				t.Errorf("EnsureInterface on a foreign interface: %v", err)
			}
			if err := RemoveInterface("notours0"); err == nil {
				t.Error("RemoveInterface removed a foreign interface")
			}
			_, err := netlink.LinkByName("notours0")
			return err
		})
	})

	t.Run("remove", func(t *testing.T) {
		inNode(t, node, func() error {
			if err := RemoveInterface(DefaultInterface); err != nil {
				return err
			}
			if _, err := netlink.LinkByName(DefaultInterface); err == nil {
				t.Error("interface still exists")
			}
			return RemoveInterface(DefaultInterface) // gone: no error
		})
	})
}

func inNode(tb testing.TB, node *testenv.Node, fn func() error) {
	tb.Helper()
	if err := node.Do(fn); err != nil {
		tb.Fatal(err)
	}
}

func interfaceAddrs(tb testing.TB, node *testenv.Node, name string) []netip.Prefix {
	tb.Helper()
	var out []netip.Prefix
	inNode(tb, node, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if ip.IsLinkLocalUnicast() && ip.Is6() {
				continue
			}
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(ip, ones))
		}
		return nil
	})
	return sortedPrefixes(out)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// startUDPEcho answers every datagram on addr with itself until cleanup.
func startUDPEcho(tb testing.TB, ns *testenv.Netns, addr netip.AddrPort) {
	tb.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
}

// udpRoundTrip sends a datagram to addr from inside ns and waits for the
// echo.
func udpRoundTrip(ns *testenv.Netns, addr netip.AddrPort) error {
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr.String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return &net.AddrError{Err: "unexpected echo " + string(buf[:n]), Addr: addr.String()}
	}
	return nil
}

// TestIPv6Off reads why the kernel refuses IPv6 on an interface from a
// sysctl tree: the interface's own setting once it exists, default's before.
func TestIPv6Off(t *testing.T) {
	root := filepath.Join(t.TempDir(), "ipv6")
	set := func(conf, v string) { t.Helper(); setDisableIPv6(t, root, conf, v) }
	if got := ipv6Off(root, "ztdns0"); !strings.Contains(got, "ipv6.disable=1") {
		t.Errorf("no sysctl tree: %q, want ipv6.disable=1", got)
	}
	set("default", "0")
	if got := ipv6Off(root, "ztdns0"); got != "" {
		t.Errorf("IPv6 on: %q", got)
	}
	set("default", "1")
	if got := ipv6Off(root, "ztdns0"); got != "net.ipv6.conf.default.disable_ipv6=1" {
		t.Errorf("default off, no interface yet: %q", got)
	}
	set("ztdns0", "0") // made before default was changed: takes IPv6
	if got := ipv6Off(root, "ztdns0"); got != "" {
		t.Errorf("the interface's own setting on: %q", got)
	}
	set("ztdns0", "1")
	if got := ipv6Off(root, "ztdns0"); got != "net.ipv6.conf.ztdns0.disable_ipv6=1" {
		t.Errorf("the interface's own setting off: %q", got)
	}
}

// setDisableIPv6 writes net.ipv6.conf.CONF.disable_ipv6 into the sysctl
// tree root.
func setDisableIPv6(t *testing.T, root, conf, v string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, "conf", conf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "conf", conf, "disable_ipv6"), []byte(v+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIPv6OffOnLoopback: with loopback's IPv6 off (net.ipv6.conf.lo, which
// net.ipv6.conf.all=1 then default=0 leaves set), IPv6 counts as off
// although the interface takes the addresses: the node reaches its own
// IPv6 addresses only through lo, so /healthz, which asks each resolver
// address from the node, would time out on them. (Before: "", and the
// agent kept IPv6 on such a node.)
func TestIPv6OffOnLoopback(t *testing.T) {
	root := filepath.Join(t.TempDir(), "ipv6")
	set := func(conf, v string) { t.Helper(); setDisableIPv6(t, root, conf, v) }
	const loOff = "net.ipv6.conf.lo.disable_ipv6=1: the node cannot reach its own IPv6 addresses"
	set("default", "0")
	set("lo", "1")
	if got := ipv6Off(root, "ztdns0"); got != loOff {
		t.Errorf("lo off, no interface yet: %q, want %q", got, loOff)
	}
	set("ztdns0", "0")
	if got := ipv6Off(root, "ztdns0"); got != loOff {
		t.Errorf("lo off, the interface's own setting on: %q, want %q", got, loOff)
	}
	set("ztdns0", "1") // the interface's own reason comes first
	if got := ipv6Off(root, "ztdns0"); got != "net.ipv6.conf.ztdns0.disable_ipv6=1" {
		t.Errorf("lo and the interface off: %q", got)
	}
	set("ztdns0", "0")
	set("lo", "0")
	if got := ipv6Off(root, "ztdns0"); got != "" {
		t.Errorf("IPv6 on, lo too: %q", got)
	}
}

// TestResolverAddressesNeverSource: on a node whose interface toward a pod
// has no address of its own (Calico's veths: IPv4 none, IPv6 link-local
// only, pods on ULAs), the node still talks to the pod from its own
// address, not from a resolver address every node has; also after an
// older agent left the addresses preferred and, in IPv4, global, which
// EnsureInterface and AddInterfaceAddrs set right. (Before: the route to
// fd00:10:244::5 took src fd00:7a74:646e::53, the one to 10.244.0.5 src
// 169.254.20.53.)
func TestResolverAddressesNeverSource(t *testing.T) {
	t.Parallel()
	node := testenv.NewNode(t)
	want := DefaultInterfaceAddrs()
	inNode(t, node, func() error {
		_, err := EnsureInterface(testLogger(t), DefaultInterface, want)
		return err
	})

	// The node's own interface, after ztdns0 (IPv4's fallback takes
	// devices in ifindex order), and a Calico-style veth to a pod.
	inNode(t, node, func() error {
		eth0 := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cali1"}, PeerName: "cali1p"}
		for _, l := range []netlink.Link{eth0, veth} {
			if err := netlink.LinkAdd(l); err != nil {
				return err
			}
		}
		for _, name := range []string{"eth0", "cali1", "cali1p"} {
			l, err := netlink.LinkByName(name)
			if err == nil {
				err = netlink.LinkSetUp(l)
			}
			if err != nil {
				return fmt.Errorf("set %s up: %w", name, err)
			}
		}
		return nil
	})
	for _, cidr := range []string{"2001:db8:50::5/64", "fd12:3456::5/64", "10.0.0.5/24"} {
		node.AddAddr(t, cidr, "eth0")
	}
	pod4, pod6 := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")
	inNode(t, node, func() error {
		cali, err := netlink.LinkByName("cali1")
		if err != nil {
			return err
		}
		for _, dst := range []netip.Addr{pod4, pod6} {
			r := &netlink.Route{LinkIndex: cali.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("route to %s: %w", dst, err)
			}
		}
		return nil
	})

	wantSrc := map[netip.Addr]netip.Addr{
		pod4: netip.MustParseAddr("10.0.0.5"),
		pod6: netip.MustParseAddr("fd12:3456::5"),
	}
	checkSources := func(t *testing.T) {
		t.Helper()
		for dst, src := range wantSrc {
			var got netip.Addr
			inNode(t, node, func() error {
				routes, err := netlink.RouteGet(dst.AsSlice())
				if err != nil || len(routes) == 0 {
					return fmt.Errorf("route to %s: %v, %v", dst, routes, err)
				}
				got, _ = netip.AddrFromSlice(routes[0].Src)
				got = got.Unmap()
				return nil
			})
			if got != src {
				t.Errorf("route to pod %s: src %s, want %s (the node's own address)", dst, got, src)
			}
		}
	}
	t.Run("fresh", checkSources)

	// An older agent's addresses: IPv6 preferred forever, IPv4 global.
	older := func(t *testing.T) {
		inNode(t, node, func() error {
			l, err := netlink.LinkByName(DefaultInterface)
			if err != nil {
				return err
			}
			for _, p := range want {
				a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
				if p.Addr().Is6() {
					a.Flags = unix.IFA_F_NODAD
				}
				if err := netlink.AddrDel(l, a); err != nil {
					return err
				}
				if err := netlink.AddrAdd(l, a); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, tc := range []struct {
		name   string
		ensure func(*slog.Logger, string, []netip.Prefix) (string, error)
	}{
		{"upgraded", EnsureInterface},
		{"upgraded, keeping the other agent's", AddInterfaceAddrs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			older(t)
			inNode(t, node, func() error {
				_, err := tc.ensure(testLogger(t), DefaultInterface, want)
				return err
			})
			if got := interfaceAddrs(t, node, DefaultInterface); !slices.Equal(got, sortedPrefixes(want)) {
				t.Errorf("addresses %v, want %v", got, sortedPrefixes(want))
			}
			checkSources(t)
		})
	}
}
