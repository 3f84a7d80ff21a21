//go:build linux

package testenv

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/netlinkdump"
)

// SocketStates returns the state of each IPv4 socket of proto ("udp" or
// "tcp") bound to local in the caller's network namespace, one entry a
// socket, in the kernel's hex as ss and /proc/net show it: "07" for an
// unconnected UDP socket, "0A" for a TCP listener, "06" for a connection
// in TIME_WAIT.
//
// It asks with a NETLINK_SOCK_DIAG dump of local's port, and keeps an
// answer only when all its sockets came in one datagram. The kernel walks
// each bucket of its socket table under the bucket's lock, but resumes a
// dump cut between datagrams by position in the bucket, so that a socket
// opened or closed meanwhile makes another skipped or listed twice (as
// /proc/net/udp, resumed by position too, did under the churn of a full
// `go test ./...`). A port's UDP sockets share one bucket: their count is
// exact. Of TCP, each socket there through the whole call is listed once.
func SocketStates(tb testing.TB, proto string, local netip.AddrPort) []string {
	tb.Helper()
	if !local.Addr().Is4() {
		tb.Fatalf("SocketStates(%s): not an IPv4 address", local)
	}
	protocol := map[string]uint8{"udp": unix.IPPROTO_UDP, "tcp": unix.IPPROTO_TCP}[proto]
	if protocol == 0 {
		tb.Fatalf("SocketStates: protocol %q, want udp or tcp", proto)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		tb.Fatalf("netlink socket: %v", err)
	}
	defer unix.Close(fd)
	// The kernel sizes a dump's first datagram small, and the next ones by
	// the largest buffer a receive offered: a second dump on the socket
	// has room for a few hundred sockets in its first.
	const attempts = 3
	for seq := uint32(1); seq <= attempts; seq++ {
		states, datagrams, err := dumpStates(fd, seq, protocol, local)
		if err != nil {
			tb.Fatalf("list %s sockets on %s: %v", proto, local, err)
		}
		if datagrams <= 1 {
			return states
		}
	}
	tb.Fatalf("%s sockets of port %d take more than one netlink datagram %d times: no exact count", proto, local.Port(), attempts)
	return nil
}

// dumpStates dumps the IPv4 sockets of protocol bound to local's port, in
// any state, and returns the states of those bound to local, and how many
// datagrams carried sockets of the port.
func dumpStates(fd int, seq uint32, protocol uint8, local netip.AddrPort) (states []string, datagrams int, err error) {
	// struct inet_diag_req_v2 (linux/inet_diag.h), after the header:
	// family, protocol, ext, pad, states, then inet_diag_sockid, whose
	// source port filters the dump.
	var r [56]byte
	r[0], r[1] = unix.AF_INET, protocol
	binary.NativeEndian.PutUint32(r[4:], ^uint32(0))
	binary.BigEndian.PutUint16(r[8:], local.Port())
	if err := netlinkdump.Request(fd, unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP, seq, r[:]); err != nil {
		return nil, 0, err
	}
	receive := netlinkdump.Receiver(fd, make([]byte, 64<<10))
	carried := false
	recv := func() ([]byte, error) {
		carried = false
		return receive()
	}
	want := local.Addr().As4()
	_, err = netlinkdump.Read(recv, seq, func(typ, _ uint16, data []byte) error {
		// struct inet_diag_msg: family, state, timer, retrans, then
		// inet_diag_sockid: source port, destination port, source address.
		if typ != unix.SOCK_DIAG_BY_FAMILY || len(data) < 24 {
			return nil
		}
		if !carried {
			carried = true
			datagrams++
		}
		if data[0] == unix.AF_INET && binary.BigEndian.Uint16(data[4:]) == local.Port() && [4]byte(data[8:12]) == want {
			states = append(states, fmt.Sprintf("%02X", data[1]))
		}
		return nil
	})
	return states, datagrams, err
}
