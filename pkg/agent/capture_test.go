package agent

import (
	"net/netip"
	"testing"
)

// A learned nameserver on loopback or the unspecified address is the pod's
// own host, not the node's: the resolver must never forward there, nor to
// itself.
func TestForwardable(t *testing.T) {
	resolvers := map[netip.Addr]bool{
		netip.MustParseAddr("169.254.20.53"):      true,
		netip.MustParseAddr("fd00:7a74:646e::53"): true,
	}
	for _, tt := range []struct {
		ns   string
		want bool
	}{
		{"10.96.0.10:53", true},
		{"[2001:db8::53]:53", true},
		{"[::ffff:10.96.0.10]:53", true},
		{"127.0.0.1:53", false},
		{"127.0.0.53:53", false},
		{"127.255.255.254:53", false},
		{"[::1]:53", false},
		{"0.0.0.0:53", false},
		{"[::]:53", false},
		{"[::ffff:127.0.0.1]:53", false},
		{"[::ffff:0.0.0.0]:53", false},
		{"169.254.20.53:53", false},
		{"[::ffff:169.254.20.53]:53", false},
		{"[fd00:7a74:646e::53]:53", false},
	} {
		if got := forwardable(netip.MustParseAddrPort(tt.ns), resolvers); got != tt.want {
			t.Errorf("forwardable(%s) = %v, want %v", tt.ns, got, tt.want)
		}
	}
	if forwardable(netip.AddrPort{}, resolvers) {
		t.Error("forwardable(zero AddrPort) = true, want false")
	}
}
