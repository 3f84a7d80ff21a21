//go:build linux

package sockaddr

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestPutIsTheKernelsLayout: Put writes what golang.org/x/sys/unix's raw
// structs hold for the same address (as the forwarder connected with
// before), and Parse reads it back, v4-mapped addresses unmapped.
func TestPutIsTheKernelsLayout(t *testing.T) {
	for _, c := range []struct {
		ap    string
		inet4 bool
		scope uint32
	}{
		{"192.0.2.1:53", true, 0},
		{"192.0.2.1:53000", false, 0},
		{"[2001:db8::1]:53", false, 0},
		{"[fe80::2]:53000", false, 7},
	} {
		ap := netip.MustParseAddrPort(c.ap)
		var want []byte
		if c.inet4 {
			raw := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
			binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&raw.Port))[:], ap.Port())
			want = (*[unix.SizeofSockaddrInet4]byte)(unsafe.Pointer(&raw))[:]
		} else {
			raw := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16(), Scope_id: c.scope}
			binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&raw.Port))[:], ap.Port())
			want = (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&raw))[:]
		}
		sa := [Len]byte{0xff, 0xff, 0xff, 0xff} // what an earlier address left
		n := Put(&sa, ap, c.inet4, c.scope)
		if string(sa[:n]) != string(want) {
			t.Errorf("%s (inet4 %v, scope %d): % x, want % x", ap, c.inet4, c.scope, sa[:n], want)
		}
		if got, scope, ok := Parse(sa[:n]); !ok || got != ap || scope != c.scope {
			t.Errorf("%s (inet4 %v, scope %d): read back as %v, scope %d (%v)", ap, c.inet4, c.scope, got, scope, ok)
		}
	}
	var sa [Len]byte
	if n := Put(&sa, netip.MustParseAddrPort("[2001:db8::1]:53"), true, 0); n != 0 {
		t.Errorf("an IPv6 address as a sockaddr_in: length %d, want 0", n)
	}
	v6 := sa
	v4 := sa
	Put(&v6, netip.MustParseAddrPort("[2001:db8::1]:53"), false, 0)
	Put(&v4, netip.MustParseAddrPort("192.0.2.1:53"), true, 0)
	for _, b := range [][]byte{nil, {0}, v6[:unix.SizeofSockaddrInet6-1], v4[:unix.SizeofSockaddrInet4-1], sa[:]} {
		if _, _, ok := Parse(b); ok {
			t.Errorf("% x: read as an address", b)
		}
	}
}
