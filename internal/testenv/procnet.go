package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// SocketStates returns the state of each socket that /proc/self/net/proto
// ("udp" or "tcp": this network namespace's IPv4 sockets) lists bound to
// local, one entry a socket, in the kernel's hex: "07" for an unconnected
// UDP socket, "0A" for a TCP listener, "06" for a connection in TIME_WAIT.
func SocketStates(tb testing.TB, proto string, local netip.AddrPort) []string {
	tb.Helper()
	table, err := os.ReadFile("/proc/self/net/" + proto)
	if err != nil {
		tb.Fatal(err)
	}
	a := local.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], local.Port())
	var states []string
	for _, line := range strings.Split(string(table), "\n") {
		// sl local_address rem_address st ...
		if f := strings.Fields(line); len(f) > 3 && f[1] == want {
			states = append(states, f[3])
		}
	}
	return states
}

// OpenFDs counts the open descriptors of process pid (os.Getpid() for the
// test's own): how a test sees that what it ran left none open.
func OpenFDs(tb testing.TB, pid int) int {
	tb.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	return len(entries)
}
