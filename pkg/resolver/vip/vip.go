// Package vip allocates the virtual IPs that ServiceEntry hosts without
// addresses answer with, the way istiod's allocator does when it has not (yet)
// written them into status.addresses.
//
// Every node computes the allocation on its own, so it must not depend on the
// order in which a node happened to see the objects: hosts are placed in a
// fixed order (oldest ServiceEntry first, then by key) at a slot derived from a
// hash of the host name, probing linearly on a collision. Because newer
// ServiceEntries are placed after older ones, creating a ServiceEntry never
// moves an existing host; only deleting one can let a host that once collided
// move back to its own slot.
package vip

import (
	"cmp"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"
)

// The ranges istiod allocates from: the class E 240.240.0.0/16 and the
// benchmarking 2001:2::/48 (RFC 5180), neither routable outside the node.
var (
	PrefixV4 = netip.MustParsePrefix("240.240.0.0/16")
	PrefixV6 = netip.MustParsePrefix("2001:2::/48")
)

// slots is the number of addresses handed out: every third octet, and fourth
// octets 1..254 so no VIP ends in .0 or .255.
const slots = 256 * 254

// Claim asks for a VIP for Host on behalf of the ServiceEntry Owner
// ("namespace/name") created at Created.
type Claim struct {
	Host    string
	Owner   string
	Created time.Time
}

// Pair is the IPv4 and IPv6 VIP of one host.
type Pair struct {
	V4, V6 netip.Addr
}

// Allocate assigns one Pair per distinct host in claims. Addresses in taken
// (VIPs istiod already wrote into some status) are never handed out again.
// The result depends only on the set of claims, not on their order.
func Allocate(claims []Claim, taken []netip.Addr) map[string]Pair {
	ordered := slices.Clone(claims)
	slices.SortFunc(ordered, func(a, b Claim) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.Host, b.Host))
	})

	used := make(map[uint32]bool, len(claims)+len(taken))
	for _, a := range taken {
		if s, ok := slotOf(a); ok {
			used[s] = true
		}
	}
	out := make(map[string]Pair, len(claims))
	for _, c := range ordered {
		if _, done := out[c.Host]; done {
			continue // the same host named by a younger ServiceEntry shares the VIP
		}
		if len(used) >= slots {
			break // exhausted: the remaining hosts get no VIP and are forwarded
		}
		s := home(c.Host)
		for used[s] {
			s = (s + 1) % slots
		}
		used[s] = true
		out[c.Host] = pairOf(s)
	}
	return out
}

// home is a host's preferred slot.
func home(host string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(host))
	return h.Sum32() % slots
}

// pairOf turns a slot into 240.240.T.F and 2001:2::f0f0:TTFF.
func pairOf(s uint32) Pair {
	third, fourth := byte(s/254), byte(s%254+1)
	v6 := PrefixV6.Addr().As16()
	v6[12], v6[13], v6[14], v6[15] = 0xf0, 0xf0, third, fourth
	return Pair{
		V4: netip.AddrFrom4([4]byte{240, 240, third, fourth}),
		V6: netip.AddrFrom16(v6),
	}
}

// slotOf is the inverse of pairOf for addresses inside the ranges.
func slotOf(a netip.Addr) (uint32, bool) {
	var third, fourth byte
	switch {
	case a.Is4() && PrefixV4.Contains(a):
		b := a.As4()
		third, fourth = b[2], b[3]
	case a.Is6() && PrefixV6.Contains(a):
		b := a.As16()
		if b[12] != 0xf0 || b[13] != 0xf0 || slices.ContainsFunc(b[6:12], func(x byte) bool { return x != 0 }) {
			return 0, false
		}
		third, fourth = b[14], b[15]
	default:
		return 0, false
	}
	if fourth == 0 || fourth == 255 {
		return 0, false
	}
	return uint32(third)*254 + uint32(fourth-1), true
}
