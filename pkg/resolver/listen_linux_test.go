//go:build linux

package resolver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestCheckNotServed: an address where a resolver's sockets are bound
// (SO_REUSEPORT, which would let a second resolver bind beside them) is
// reported served, over UDP and over TCP, and so is one whose port another
// socket holds on the wildcard address; the report names the address and
// how to find who serves there. A free address, one a resolver gone left
// TCP connections in TIME_WAIT on, and port 0 are not served.
func TestCheckNotServed(t *testing.T) {
	served := func(t *testing.T, addr netip.AddrPort, network string) {
		t.Helper()
		err := CheckNotServed(addr)
		var se *ServedError
		if !errors.As(err, &se) || se.Network != network || se.Addr != addr || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("CheckNotServed(%s) = %v, want a %s ServedError", addr, err, network)
		}
		for _, want := range []string{
			network + " " + addr.String(),
			"another process already serves on this address",
			fmt.Sprintf("ss -l%cnp 'sport = :%d'", network[0], addr.Port()),
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("CheckNotServed(%s) = %q, want it to say %q", addr, err, want)
			}
		}
	}

	t.Run("resolver", func(t *testing.T) {
		addr := testenv.FreePort(t)
		for range 2 { // --udp-sockets 2
			c, err := ListenUDP(addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		ln, err := ListenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		served(t, addr, "udp")
	})
	t.Run("tcp only", func(t *testing.T) {
		addr := testenv.FreePort(t)
		ln, err := ListenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		served(t, addr, "tcp")
	})
	t.Run("wildcard", func(t *testing.T) {
		addr := testenv.FreePort(t)
		c, err := ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), addr.Port()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		served(t, addr, "udp")
	})
	t.Run("free", func(t *testing.T) {
		addr := testenv.FreePort(t)
		if err := CheckNotServed(addr); err != nil {
			t.Fatalf("CheckNotServed(%s) = %v, want nil", addr, err)
		}
		// It holds nothing: the resolver binds there next.
		c, err := ListenUDP(addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := CheckNotServed(netip.MustParseAddrPort("127.0.0.1:0")); err != nil {
			t.Fatalf("CheckNotServed(port 0) = %v, want nil", err)
		}
	})
	t.Run("time wait", func(t *testing.T) {
		addr := testenv.FreePort(t)
		ln, err := ListenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		client, err := net.Dial("tcp", addr.String())
		if err != nil {
			ln.Close()
			t.Fatal(err)
		}
		defer client.Close()
		conn, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		conn.Close() // the resolver's side closes first: its end waits in TIME_WAIT
		if _, err := io.ReadAll(client); err != nil {
			t.Fatal(err)
		}
		client.Close()
		if !timeWait(t, addr) {
			t.Fatalf("no connection in TIME_WAIT on %s", addr)
		}
		if err := CheckNotServed(addr); err != nil {
			t.Fatalf("CheckNotServed(%s) with a connection in TIME_WAIT = %v, want nil", addr, err)
		}
		ln, err = ListenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
	})
}

// timeWait reports whether the kernel lists a TCP connection in
// TIME_WAIT from addr (an IPv4 address).
func timeWait(t *testing.T, addr netip.AddrPort) bool {
	t.Helper()
	return slices.Contains(testenv.SocketStates(t, "tcp", addr), "06") // TIME_WAIT
}
