package table

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// An address's reverse name is spelled as miekg's dns.ReverseAddr (and
// kube-dns) spell it, and parses back to the address: the name `ztdns
// table` lists is the one a PTR query finds.
func TestReverseNameRoundTrip(t *testing.T) {
	for _, a := range []string{"10.96.0.1", "0.0.0.0", "255.255.255.255", "10.0.96.100",
		"2001:db8::1", "fd00:7a74:646e::53", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		addr := netip.MustParseAddr(a)
		name := string(appendReverseName(nil, addr))
		if want, err := dns.ReverseAddr(a); err != nil || name != want {
			t.Errorf("appendReverseName(%s) = %q, want %q (%v)", a, name, want, err)
		}
		if len(name) > reverseNameMax {
			t.Errorf("appendReverseName(%s): %d bytes, over reverseNameMax %d", a, len(name), reverseNameMax)
		}
		if reverseName(addr) != name {
			t.Errorf("reverseName(%s) = %q, appendReverseName %q", a, reverseName(addr), name)
		}
		if !isReverse(name) {
			t.Errorf("isReverse(%q) = false", name)
		}
		if got, ok := parseReverse(name); !ok || got != addr {
			t.Errorf("parseReverse(%s) = %v, %v; want %v", name, got, ok, addr)
		}
	}
}

func TestParseReverse(t *testing.T) {
	for _, bad := range []string{"0.96.10.in-addr.arpa.", "1.0.96.10.in-addr.arpa", "256.0.96.10.in-addr.arpa.", "01.0.96.10.in-addr.arpa.",
		"a.0.96.10.in-addr.arpa.", "1.1.0.96.10.in-addr.arpa.", "1.ip6.arpa.", "in-addr.arpa.", ".in-addr.arpa.",
		"g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."} {
		if a, ok := parseReverse(bad); ok {
			t.Errorf("parseReverse(%q) = %v, want no address", bad, a)
		}
	}
}

func FuzzParseReverse(f *testing.F) {
	f.Add("1.0.96.10.in-addr.arpa.")
	f.Add(reverseName(netip.MustParseAddr("2001:db8::1")))
	f.Fuzz(func(t *testing.T, name string) {
		if a, ok := parseReverse(name); ok && reverseName(a) != name {
			t.Fatalf("parseReverse(%q) = %v, whose reverse name is %q", name, a, reverseName(a))
		}
	})
}
