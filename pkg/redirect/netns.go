//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/model"
)

// ErrNoNetns is in NetnsCookie's error when nothing is at the path, or
// something that is not a network namespace: a namespace that was there is
// gone (a runtime unmounts and removes its bind mount; a process's ns/net
// goes with the process).
var ErrNoNetns = errors.New("no network namespace there")

// NetnsCookie returns the cookie of the network namespace at netnsPath (a
// bind mount such as /run/netns/NAME or /proc/PID/ns/net): the value
// bpf_get_netns_cookie returns for sockets in it, and the key Mark takes.
//
// The kernel exposes it only through a socket (SO_NETNS_COOKIE, Linux 5.14),
// so one is opened inside the namespace, on a locked OS thread that is
// switched back (or discarded) afterwards.
func NetnsCookie(netnsPath string) (uint64, error) {
	var cookie uint64
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("SO_NETNS_COOKIE (Linux 5.14+): %w", err)
		}
		return nil
	})
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	if errors.As(err, &notExist) || errors.As(err, &notNS) {
		return 0, fmt.Errorf("netns cookie of %s: %w: %w", netnsPath, ErrNoNetns, err)
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	return cookie, nil
}

// NetnsAddrs lists the unicast addresses of the interfaces in the network
// namespace at netnsPath, without loopback and link-local ones: the pod IPs
// to record with Mark. IPv4 addresses come first.
func NetnsAddrs(netnsPath string) ([]netip.Addr, error) {
	h, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer nl.Close()
	list, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", netnsPath, err)
	}
	var addrs []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if !model.PodAddr(ip) {
			continue
		}
		addrs = append(addrs, ip.Unmap())
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(addrs), nil
}

// PodInfoFromNetns fills a PodInfo with the first IPv4 and IPv6 address of
// the network namespace at netnsPath.
func PodInfoFromNetns(netnsPath string) (PodInfo, error) {
	addrs, err := NetnsAddrs(netnsPath)
	if err != nil {
		return PodInfo{}, err
	}
	var p PodInfo
	for _, a := range addrs {
		switch {
		case a.Is4() && !p.IPv4.IsValid():
			p.IPv4 = a
		case a.Is6() && !p.IPv6.IsValid():
			p.IPv6 = a
		}
	}
	return p, nil
}
