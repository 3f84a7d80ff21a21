package testenv

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// FreePort returns a loopback address whose UDP and TCP ports were both
// free. Another process may still take it before the caller binds it, so a
// caller that can bind port 0 itself should.
//
// The port is picked at random below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), where the kernel never hands out a port
// by itself: a client socket or a port-0 bind anywhere on the machine
// (another package's tests run at the same time) cannot be given it
// before the caller binds it, and an agent under test refuses a port
// another socket serves on. Above the fixed ports some tests use
// (15053, 19153).
func FreePort(tb testing.TB) netip.AddrPort {
	tb.Helper()
	const first = 20000
	if low := ephemeralLow(); low > first+1000 {
		for range 100 {
			addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(first+rand.IntN(low-first)))
			if pc, ln, err := dnstest.ListenPair(addr); err == nil {
				pc.Close()
				ln.Close()
				return addr
			}
		}
	}
	pc, ln := ListenPair(tb)
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	ln.Close()
	return addr
}

// ephemeralLow is the first port of the kernel's ephemeral range, 0 when
// it cannot be read.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	low, _ := strconv.Atoi(f[0])
	return low
}

// ListenPair opens UDP and TCP sockets on one free loopback port, both
// bound until the caller closes them, so no one else takes the port
// between the two.
func ListenPair(tb testing.TB) (net.PacketConn, net.Listener) {
	tb.Helper()
	pc, ln, err := dnstest.ListenPair(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	return pc, ln
}

// DeadAddr returns a loopback address where nothing listens, UDP or TCP:
// queries to it are refused at once. The port stays held until the test
// ends, so that no other test (or process) binds it meanwhile and turns
// the refusal into a timeout or an answer: over UDP by a socket connected
// to another peer, which takes nothing from anyone else (the kernel
// answers port unreachable), over TCP by a socket bound but not listening
// (a reset).
func DeadAddr(tb testing.TB) netip.AddrPort {
	tb.Helper()
	for range 50 {
		uc, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		if err != nil {
			tb.Fatalf("hold a udp port: %v", err)
		}
		addr := netip.MustParseAddrPort(uc.LocalAddr().String())
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			uc.Close()
			tb.Fatalf("tcp socket: %v", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
			unix.Close(fd)
			uc.Close()
			continue // the port is taken for TCP: another one
		}
		tb.Cleanup(func() {
			unix.Close(fd)
			uc.Close()
		})
		return addr
	}
	tb.Fatal("no loopback port free for both UDP and TCP")
	return netip.AddrPort{}
}
