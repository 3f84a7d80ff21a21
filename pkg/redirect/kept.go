//go:build linux

// What `ztdns uninstall` reads before it removes the programs: the pods
// marked in the pinned pods map and the resolver interface's addresses,
// where the sockets those pods connected while captured still point.

package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// PinnedMarks returns the network namespace cookies of the pods marked in
// the pods map pinned under bpffs (empty: Config's default), of whatever
// layout its values are: only its keys are read. No pin: none.
func PinnedMarks(bpffs string) ([]uint64, error) {
	cfg, err := Config{BPFFS: bpffs}.withDefaults()
	if err != nil {
		return nil, err
	}
	pin := pinPath(cfg.BPFFS, ztdnsMapPods)
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", pin, err)
	}
	defer m.Close()
	if m.KeySize() != 8 {
		return nil, fmt.Errorf("pinned map %s: keys of %d bytes, not a netns cookie's 8", pin, m.KeySize())
	}
	var cookies []uint64
	var key, next uint64
	// At most MaxEntries keys: a map that changes under the walk (a
	// running agent marking pods) may restart it from the first key.
	for err = m.NextKey(nil, &next); err == nil && len(cookies) < int(m.MaxEntries()); err = m.NextKey(key, &next) {
		cookies = append(cookies, next)
		key = next
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return cookies, fmt.Errorf("read pinned map %s: %w", pin, err)
	}
	return cookies, nil
}

// InterfaceAddrs returns the addresses of the resolver's interface name
// if ztdns created it, but an IPv6 link-local one (no pod reaches the
// node's on its own link); none when it is missing.
func InterfaceAddrs(name string) ([]netip.Addr, error) {
	l, err := findInterface(name)
	if l == nil {
		return nil, err
	}
	if l.Attrs().Alias != ifaceAlias {
		return nil, fmt.Errorf("interface %s was not created by ztdns", name)
	}
	list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", name, err)
	}
	var addrs []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !(ip.Is6() && ip.IsLinkLocalUnicast()) {
			addrs = append(addrs, ip.Unmap())
		}
	}
	return addrs, nil
}
