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
	"sync/atomic"

	"github.com/ztdns/ztdns/pkg/model"
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
// agent itself (isSelf). A node whose resolv.conf names the agent (so that
// node processes use it) would otherwise have it forward its misses to
// itself: identical-query sharing ends the loop, but every such query
// waits for the timeout and fails.
func withoutSelf(upstreams, addrs []netip.AddrPort, local func() []netip.Addr) (kept, self []netip.AddrPort) {
	var own []netip.Addr // the node's addresses, read once if needed
	read := false
	once := func() []netip.Addr {
		if !read {
			own, read = local(), true
		}
		return own
	}
	for _, u := range upstreams {
		if isSelf(u, addrs, once) {
			self = append(self, u)
		} else {
			kept = append(kept, u)
		}
	}
	return kept, self
}

// isSelf reports whether the nameserver u is the agent itself: one of its
// addresses (addrs, with the same port), or, for an unspecified one
// (0.0.0.0, ::), any address of its family local returns (the node's own)
// or loopback of its family: the resolver binds [::] for IPv6 alone.
// local is called only for an unspecified address. IPv4-mapped addresses
// count as IPv4.
func isSelf(u netip.AddrPort, addrs []netip.AddrPort, local func() []netip.Addr) bool {
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
		if ua.IsLoopback() || slices.Contains(local(), ua) {
			return true
		}
	}
	return false
}

// ownAddrs are the agent's own addresses, for a nameserver a pod names to
// be checked against on the resolver's path (forwardable): its listen and
// slot addresses, and the node's addresses when one of those is
// unspecified, read at start and again at each attachment check (refresh)
// rather than for each query.
type ownAddrs struct {
	addrs []netip.AddrPort
	node  atomic.Pointer[[]netip.Addr]
	// netns is the network namespace the node's addresses were first read
	// in; 0: none are needed. A read from a thread in another one (a test
	// starts the agent in a node's namespace, and runs its other
	// goroutines in its own) would read another node's: it is skipped.
	netns uint64
	local func() []netip.Addr
}

// newOwnAddrs reads the node's addresses with local when one of addrs is
// unspecified.
func newOwnAddrs(addrs []netip.AddrPort, local func() []netip.Addr) *ownAddrs {
	o := &ownAddrs{addrs: slices.Clone(addrs), local: local}
	if slices.ContainsFunc(addrs, func(ap netip.AddrPort) bool { return ap.Addr().IsUnspecified() }) {
		o.netns, _ = ownNetnsCookie()
		l := local()
		o.node.Store(&l)
	}
	return o
}

// refresh reads the node's addresses again, when they are needed and the
// calling thread is in the namespace they were first read in.
func (o *ownAddrs) refresh() {
	if o == nil || o.netns == 0 {
		return
	}
	if c, err := ownNetnsCookie(); err != nil || c != o.netns {
		return
	}
	l := o.local()
	o.node.Store(&l)
}

// has reports whether u is the agent itself (isSelf).
func (o *ownAddrs) has(u netip.AddrPort) bool {
	return isSelf(u, o.addrs, func() []netip.Addr {
		if l := o.node.Load(); l != nil {
			return *l
		}
		return nil
	})
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

// The cluster DNS Service, as kubelet's --cluster-dns names it in every
// ClusterFirst pod's resolv.conf.
const (
	clusterDNSNamespace = "kube-system"
	clusterDNSService   = "kube-dns"
)

// maxClusterDNSKnown bounds the cluster DNS addresses made known upstreams
// over the agent's life: a known label is never taken back, and the
// Service's addresses change only when it is made again.
const maxClusterDNSKnown = 8

// knowClusterDNS makes the cluster DNS Service's addresses in s, on port 53
// as pods ask them, known upstreams (knownUpstreams): the chart's agent
// runs with dnsPolicy: Default, so its --upstream is the node's resolver,
// and the nameserver nearly every pod asks would otherwise compete with
// the addresses pods choose for the per-nameserver metric labels, and
// count as a pod's choice in ZtdnsServfailRatioHigh.
func (a *Agent) knowClusterDNS(s *model.Snapshot) {
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Namespace != clusterDNSNamespace || svc.Name != clusterDNSService {
			continue
		}
		var add []netip.AddrPort
		for _, ip := range svc.ClusterIPs {
			u := netip.AddrPortFrom(ip.Unmap(), 53)
			if !slices.Contains(a.clusterDNS, u) && len(a.clusterDNS)+len(add) < maxClusterDNSKnown {
				add = append(add, u)
			}
		}
		if len(add) > 0 {
			a.clusterDNS = append(a.clusterDNS, add...)
			a.fwd.KnowUpstreams(add...)
			a.log.Info("the cluster DNS Service's addresses are known upstreams: their metrics keep labels of their own",
				"service", svc.Key(), "upstreams", add)
		}
		return
	}
}
