//go:build linux

// Package netns reads what ztdns needs of a network namespace given by its
// path: its cookie, the key the eBPF programs know a pod's sockets by, and
// its pod addresses. It needs no BPF: the CNI plugin, which records a pod
// by its namespace, links it without the eBPF loader (pkg/redirect).
package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/netlinkdump"
	"github.com/ztdns/ztdns/pkg/model"
)

// ErrNotFound is in Cookie's error when nothing is at the path, or
// something that is not a network namespace: a namespace that was there is
// gone (a runtime unmounts and removes its bind mount; a process's ns/net
// goes with the process).
var ErrNotFound = errors.New("no network namespace there")

// Cookie returns the cookie of the network namespace at netnsPath (a
// bind mount such as /run/netns/NAME or /proc/PID/ns/net): the value
// bpf_get_netns_cookie returns for sockets in it, and the key
// redirect.Redirector.Mark takes.
//
// The kernel exposes it only through a socket (SO_NETNS_COOKIE, Linux 5.14),
// so one is opened inside the namespace, on a locked OS thread that is
// switched back (or discarded) afterwards.
func Cookie(netnsPath string) (uint64, error) {
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
		return 0, fmt.Errorf("netns cookie of %s: %w: %w", netnsPath, ErrNotFound, err)
	}
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	return cookie, nil
}

// MaxAddrs bounds the addresses read from a network namespace found by a
// scan. A pod has a handful; whoever owns a namespace (a pod with
// CAP_NET_ADMIN, any user with unshare -Urn) may give it as many as they
// like, and a namespace holding more is no pod's.
const MaxAddrs = 64

// ErrTooManyAddrs is in Addrs's error when the namespace has more
// addresses than it was asked to read.
var ErrTooManyAddrs = errors.New("too many addresses")

// netlinkRecvSize holds any datagram of a dump: the kernel sizes them by
// the reader's buffer, up to 32 KiB.
const netlinkRecvSize = 32 << 10

// Addrs lists the unicast addresses of the interfaces in the network
// namespace at netnsPath, without loopback and link-local ones: the pod IPs
// to record with redirect.Redirector.Mark. IPv4 addresses come first. It
// reads the kernel's dump itself and stops past max addresses of any kind
// (ErrTooManyAddrs): a netlink library reads a dump whole into memory
// (1.35 KB an address), and never stopping would read all of a namespace
// made to hold tens of thousands.
func Addrs(netnsPath string, max int) ([]netip.Addr, error) {
	fd, err := netlinkdump.Socket(netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	// Closing the socket ends a dump left unread.
	defer unix.Close(fd)
	buf := make([]byte, netlinkRecvSize)
	// A dump the addresses changed under (NLM_F_DUMP_INTR) may miss some:
	// it is asked again once.
	var addrs []netip.Addr
	err = netlinkdump.RetryOnce(func(attempt int) (interrupted bool, err error) {
		addrs, interrupted, err = dumpAddrs(fd, uint32(attempt)+1, buf, max)
		return interrupted, err
	})
	if errors.Is(err, netlinkdump.ErrInterrupted) {
		return nil, fmt.Errorf("list addresses in %s: they %w", netnsPath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", netnsPath, err)
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(addrs), nil
}

// dumpAddrs asks the kernel for every address (RTM_GETADDR, any family) and
// reads its answer one datagram at a time into buf, keeping pod addresses,
// until NLMSG_DONE, an error, or an address past max.
func dumpAddrs(fd int, seq uint32, buf []byte, max int) (addrs []netip.Addr, interrupted bool, err error) {
	var ifaddrmsg [unix.SizeofIfAddrmsg]byte // ifa_family AF_UNSPEC: all
	if err := netlinkdump.Request(fd, unix.RTM_GETADDR, unix.NLM_F_DUMP, seq, ifaddrmsg[:]); err != nil {
		return nil, false, fmt.Errorf("send netlink request: %w", err)
	}
	recv := netlinkdump.Receiver(fd, buf)
	seen := 0
	interrupted, err = netlinkdump.Read(recv, seq, func(typ, _ uint16, data []byte) error {
		if typ != unix.RTM_NEWADDR {
			return nil
		}
		if seen++; seen > max {
			return fmt.Errorf("%w: more than %d", ErrTooManyAddrs, max)
		}
		if ip, ok := ifaddrIP(data); ok && model.PodAddr(ip) {
			addrs = append(addrs, ip.Unmap())
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return addrs, interrupted, nil
}

// ifaddrIP returns the address of an RTM_NEWADDR message: IFA_LOCAL, which
// is the interface's own on a point-to-point link (IFA_ADDRESS is then the
// peer's), or else IFA_ADDRESS.
func ifaddrIP(data []byte) (netip.Addr, bool) {
	if len(data) < unix.SizeofIfAddrmsg {
		return netip.Addr{}, false
	}
	var address, local netip.Addr
	netlinkdump.Attrs(data, unix.SizeofIfAddrmsg, func(typ uint16, v []byte) {
		switch typ {
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(v)
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(v)
		}
	})
	if local.IsValid() {
		return local, true
	}
	return address, address.IsValid()
}
