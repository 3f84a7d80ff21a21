//go:build linux

package sockdiag

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/netns"
)

var (
	resolver4 = netip.MustParseAddr("192.0.2.53")
	resolver6 = netip.MustParseAddr("2001:db8::53")
	other4    = netip.MustParseAddr("192.0.2.54")
)

// newNamespace makes a namespace where 192.0.2.0/24 and 2001:db8::/64 are
// local, and returns it with its cookie.
func newNamespace(t *testing.T) (*testenv.Netns, uint64) {
	t.Helper()
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-sockdiag"))
	n.AddAddr(t, "192.0.2.1/24", "lo")
	n.AddAddr(t, "2001:db8::1/64", "lo")
	cookie, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return n, cookie
}

// connectUDP opens a UDP socket in n connected to to:10053.
func connectUDP(t *testing.T, n *testenv.Netns, family int, to netip.Addr) int {
	t.Helper()
	var fd int
	err := n.Do(func() error {
		var err error
		if fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.Connect(fd, sockaddr(family, netip.AddrPortFrom(to, 10053)))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func sockaddr(family int, ap netip.AddrPort) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// aborted reports whether fd was aborted: its receive says ECONNABORTED
// and it has no peer any more. Abort returns once the kernel has aborted
// the socket: the receive does not wait.
func aborted(fd int) (bool, error) {
	_, _, rerr := unix.Recvfrom(fd, make([]byte, 16), unix.MSG_DONTWAIT)
	_, perr := unix.Getpeername(fd)
	switch {
	case errors.Is(rerr, unix.ECONNABORTED) && errors.Is(perr, unix.ENOTCONN):
		return true, nil
	case errors.Is(rerr, unix.EAGAIN) && perr == nil:
		return false, nil
	}
	return false, errors.Join(rerr, perr)
}

// TestAbort: the UDP sockets and TCP connections of one namespace whose
// peer is a given address are aborted (ECONNABORTED, disconnected); those
// to another address, the server's side of a connection, and sockets of
// another namespace are left as they were.
func TestAbort(t *testing.T) {
	testenv.RequireRoot(t)
	n, cookie := newNamespace(t)
	elsewhere, _ := newNamespace(t)

	udp4 := connectUDP(t, n, unix.AF_INET, resolver4)
	udp6 := connectUDP(t, n, unix.AF_INET6, resolver6)
	mapped := connectUDP(t, n, unix.AF_INET6, netip.AddrFrom16(resolver4.As16()))
	toOther := connectUDP(t, n, unix.AF_INET, other4)
	inOther := connectUDP(t, elsewhere, unix.AF_INET, resolver4)

	// A TCP connection in n to the resolver's address, served in n: the
	// client's side goes, the server's (whose peer is the client) stays.
	var ln net.Listener
	var client net.Conn
	err := n.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(resolver4, 0).String()); err != nil {
			return err
		}
		client, err = net.Dial("tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })

	if _, err := Abort(n.Path(), cookie+1, []netip.Addr{resolver4}); !errors.Is(err, ErrOtherNamespace) {
		t.Errorf("Abort with another namespace's cookie: %v, want ErrOtherNamespace", err)
	}
	if ok, err := aborted(udp4); ok || err != nil {
		t.Fatalf("a socket was aborted though the cookie was another's (%v)", err)
	}

	got, err := Abort(n.Path(), cookie, []netip.Addr{resolver4, resolver6})
	if err != nil {
		t.Fatal(err)
	}
	if got != 4 {
		t.Errorf("Abort destroyed %d sockets, want 4 (UDP to each address, one IPv4-mapped, the TCP client)", got)
	}
	for name, fd := range map[string]int{"IPv4": udp4, "IPv6": udp6, "IPv4-mapped": mapped} {
		if ok, err := aborted(fd); !ok {
			t.Errorf("the UDP socket connected to the resolver (%s) was not aborted (%v)", name, err)
		}
	}
	for name, fd := range map[string]int{"to another address": toOther, "in another namespace": inOther} {
		if ok, err := aborted(fd); ok || err != nil {
			t.Errorf("the UDP socket %s was aborted (%v)", name, err)
		}
	}
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNABORTED) {
		t.Errorf("the TCP client's read: %v, want ECONNABORTED", err)
	}
	// The server's side is only told of the reset.
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("the TCP server's read: %v, want ECONNRESET from the client's reset", err)
	}

	if again, err := Abort(n.Path(), cookie, []netip.Addr{resolver4, resolver6}); err != nil || again != 0 {
		t.Errorf("a second Abort: %d, %v; want nothing left", again, err)
	}
	if _, err := Abort("/run/netns/ztdns-no-such-namespace", cookie, []netip.Addr{resolver4}); !errors.Is(err, netns.ErrNotFound) {
		t.Errorf("Abort of a missing namespace: %v, want netns.ErrNotFound", err)
	}
}
