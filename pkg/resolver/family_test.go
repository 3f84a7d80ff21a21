package resolver

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// serveIPv6Pair serves ls on UDP and TCP on [::1] too, for a pod whose
// address is the IPv6 loopback, and returns the address.
func (ls *limitsServer) serveIPv6Pair(t *testing.T) netip.AddrPort {
	t.Helper()
	udp, tcp := listenPair(t, "[::1]:0")
	go ls.ServeUDP(udp)
	go ls.ServeTCP(tcp)
	return addrPortOf(udp.LocalAddr())
}

// TestAutoVIPsOfThePodsFamily: a pod whose addresses are all of one
// family gets only that family's auto-allocated VIPs, as Istio's sidecar
// (getAllAddressesForProxy filters them by the proxy's families): the
// other family's query is NODATA, with the SOA, and a host whose VIPs are
// all of the other family is unknown to it (forwarded), as the sidecar has
// no address for it. An IPv6-only pod asking A of a host with istiod's
// 240.240.0.0/16 and 2001:2::/48 VIPs would otherwise get an IPv4 address
// it has no route to, and a client that tries the first address only
// (Java's new Socket(host, port)) fails. A ServiceEntry's own
// spec.addresses and a Service's ClusterIPs are answered whatever the
// family; a dual-stack pod and a client that is no known pod get every
// VIP. Before: every pod got both families' VIPs.
func TestAutoVIPsOfThePodsFamily(t *testing.T) {
	status := func(host string, addrs ...string) []model.HostAddress {
		var out []model.HostAddress
		for _, a := range addrs {
			out = append(out, model.HostAddress{Host: host, Address: netip.MustParseAddr(a)})
		}
		return out
	}
	ss := startSlowServer(t, Options{}, &model.Snapshot{
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "ns1", Name: "auto", Hosts: []string{"auto.internal"}, Resolution: "DNS", AutoAllocate: true,
				StatusAddresses: status("auto.internal", "240.240.0.5", "2001:2::5")},
			{Namespace: "ns1", Name: "v4vip", Hosts: []string{"v4vip.internal"}, Resolution: "DNS", AutoAllocate: true,
				StatusAddresses: status("v4vip.internal", "240.240.0.6")},
			{Namespace: "ns1", Name: "fixed", Hosts: []string{"fixed.internal"}, Resolution: "STATIC",
				Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.7")}},
		},
		Services: []model.Service{
			{Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00:96::20")}},
			{Namespace: "ns1", Name: "ext", ExternalName: "auto.internal"},
		},
	},
		`v4vip.internal. 60 IN A 203.0.113.66`,
		`auto.internal. 60 IN A 203.0.113.67`,
	)
	v6only, v4only := netip.IPv6Loopback(), netip.MustParseAddr("127.0.0.21")
	dual, unknown := netip.MustParseAddr("127.0.0.22"), netip.MustParseAddr("127.0.0.23")
	ss.pods.SetSourcePods([]model.Pod{
		{Namespace: "ns1", Name: "v6", IPs: []netip.Addr{v6only}},
		{Namespace: "ns1", Name: "v4", IPs: []netip.Addr{v4only}},
		{Namespace: "ns1", Name: "dual", IPs: []netip.Addr{dual, netip.MustParseAddr("fd00::22")}},
	})
	addr6 := ss.serveIPv6Pair(t)

	const soa = "table's SOA"
	for _, proto := range []string{"udp", "tcp"} {
		for _, c := range []struct {
			from   netip.Addr
			name   string
			qtype  uint16
			answer []string // sorted
			ns     string   // soa: the table's SOA of the host
		}{
			{v6only, "auto.internal.", dns.TypeA, nil, soa},
			{v6only, "auto.internal.", dns.TypeAAAA, []string{"auto.internal.\t0\tIN\tAAAA\t2001:2::5"}, ""},
			{v6only, "auto.internal.ns1.svc.cluster.local.", dns.TypeA, []string{"auto.internal.ns1.svc.cluster.local.\t0\tIN\tCNAME\tauto.internal."}, soa},
			{v6only, "auto.internal.ns1.svc.cluster.local.", dns.TypeAAAA, []string{
				"auto.internal.\t0\tIN\tAAAA\t2001:2::5", "auto.internal.ns1.svc.cluster.local.\t0\tIN\tCNAME\tauto.internal."}, ""},
			// An ExternalName to the host: kube-dns's answer, the host's real address from upstream.
			{v6only, "ext.ns1.svc.cluster.local.", dns.TypeA, []string{"auto.internal.\t0\tIN\tA\t203.0.113.67", "ext.ns1.svc.cluster.local.\t0\tIN\tCNAME\tauto.internal."}, ""},
			{v6only, "v4vip.internal.", dns.TypeA, []string{"v4vip.internal.\t0\tIN\tA\t203.0.113.66"}, ""}, // forwarded
			{v6only, "fixed.internal.", dns.TypeA, []string{"fixed.internal.\t0\tIN\tA\t198.51.100.7"}, ""},
			{v6only, "web.ns1.svc.cluster.local.", dns.TypeA, []string{"web.ns1.svc.cluster.local.\t0\tIN\tA\t10.96.0.20"}, ""},
			{v4only, "auto.internal.", dns.TypeAAAA, nil, soa},
			{v4only, "auto.internal.", dns.TypeA, []string{"auto.internal.\t0\tIN\tA\t240.240.0.5"}, ""},
			{v4only, "v4vip.internal.", dns.TypeA, []string{"v4vip.internal.\t0\tIN\tA\t240.240.0.6"}, ""},
			{dual, "auto.internal.", dns.TypeA, []string{"auto.internal.\t0\tIN\tA\t240.240.0.5"}, ""},
			{dual, "auto.internal.", dns.TypeAAAA, []string{"auto.internal.\t0\tIN\tAAAA\t2001:2::5"}, ""},
			{unknown, "auto.internal.", dns.TypeA, []string{"auto.internal.\t0\tIN\tA\t240.240.0.5"}, ""},
			{unknown, "auto.internal.", dns.TypeAAAA, []string{"auto.internal.\t0\tIN\tAAAA\t2001:2::5"}, ""},
		} {
			m := new(dns.Msg)
			m.SetQuestion(c.name, c.qtype)
			to := ss.addr
			if c.from.Is6() {
				to = addr6
			}
			r, _, err := dnsClientFrom(c.from, proto).Exchange(m, to.String())
			if err != nil {
				t.Fatalf("%s %s %s from %s: %v", proto, c.name, dns.TypeToString[c.qtype], c.from, err)
			}
			rcode, answer, ns := replyText(r)
			slices.Sort(answer)
			tableSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA && r.Ns[0].(*dns.SOA).Ns == "ns.dns.auto.internal."
			if rcode != "NOERROR" || !slices.Equal(answer, c.answer) || tableSOA != (c.ns == soa) {
				t.Errorf("%s %s %s from %s: %s %q, authority %q; want NOERROR %q, %s", proto, c.name, dns.TypeToString[c.qtype], c.from,
					rcode, answer, ns, c.answer, c.ns)
			}
		}
	}
}
