package resolver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestShortFormOtherTypesForwarded: a Service's short forms ("web.",
// "web.ns1.", "web.ns1.svc.", and a search-list expansion of one) answer
// A and AAAA from the table, as ztunnel does, and forward every other
// type, as ztunnel does and as kube-dns, which has no such name, does: the
// pod gets its nameserver's answer (here NXDOMAIN). The full name keeps
// kube-dns's NODATA with the cluster zone's SOA, and its SRV name its SRV
// records. Before: NOERROR with the SOA of a zone named after the short
// form ("web. 30 SOA ns.dns.web. …"), which exists nowhere.
func TestShortFormOtherTypesForwarded(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{Services: []model.Service{{
		Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}},
	}}})
	const clusterSOA = "cluster.local.\t0\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. "
	for _, proto := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.", "web.ns1.", "web.ns1.svc.", "web.ns1.ns1.svc.cluster.local."} {
			for _, qtype := range []uint16{dns.TypeTXT, dns.TypeMX, dns.TypeSRV, dns.TypeCNAME, dns.TypeANY} {
				rcode, answer, ns := replyText(ss.askType(t, proto, name, qtype))
				if rcode != "NXDOMAIN" || len(answer) != 0 || len(ns) != 1 || !strings.HasPrefix(ns[0], "test.\t") {
					t.Errorf("%s %s %s: %s %q, authority %q; want the upstream's NXDOMAIN", proto, name, dns.TypeToString[qtype], rcode, answer, ns)
				}
			}
			if r := ss.askType(t, proto, name, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 ||
				!strings.HasSuffix(r.Answer[len(r.Answer)-1].String(), "10.96.0.20") {
				t.Errorf("%s %s A: %s %v, want the table's address", proto, name, dns.RcodeToString[r.Rcode], r.Answer)
			}
		}
		rcode, answer, ns := replyText(ss.askType(t, proto, "web.ns1.svc.cluster.local.", dns.TypeTXT))
		if rcode != "NOERROR" || len(answer) != 0 || len(ns) != 1 || !strings.HasPrefix(ns[0], clusterSOA) {
			t.Errorf("%s the full name's TXT: %s %q, authority %q; want NODATA with cluster.local.'s SOA", proto, rcode, answer, ns)
		}
		_, answer, _ = replyText(ss.askType(t, proto, "_http._tcp.web.ns1.svc.cluster.local.", dns.TypeSRV))
		if want := []string{"_http._tcp.web.ns1.svc.cluster.local.\t0\tIN\tSRV\t0 100 80 web.ns1.svc.cluster.local."}; !slices.Equal(answer, want) {
			t.Errorf("%s the SRV name: %q, want %q", proto, answer, want)
		}
	}
}
