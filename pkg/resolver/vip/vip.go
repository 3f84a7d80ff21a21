// Package vip decides which ServiceEntry hosts answer with an auto-allocated
// virtual IP, with istiod's rules, and allocates those VIPs when istiod does
// not.
//
// istiod (PILOT_ENABLE_IP_AUTOALLOCATE, on by default since Istio 1.25)
// writes one IPv4 and one IPv6 address per host into each ServiceEntry's
// status.addresses, sequentially from 240.240.0.1 and 2001:2::1 in the order
// it sees the entries (pilot/pkg/controllers/ipallocate). ztunnel routes only
// those, so wherever istiod allocates they are the only right answer (Source
// istiod, or auto when istiod is seen allocating). Allocate is for meshes
// where istiod does not: it gives every node the same VIPs without talking
// to other nodes.
package vip

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// Source says where the VIPs of auto-allocating hosts come from.
type Source string

const (
	// SourceAuto uses istiod's status.addresses when istiod allocates
	// (the Kubernetes source sees its allocator's leader lock, or any
	// ServiceEntry carries status.addresses), and Allocate otherwise.
	SourceAuto Source = "auto"
	// SourceZtdns always uses Allocate and ignores status.addresses.
	SourceZtdns Source = "ztdns"
	// SourceIstiod answers only what istiod wrote into status.addresses.
	SourceIstiod Source = "istiod"
	// SourceNone answers no auto-allocated VIP: every host without
	// spec.addresses is forwarded, status.addresses ignored. It is what
	// ztunnel gets from an istiod run with PILOT_ENABLE_IP_AUTOALLOCATE
	// off, which neither writes nor serves status.addresses, and leaves
	// what it wrote while it was on where it is.
	SourceNone Source = "none"
)

// ParseSource parses a --vip-source value.
func ParseSource(s string) (Source, error) {
	switch src := Source(s); src {
	case SourceAuto, SourceZtdns, SourceIstiod, SourceNone:
		return src, nil
	case "":
		return SourceAuto, nil
	}
	return "", fmt.Errorf("VIP source %q: want auto, ztdns, istiod or none", s)
}

// From is where a name table takes the VIPs of auto-allocating hosts.
type From int

const (
	// FromAllocator: Allocate's.
	FromAllocator From = iota
	// FromStatus: each ServiceEntry's status.addresses; a host istiod has
	// not written has none.
	FromStatus
	// FromNowhere: none at all.
	FromNowhere
)

// From reports where VIPs come from: status.addresses with source istiod,
// or auto when istiod allocates; nowhere with source none; else Allocate.
func (s Source) From(istiodAllocates bool) From {
	switch {
	case s == SourceNone:
		return FromNowhere
	case s == SourceIstiod, s != SourceZtdns && istiodAllocates:
		return FromStatus
	}
	return FromAllocator
}

// The ranges istiod allocates from (PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and
// _IPV6_PREFIX): the class E 240.240.0.0/16 and the benchmarking 2001:2::/48
// (RFC 5180), neither routable outside the node.
var (
	PrefixV4 = netip.MustParsePrefix("240.240.0.0/16")
	PrefixV6 = netip.MustParsePrefix("2001:2::/48")
)

// Eligible reports whether istiod gives se's hosts VIPs
// (ShouldV2AutoAllocateIP): resolution other than NONE (a VIP would hide the
// address the app asked for), no spec.addresses of any kind, and not opted
// out with the label networking.istio.io/enable-autoallocate-ip: "false".
// istiod also serves status.addresses only while this holds: an entry that
// opts out keeps stale status until istiod clears it, and it must not
// answer with them meanwhile.
func Eligible(se *model.ServiceEntry) bool {
	hasAddresses := se.HasSpecAddresses || len(se.Addresses) > 0 || len(se.CIDRs) > 0
	return se.AutoAllocate && se.Resolution != model.ResolutionNone && !hasAddresses
}

// HostEligible reports whether a host of an Eligible entry gets a VIP:
// every plain host, and a wildcard (*.example.com) only with resolution
// DYNAMIC_DNS, where ztunnel resolves the name the app asked for when it
// connects (istiod's keepHost).
func HostEligible(se *model.ServiceEntry, host string) bool {
	return !strings.HasPrefix(host, "*") || se.Resolution == model.ResolutionDynamicDNS
}

// Slots is the number of addresses Allocate hands out: every third octet, and
// fourth octets 1..254 so no VIP ends in .0 or .255.
const Slots = 256 * 254

// Claim asks for a VIP for Host on behalf of the ServiceEntry Owner
// ("namespace/name") created at Created.
type Claim struct {
	Host    string
	Owner   string
	Created time.Time
}

// Key names what a VIP belongs to: one host of one ServiceEntry. As in
// istiod, two ServiceEntries naming one host get a VIP each.
type Key struct {
	Owner, Host string
}

// Pair is the IPv4 and IPv6 VIP of one host.
type Pair struct {
	V4, V6 netip.Addr
}

// Allocate assigns one Pair per distinct (Owner, Host) in claims. The result
// depends only on the set of claims, not on their order: claims are placed
// oldest ServiceEntry first (then by owner and host) at a slot derived from
// a hash of the host name, probing linearly on a collision. Newer entries
// are placed after older ones, so creating a ServiceEntry younger than the
// others moves no existing VIP; one created at the same time as another
// (creationTimestamp has whole seconds) is ordered by owner, and can take
// the other's slot. Deleting one can let a host that once collided move
// back to its own slot, and an older entry that gains a host (or becomes
// eligible) can take a younger host's slot and move it: nothing in the
// cluster records which VIP a host had, and every node must compute the
// same ones from the entries as they are. An older entry with Slots hosts
// leaves none for younger ones.
//
// istiod instead allocates sequentially in the order its informer delivers
// the entries, which a node cannot reproduce on its own: where istiod
// allocates, use its status.addresses (Source).
func Allocate(claims []Claim) map[Key]Pair {
	ordered := slices.Clone(claims)
	slices.SortFunc(ordered, func(a, b Claim) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.Host, b.Host))
	})

	// next holds the used slots, each pointing toward the first free one
	// after it: a probe skips a run of used slots in a few steps, where
	// walking it costs its length (quadratic in the hosts when thousands
	// share a home slot: one host in thousands of entries, or names made
	// to collide).
	next := make(map[uint32]uint32, len(claims))
	out := make(map[Key]Pair, len(claims))
	for _, c := range ordered {
		k := Key{Owner: c.Owner, Host: c.Host}
		if _, done := out[k]; done {
			continue // a host listed twice in one entry gets one VIP
		}
		if len(next) >= Slots {
			break // exhausted: the remaining hosts get no VIP and are forwarded
		}
		s := freeFrom(next, home(c.Host))
		next[s] = (s + 1) % Slots
		out[k] = pairOf(s)
	}
	return out
}

// freeFrom returns the first slot at or after s (wrapping) that next does
// not hold, halving the paths it follows. Slots are never freed, so a used
// slot's pointer may skip any used slots after it.
func freeFrom(next map[uint32]uint32, s uint32) uint32 {
	for {
		n, used := next[s]
		if !used {
			return s
		}
		if nn, ok := next[n]; ok {
			next[s] = nn
		}
		s = n
	}
}

// home is a host's preferred slot.
func home(host string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(host))
	return h.Sum32() % Slots
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
