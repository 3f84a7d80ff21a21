package table

import "github.com/ztdns/ztdns/pkg/resolver/vip"

// Why a ServiceEntry host that istiod's rules give a VIP (vip.Eligible,
// vip.HostEligible) is answered without one: the reasons of
// Table.HostsWithoutVIP, a fixed set.
const (
	// NoVIPIstiodPending: VIPs come from istiod's status.addresses, and
	// the entry has none for the host. istiod writes them within
	// milliseconds of a create; a host left so for minutes has istiod down
	// or not allocating (PILOT_ENABLE_IP_AUTOALLOCATE off).
	NoVIPIstiodPending = "istiod_pending"
	// NoVIPIstiodNoIPv4: istiod wrote an IPv6 VIP for the host and no
	// IPv4 one, which it does when its IPv4 range (240.240.0.0/16) is
	// exhausted. It never frees the VIPs of deleted entries until it
	// restarts, so churn exhausts it. Pods with IPv4 addresses only are
	// forwarded.
	NoVIPIstiodNoIPv4 = "istiod_no_ipv4"
	// NoVIPPoolExhausted: ztdns's own allocator has no VIP left
	// (vip.Slots hosts, 65,024, hold them all).
	NoVIPPoolExhausted = "pool_exhausted"
	// NoVIPSourceNone: --vip-source=none, which gives no host a VIP, as
	// istiod with allocation off.
	NoVIPSourceNone = "vip_source_none"
)

// NoVIPReasons are the reasons of Table.HostsWithoutVIP, in a fixed order.
var NoVIPReasons = []string{NoVIPIstiodPending, NoVIPIstiodNoIPv4, NoVIPPoolExhausted, NoVIPSourceNone}

// HostsWithoutVIP counts, by reason (every one of NoVIPReasons, 0
// included), the ServiceEntry hosts that istiod's rules give a VIP but
// that have none in this table, or no IPv4 one: they are forwarded, or
// answered by another object or a wildcard, as `ztdns table` lists them.
// Hosts that get no VIP by those rules (resolution NONE, spec.addresses,
// opted out, a wildcard without DYNAMIC_DNS) are not counted. A host is
// counted once per ServiceEntry that names it, as each would have its own
// VIP.
func (t *Table) HostsWithoutVIP() map[string]int {
	out := make(map[string]int, len(NoVIPReasons))
	for _, r := range NoVIPReasons {
		out[r] = 0
	}
	switch t.vipsFrom {
	case vip.FromStatus:
		out[NoVIPIstiodPending] = t.vips.noVIP
	case vip.FromNowhere:
		out[NoVIPSourceNone] = t.vips.noVIP
	default:
		out[NoVIPPoolExhausted] = t.vips.noVIP
	}
	out[NoVIPIstiodNoIPv4] = t.vips.noIPv4
	return out
}

// AllocatedIPv4VIPs counts the ServiceEntry hosts answered with an
// auto-allocated IPv4 VIP (ztdns's allocator's, or istiod's
// status.addresses), once per ServiceEntry and host: how much of the
// allocator's range the cluster's entries hold now.
func (t *Table) AllocatedIPv4VIPs() int { return t.vips.ipv4 }

// count adds d times what e, an entry joining (1) or leaving (-1) the
// table, counts.
func (c *vipCounts) count(e *Entry, d int) {
	switch {
	case e.addrSource == addrNoVIP:
		c.noVIP += d
	case !e.autoVIPs():
	case e.n4 == 0:
		// istiod writes the IPv6 VIP alone when its IPv4 range is
		// exhausted (nextAddresses).
		c.noIPv4 += d
	default:
		c.ipv4 += d
	}
}
