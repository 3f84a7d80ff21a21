package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/sockaddr"
)

// errNotUnicast reports an upstream address that names many hosts: a
// multicast group.
var errNotUnicast = errors.New("not a unicast address")

// dialUDP connects a UDP socket of its own to upstream, which must be a
// unicast address: a multicast group is refused before any socket is made,
// a broadcast address by the kernel. The socket has IP_RECVERR (IPV6_RECVERR)
// set before it is connected, so every ICMP error about what it sends is
// queued for udpSocket to judge (icmp.go).
// Go turns SO_BROADCAST on for every UDP socket it makes; this socket is
// made without it, so a broadcast upstream (the limited 255.255.255.255,
// or a subnet's broadcast address on the node's network) fails to connect
// with EACCES at once instead of being sent. An upstream may be a pod's
// choice (the nameserver it addressed), and the forwarder sends from the
// node: a broadcast would reach every host on the node's network, with the
// node as its source. The socket is made by hand rather than by a
// net.Dialer with a Control function: the dialer's deeper calls grew the
// stack of every goroutine waiting on its exchange from 8 to 16 KiB
// (resolver.TestMemoryPerConnectionAndForward: 22 KB per forwarded query
// waiting, against 13.7 KB).
// It is a descriptor of its own, in no netpoller: the Forwarder's
// udpPoller waits for it, and every call on it is raw (rawsys.go). Before,
// an os.File (os.NewFile put it in the netpoller: an fcntl, and an
// epoll_ctl to add it and one to remove it), and before that a
// net.UDPConn (net.FileConn: 8 system calls more for every exchange).
// The caller closes it (rawClose).
func dialUDP(upstream netip.AddrPort) (int, error) {
	if upstream.Addr().IsMulticast() {
		return -1, errNotUnicast
	}
	var sa [sockaddr.Len]byte
	family, n, err := putSockaddr(&sa, upstream)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	level, opt := unix.IPPROTO_IP, unix.IP_RECVERR
	if family == unix.AF_INET6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVERR
	}
	if err := rawSetsockoptInt(fd, level, opt, 1); err != nil {
		rawClose(fd)
		return -1, os.NewSyscallError("setsockopt IP_RECVERR", err)
	}
	if err := rawConnect(fd, sa[:n]); err != nil {
		rawClose(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// putSockaddr writes upstream into sa as a socket address, its zone (an
// interface's name or index) the scope id, and returns its family and
// length.
func putSockaddr(sa *[sockaddr.Len]byte, upstream netip.AddrPort) (family, n int, err error) {
	if upstream.Addr().Is4() {
		return unix.AF_INET, sockaddr.Put(sa, upstream, true, 0), nil
	}
	var scope uint32
	if zone := upstream.Addr().Zone(); zone != "" {
		ifi, err := net.InterfaceByName(zone)
		if err != nil {
			n, nerr := strconv.Atoi(zone)
			if nerr != nil {
				return 0, 0, fmt.Errorf("zone of %s: %w", upstream, err)
			}
			scope = uint32(n)
		} else {
			scope = uint32(ifi.Index)
		}
	}
	return unix.AF_INET6, sockaddr.Put(sa, upstream, false, scope), nil
}
