//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ifaceAlias marks an interface as created by ztdns (IFLA_IFALIAS, shown by
// `ip link`): EnsureInterface and RemoveInterface touch no other.
const ifaceAlias = "ztdns resolver addresses"

// DefaultInterfaceAddrs returns the default resolver addresses as host
// prefixes, ready for EnsureInterface.
func DefaultInterfaceAddrs() []netip.Prefix {
	var out []netip.Prefix
	for _, ap := range DefaultResolver4() {
		out = append(out, netip.PrefixFrom(ap.Addr(), 32))
	}
	for _, ap := range DefaultResolver6() {
		out = append(out, netip.PrefixFrom(ap.Addr(), 128))
	}
	return out
}

// IPv6Off says why the resolver cannot serve on IPv6 addresses of the
// interface name in the current network namespace, or returns "" when it
// can: IPv6 disabled at boot (ipv6.disable=1: there is no
// /proc/sys/net/ipv6), or by the interface's net.ipv6.conf.NAME.disable_ipv6,
// which an interface not created yet takes from net.ipv6.conf.default
// (writing net.ipv6.conf.all sets both), or by loopback's
// net.ipv6.conf.lo.disable_ipv6. With lo's set the interface takes the
// addresses and pods reach them, but the node itself does not: whatever it
// sends to one of its own addresses goes through lo, which drops IPv6, so
// the agent's /healthz (which asks every resolver address from the node)
// and forwarding to a node-local IPv6 nameserver would time out. Hardened
// node images often set these (all=1 then default=0 leaves lo off). A
// setting it cannot read does not count: adding the address says then.
func IPv6Off(name string) string {
	return ipv6Off("/proc/sys/net/ipv6", name)
}

func ipv6Off(root, name string) string {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return "IPv6 is disabled in the kernel (ipv6.disable=1)"
	}
	disabled := func(conf string) (string, error) {
		b, err := os.ReadFile(filepath.Join(root, "conf", conf, "disable_ipv6"))
		if err != nil {
			return "", err
		}
		if v := strings.TrimSpace(string(b)); v != "0" {
			return fmt.Sprintf("net.ipv6.conf.%s.disable_ipv6=%s", conf, v), nil
		}
		return "", nil
	}
	why, err := disabled(name)
	if errors.Is(err, os.ErrNotExist) { // not created yet
		why, err = disabled("default")
	}
	if err != nil || why != "" {
		return why
	}
	if why, _ := disabled("lo"); why != "" {
		return why + ": the node cannot reach its own IPv6 addresses"
	}
	return ""
}

// interfaceKinds are tried in order. Any of them gives addresses the kernel
// delivers locally, reachable from the node itself and from pods routing to
// the node. dummy is made for this; kernels without it (these machines)
// still have bridge (a bridge without ports forwards nothing) and ifb
// (which drops whatever is routed to it).
var interfaceKinds = []func(netlink.LinkAttrs) netlink.Link{
	func(a netlink.LinkAttrs) netlink.Link { return &netlink.Dummy{LinkAttrs: a} },
	func(a netlink.LinkAttrs) netlink.Link { return &netlink.Bridge{LinkAttrs: a} },
	func(a netlink.LinkAttrs) netlink.Link { return &netlink.Ifb{LinkAttrs: a} },
}

// EnsureInterface makes sure the interface name exists in the current
// network namespace, was created by ztdns, is up, and carries exactly addrs
// (IPv6 ones deprecated and without duplicate address detection, IPv4 ones
// link-scoped: see resolverAddr). It returns the device kind used ("dummy", "bridge", "ifb").
func EnsureInterface(log *slog.Logger, name string, addrs []netip.Prefix) (string, error) {
	return ensureInterface(log, name, addrs, false)
}

// AddInterfaceAddrs is EnsureInterface keeping the addresses the interface
// has beyond addrs: a new agent binds its own before the agent it takes
// over from, which serves on the others, has stopped.
func AddInterfaceAddrs(log *slog.Logger, name string, addrs []netip.Prefix) (string, error) {
	return ensureInterface(log, name, addrs, true)
}

func ensureInterface(log *slog.Logger, name string, addrs []netip.Prefix, keep bool) (string, error) {
	if log == nil {
		log = slog.Default()
	}
	l, err := findInterface(name)
	switch {
	case err != nil:
		return "", err
	case l == nil:
		l, err = createInterface(name)
		if err != nil {
			return "", err
		}
		log.Info("created resolver interface", "name", name, "kind", l.Type())
	case l.Attrs().Alias != ifaceAlias:
		return "", fmt.Errorf("interface %s exists and was not created by ztdns", name)
	}

	if err := netlink.LinkSetUp(l); err != nil {
		return "", fmt.Errorf("set %s up: %w", name, err)
	}
	if err := syncAddrs(l, addrs, keep); err != nil {
		return "", fmt.Errorf("interface %s: %w", name, err)
	}
	if err := waitLocal(addrs); err != nil {
		return "", fmt.Errorf("interface %s: %w", name, err)
	}
	return l.Type(), nil
}

// CheckAddrsFree refuses, before the interface name is touched, addrs that
// another interface of the current network namespace carries (NodeLocal
// DNSCache's 169.254.20.10, say, on its own interface): on name as well,
// the address would answer locally for whoever set it up there, and
// EnsureInterface would take it away again when it drops its own.
func CheckAddrsFree(name string, addrs []netip.Prefix) error {
	want := map[netip.Addr]bool{}
	for _, p := range addrs {
		want[p.Addr()] = true
	}
	have, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list the node's addresses: %w", err)
	}
	var taken []string
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip = ip.Unmap(); !want[ip] {
			continue
		}
		l, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return fmt.Errorf("look up the interface of %s: %w", ip, err)
		}
		if l.Attrs().Name != name {
			taken = append(taken, fmt.Sprintf("%s is on interface %s", ip, l.Attrs().Name))
		}
	}
	if len(taken) > 0 {
		return fmt.Errorf("resolver addresses the node uses already (%s): give --listen addresses it does not use, for %s alone to carry",
			strings.Join(taken, ", "), name)
	}
	return nil
}

// waitLocal returns once the kernel delivers every address locally. Even
// with NODAD, an IPv6 address gets its local route from addrconf's work
// queue a moment after it was added: a socket connected before that routes
// its packets out of the interface instead, and they are lost.
func waitLocal(addrs []netip.Prefix) error {
	deadline := time.Now().Add(3 * time.Second)
	for _, p := range addrs {
		for {
			routes, err := netlink.RouteGet(p.Addr().AsSlice())
			if err == nil && len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s is not delivered locally yet (route lookup: %v, %v)", p.Addr(), routes, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

func createInterface(name string) (netlink.Link, error) {
	var errs []error
	for _, kind := range interfaceKinds {
		l := kind(netlink.LinkAttrs{Name: name})
		err := netlink.LinkAdd(l)
		if errors.Is(err, unix.EOPNOTSUPP) {
			// "Unknown device type": driver not built.
			errs = append(errs, fmt.Errorf("%s: %w", l.Type(), err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create %s interface %s: %w", l.Type(), name, err)
		}
		created, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetAlias(created, ifaceAlias)
		}
		if err != nil {
			return nil, errors.Join(fmt.Errorf("set up interface %s: %w", name, err), netlink.LinkDel(l))
		}
		return created, nil
	}
	return nil, fmt.Errorf("no device type for interface %s: %w", name, errors.Join(errs...))
}

// infinityLifetime is the kernel's INFINITY_LIFE_TIME: valid_lft forever.
const infinityLifetime = 0xffffffff

// resolverAddr is p as the interface carries it: reachable and bindable,
// but never the source address the kernel picks for another destination.
// Without that, a node whose interface toward a pod has no address of its
// own (Calico's veths: IPv4 none, IPv6 link-local only) would talk to pods
// from a resolver address, which every node has (a NetworkPolicy allowing
// the node no longer matches, replies crossing nodes go astray):
//   - IPv6: deprecated (preferred_lft 0, valid forever). RFC 6724 source
//     selection avoids a deprecated address but for a destination that is
//     the address itself; without duplicate address detection (nodad),
//     so it is usable at once.
//   - IPv4: scope link. With no address on the outgoing device the kernel
//     takes the first address of any device whose scope fits the route's
//     (inet_select_addr), skipping link-scoped ones on other devices; the
//     address's own local route still gives it as the source toward
//     itself.
func resolverAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
		a.ValidLft = infinityLifetime
		a.PreferedLft = 0
	} else {
		a.Scope = unix.RT_SCOPE_LINK
	}
	return a
}

// asWanted says whether have, an address of the interface, already is what
// resolverAddr makes: an older agent added them preferred, and global in
// IPv4.
func asWanted(have netlink.Addr) bool {
	if have.IP.To4() != nil {
		return have.Scope == unix.RT_SCOPE_LINK
	}
	return have.Flags&unix.IFA_F_NODAD != 0 && have.PreferedLft == 0 && have.ValidLft == infinityLifetime
}

// syncAddrs adds the missing addrs, sets those an older agent added with
// other lifetimes or scope right (see resolverAddr) and, unless keep,
// removes other global addresses.
func syncAddrs(l netlink.Link, addrs []netip.Prefix, keep bool) error {
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	want := map[netip.Prefix]bool{}
	for _, p := range addrs {
		want[p] = true
	}
	present := map[netip.Prefix]bool{}
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		if ip.IsLinkLocalUnicast() && ip.Is6() {
			continue // the kernel's own fe80:: address
		}
		if want[p] && asWanted(a) {
			present[p] = true
			continue
		}
		if want[p] && ip.Is6() {
			continue // replacing it sets its lifetimes and flags
		}
		if keep && !want[p] {
			continue
		}
		// An IPv4 address's scope changes only by adding it again.
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	for _, p := range addrs {
		if present[p] {
			continue
		}
		if err := netlink.AddrReplace(l, resolverAddr(p)); err != nil {
			return fmt.Errorf("add %s: %w", p, err)
		}
	}
	return nil
}

// HasInterface reports whether the interface name exists in the current
// network namespace.
func HasInterface(name string) (bool, error) {
	l, err := findInterface(name)
	return l != nil, err
}

// findInterface returns the interface name of the current network
// namespace, nil when there is none.
func findInterface(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return l, nil
}

// RemoveInterface deletes the interface if ztdns created it. A missing
// interface is not an error.
func RemoveInterface(name string) error {
	l, err := findInterface(name)
	if l == nil {
		return err
	}
	if l.Attrs().Alias != ifaceAlias {
		return fmt.Errorf("interface %s was not created by ztdns: leaving it", name)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete interface %s: %w", name, err)
	}
	return nil
}
