//go:build linux

// Package sockaddr writes and reads the kernel's sockaddr_in and
// sockaddr_in6 as bytes, for raw system calls: the resolver's replies
// (sendto, sendmmsg) and the forwarder's connect take no unix.Sockaddr,
// whose conversion allocates.
package sockaddr

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Len fits a sockaddr_in6, and so a sockaddr_in.
const Len = unix.SizeofSockaddrInet6

// Put writes ap into sa: a sockaddr_in when inet4, for an AF_INET socket,
// else a sockaddr_in6 with scope id scope (an IPv4 address v4-mapped; ap's
// zone is the caller's to turn into scope). It returns the address's
// length, or 0 when inet4 and ap is no IPv4 address.
func Put(sa *[Len]byte, ap netip.AddrPort, inet4 bool, scope uint32) int {
	*sa = [Len]byte{}
	binary.BigEndian.PutUint16(sa[2:], ap.Port())
	if inet4 {
		if !ap.Addr().Is4() {
			return 0
		}
		binary.NativeEndian.PutUint16(sa[0:], unix.AF_INET)
		a := ap.Addr().As4()
		copy(sa[4:8], a[:])
		return unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(sa[0:], unix.AF_INET6)
	a := ap.Addr().As16()
	copy(sa[8:24], a[:])
	binary.NativeEndian.PutUint32(sa[24:28], scope)
	return unix.SizeofSockaddrInet6
}

// Parse reads a sockaddr_in or sockaddr_in6 as the kernel wrote it: its
// address, IPv4-mapped unmapped, without a zone, and port, and a
// sockaddr_in6's scope id (0 for a sockaddr_in). ok is false for another
// family or a short one.
func Parse(b []byte) (ap netip.AddrPort, scope uint32, ok bool) {
	if len(b) < 2 {
		return netip.AddrPort{}, 0, false
	}
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		if len(b) < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, 0, false
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:])), 0, true
	case unix.AF_INET6:
		if len(b) < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, 0, false
		}
		a := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[2:])), binary.NativeEndian.Uint32(b[24:28]), true
	}
	return netip.AddrPort{}, 0, false
}
