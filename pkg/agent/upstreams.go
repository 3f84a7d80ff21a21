// Where the resolver forwards a miss: the pod's own nameserver under
// capture, else the configured upstreams, from which the agent's own
// addresses are left out (withoutSelf).

package agent

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// upstreamsFor is the resolver's UpstreamFunc: the nameserver the pod
// addressed when capture learned it (own), the configured upstreams
// otherwise.
func (a *Agent) upstreamsFor(client, local netip.AddrPort) ([]netip.AddrPort, bool) {
	if a.dataplane != nil {
		if ns, ok := a.dataplane.upstream(client, local); ok {
			return []netip.AddrPort{ns}, true
		}
	}
	return a.cfg.Upstreams, false
}

// withoutSelf splits upstreams into those kept and those that are the
// agent itself: one of its addresses (addrs, with the same port), or, for
// an unspecified one (0.0.0.0, ::), any address of its family local
// returns (the node's own) or loopback of its family: the resolver binds
// [::] for IPv6 alone. A node whose resolv.conf names the agent (so that node
// processes use it) would otherwise have it forward its misses to itself:
// identical-query sharing ends the loop, but every such query waits for
// the timeout and fails. IPv4-mapped addresses count as IPv4.
func withoutSelf(upstreams, addrs []netip.AddrPort, local func() []netip.Addr) (kept, self []netip.AddrPort) {
	var own []netip.Addr // the node's addresses, read once if needed
	read := false
	isSelf := func(u netip.AddrPort) bool {
		ua := u.Addr().Unmap().WithZone("")
		for _, l := range addrs {
			la := l.Addr().Unmap().WithZone("")
			if l.Port() != u.Port() {
				continue
			}
			if la == ua {
				return true
			}
			if !la.IsUnspecified() || la.Is4() != ua.Is4() {
				continue // [::] binds IPv6 alone (IPV6_V6ONLY), 0.0.0.0 IPv4
			}
			if ua.IsLoopback() {
				return true
			}
			if !read {
				own, read = local(), true
			}
			if slices.Contains(own, ua) {
				return true
			}
		}
		return false
	}
	for _, u := range upstreams {
		if isSelf(u) {
			self = append(self, u)
		} else {
			kept = append(kept, u)
		}
	}
	return kept, self
}

// localAddrs are the addresses of the network namespace's interfaces, the
// node's, IPv4-mapped ones unmapped; none when they cannot be read.
func localAddrs() []netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifa := range ifas {
		if p, err := netip.ParsePrefix(ifa.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// selfUpstreamsWarning is status's warning about upstreams left out
// because they are the agent itself; "" if none were.
func (a *Agent) selfUpstreamsWarning() string {
	if len(a.selfUpstreams) == 0 {
		return ""
	}
	return fmt.Sprintf("upstream %s left out: the agent's own address, where it would forward its misses to itself (the node's resolv.conf names the agent?); misses that are not a captured pod's go to %s",
		joinAddrs(a.selfUpstreams), joinAddrs(a.cfg.Upstreams))
}

// joinAddrs lists addresses for a message.
func joinAddrs(as []netip.AddrPort) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func pluralIs(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// captureSlot is the resolver's CaptureSlot: whether local is a resolver
// slot the programs send pods' queries to.
func (a *Agent) captureSlot(local netip.AddrPort) bool {
	if a.dataplane == nil {
		return false
	}
	_, ok := a.dataplane.slots[local]
	return ok
}

// knownUpstreams are the nameservers the operator named: the configured
// upstreams and each single address of the capture list (the cluster DNS,
// typically), asked on port 53 as pods ask it. Their metrics keep their own
// label whatever addresses pods ask first.
func knownUpstreams(cfg Config) []netip.AddrPort {
	known := slices.Clone(cfg.Upstreams)
	if cfg.Capture != nil {
		for _, p := range cfg.Capture.Nameservers {
			if p.IsSingleIP() {
				known = append(known, netip.AddrPortFrom(p.Addr(), 53))
			}
		}
	}
	return known
}
