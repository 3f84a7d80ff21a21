//go:build linux

package testenv

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketStatesCountsExactlyUnderChurn: a port's sockets are counted
// exactly on every read while other sockets of the namespace open and
// close, as they do all through `go test ./...`. (Before: read from
// /proc/self/net/udp, which the kernel hands out a part at a time and
// resumes by position, so sockets opened or closed between the parts made
// some skipped or listed twice: 63 of 64 sockets after a handoff.)
func TestSocketStatesCountsExactlyUnderChurn(t *testing.T) {
	const held, reads = 64, 300
	addr := holdUDPSockets(t, held)
	churnUDPSockets(t, addr.Port())
	wrong, first := 0, 0
	for range reads {
		if n := len(SocketStates(t, "udp", addr)); n != held {
			if wrong == 0 {
				first = n
			}
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d reads counted other than the %d UDP sockets on %s (the first: %d)", wrong, reads, held, addr, first)
	}
}

// The states are the kernel's, as ss and /proc show them: an unconnected
// UDP socket's, a TCP listener's and those of both ends of a connection.
func TestSocketStatesOfEachKind(t *testing.T) {
	udp := holdUDPSockets(t, 1)
	if got := SocketStates(t, "udp", udp); strings.Join(got, ",") != "07" {
		t.Errorf("UDP socket on %s: states %q, want [07] (unconnected)", udp, got)
	}
	ln := socket(t, unix.SOCK_STREAM)
	bindLoopback(t, ln, 0)
	if err := unix.Listen(ln, 1); err != nil {
		t.Fatal(err)
	}
	lnAddr := localAddr(t, ln)
	if got := SocketStates(t, "tcp", lnAddr); strings.Join(got, ",") != "0A" {
		t.Errorf("TCP listener on %s: states %q, want [0A]", lnAddr, got)
	}
	// connect() alone may pick a local port that TIME_WAIT sockets of
	// other connections (another destination) still hold, which the dump
	// of the port lists too; bind() picks one no socket holds.
	client := socket(t, unix.SOCK_STREAM)
	bindLoopback(t, client, 0)
	if err := unix.Connect(client, &unix.SockaddrInet4{Addr: lnAddr.Addr().As4(), Port: int(lnAddr.Port())}); err != nil {
		t.Fatal(err)
	}
	// The accepted connection shares the listener's local address.
	if got := SocketStates(t, "tcp", lnAddr); strings.Join(got, ",") != "0A,01" && strings.Join(got, ",") != "01,0A" {
		t.Errorf("TCP listener with a connection on %s: states %q, want 0A and 01", lnAddr, got)
	}
	if got, other := SocketStates(t, "tcp", localAddr(t, client)), SocketStates(t, "udp", lnAddr); strings.Join(got, ",") != "01" || len(other) != 0 {
		t.Errorf("client of %s: TCP states %q, want [01]; UDP on the listener's address %q, want none", lnAddr, got, other)
	}
}

// holdUDPSockets binds n SO_REUSEPORT UDP sockets on one free loopback
// port, open until the test ends, and returns their address.
func holdUDPSockets(t *testing.T, n int) netip.AddrPort {
	t.Helper()
	var addr netip.AddrPort
	for i := range n {
		fd := socket(t, unix.SOCK_DGRAM)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		bindLoopback(t, fd, int(addr.Port()))
		if i == 0 {
			addr = localAddr(t, fd)
		}
	}
	return addr
}

// churnUDPSockets opens and closes UDP sockets until the test ends: on
// free ports, and on those the kernel keeps in port's hash bucket (ports
// equal modulo the table's size), whose list a reader walks with port's.
func churnUDPSockets(t *testing.T, port uint16) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/udp_hash_entries")
	if err != nil {
		t.Fatal(err)
	}
	buckets, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || buckets <= 0 {
		t.Fatalf("udp_hash_entries %q: %v", b, err)
	}
	ports := []int{0}
	for p := int(port) % buckets; p < 1<<16; p += buckets {
		if p != int(port) && p > 0 {
			ports = append(ports, p)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				continue
			}
			// A port someone else holds fails to bind: the next is tried.
			unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: ports[i%len(ports)]})
			unix.Close(fd)
		}
	})
}

func socket(t *testing.T, typ int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func bindLoopback(t *testing.T, fd, port int) {
	t.Helper()
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
		t.Fatal(err)
	}
}

func localAddr(t *testing.T, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	in := sa.(*unix.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port))
}
