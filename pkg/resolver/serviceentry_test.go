package resolver

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// TestServiceEntryOtherTypesForwarded: a ServiceEntry host, a name under a
// wildcard host and a search-list expansion of a host have only their A
// and AAAA records in the table; every other type (TXT, MX, ANY) is the
// real name's, asked upstream, as Istio's proxy and ztunnel forward it (a
// mongodb+srv client reads the host's TXT). An ExternalName pointing at
// such a host gets the CNAME and the host's records from upstream. A
// Service's other types, a host's A and its address's PTR stay the
// table's. Before: NODATA with an SOA owned by the host, and no TXT.
func TestServiceEntryOtherTypesForwarded(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "ns1", Name: "db", Hosts: []string{"db.example"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.5")}},
			{Namespace: "ns1", Name: "wild", Hosts: []string{"*.wild.example"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.6")}},
		},
		Services: []model.Service{
			{Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}},
			{Namespace: "ns1", Name: "ext", ExternalName: "db.example"},
		},
	},
		`db.example. 60 IN A 203.0.113.99`,
		`db.example. 60 IN TXT "authSource=admin"`,
		`db.example. 60 IN MX 10 mx.example.`,
		`api.wild.example. 60 IN TXT "wild"`,
	)
	for _, proto := range []string{"udp", "tcp"} {
		for _, c := range []struct {
			name   string
			qtype  uint16
			rcode  string
			answer []string
			soa    bool // the table's NODATA: its SOA in the authority section
		}{
			{"db.example.", dns.TypeTXT, "NOERROR", []string{"db.example.\t0\tIN\tTXT\t\"authSource=admin\""}, false},
			{"db.example.", dns.TypeMX, "NOERROR", []string{"db.example.\t0\tIN\tMX\t10 mx.example."}, false},
			{"db.example.", dns.TypeANY, "NOERROR", []string{"db.example.\t0\tIN\tA\t203.0.113.99",
				"db.example.\t0\tIN\tMX\t10 mx.example.", "db.example.\t0\tIN\tTXT\t\"authSource=admin\""}, false},
			{"db.example.", dns.TypeCNAME, "NOERROR", nil, false}, // the upstream's NODATA, its SOA
			{"api.wild.example.", dns.TypeTXT, "NOERROR", []string{"api.wild.example.\t0\tIN\tTXT\t\"wild\""}, false},
			{"db.example.ns1.svc.cluster.local.", dns.TypeTXT, "NXDOMAIN", nil, false},
			{"ext.ns1.svc.cluster.local.", dns.TypeTXT, "NOERROR", []string{"db.example.\t0\tIN\tTXT\t\"authSource=admin\"",
				"ext.ns1.svc.cluster.local.\t0\tIN\tCNAME\tdb.example."}, false},
			// The table's, as before.
			{"db.example.", dns.TypeA, "NOERROR", []string{"db.example.\t0\tIN\tA\t198.51.100.5"}, false},
			{"db.example.", dns.TypeAAAA, "NOERROR", nil, true},
			{"web.ns1.svc.cluster.local.", dns.TypeTXT, "NOERROR", nil, true},
			{"5.100.51.198.in-addr.arpa.", dns.TypePTR, "NOERROR", []string{"5.100.51.198.in-addr.arpa.\t0\tIN\tPTR\tdb.example."}, false},
		} {
			r := ss.askType(t, proto, c.name, c.qtype)
			rcode, answer, ns := replyText(r)
			slices.Sort(answer)
			if rcode != c.rcode || !slices.Equal(answer, c.answer) {
				t.Errorf("%s %s %s: %s %q, want %s %q", proto, c.name, dns.TypeToString[c.qtype], rcode, answer, c.rcode, c.answer)
			}
			tableSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA && r.Ns[0].(*dns.SOA).Ns != "ns.test."
			if len(answer) == 0 && tableSOA != c.soa {
				t.Errorf("%s %s %s: authority %q; want the table's SOA: %v", proto, c.name, dns.TypeToString[c.qtype], ns, c.soa)
			}
		}
	}
}

// TestExternalNameToServiceEntryHost: an ExternalName Service whose target
// is a ServiceEntry host (one with a VIP of istiod's, one with
// spec.addresses, one under a wildcard, one under the cluster domain) gets
// what kube-dns answers it: istiod sends ztunnel no ExternalName Service,
// so ztunnel forwards its name to kube-dns, which answers the CNAME and
// the target's own records, from upstream (CoreDNS's backend_lookup), as
// ztdns does for any target outside the table. A target that is a Service
// is still the table's. Before: the ServiceEntry's VIP or address, which
// no nameserver in Istio gives for that name.
func TestExternalNameToServiceEntryHost(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "ns1", Name: "api", Hosts: []string{"api.example.com"}, Resolution: "DNS", AutoAllocate: true,
				StatusAddresses: []model.HostAddress{{Host: "api.example.com", Address: netip.MustParseAddr("240.240.0.5")}}},
			{Namespace: "ns1", Name: "db", Hosts: []string{"db.example"}, Resolution: "STATIC", Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.5")}},
			{Namespace: "ns1", Name: "wild", Hosts: []string{"*.wild.example"}, Resolution: "STATIC", Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.6")}},
			{Namespace: "ns1", Name: "legacy", Hosts: []string{"legacy.ns2.svc.cluster.local"}, Resolution: "STATIC",
				Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.7")}},
		},
		Services: []model.Service{
			{Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}},
			{Namespace: "ns1", Name: "to-api", ExternalName: "api.example.com"},
			{Namespace: "ns1", Name: "to-db", ExternalName: "db.example"},
			{Namespace: "ns1", Name: "to-wild", ExternalName: "x.wild.example"},
			{Namespace: "ns1", Name: "to-legacy", ExternalName: "legacy.ns2.svc.cluster.local"},
			{Namespace: "ns1", Name: "to-web", ExternalName: "web.ns1.svc.cluster.local"},
		},
	},
		`api.example.com. 60 IN A 203.0.113.50`,
		`db.example. 60 IN A 203.0.113.51`,
		`x.wild.example. 60 IN A 203.0.113.52`,
		`legacy.ns2.svc.cluster.local. 60 IN A 10.96.0.77`,
	)
	for _, proto := range []string{"udp", "tcp"} {
		for _, c := range []struct{ name, target, addr string }{
			{"to-api", "api.example.com.", "203.0.113.50"},
			{"to-db", "db.example.", "203.0.113.51"},
			{"to-wild", "x.wild.example.", "203.0.113.52"},
			{"to-legacy", "legacy.ns2.svc.cluster.local.", "10.96.0.77"},
			{"to-web", "web.ns1.svc.cluster.local.", "10.96.0.20"},
		} {
			name := c.name + ".ns1.svc.cluster.local."
			rcode, answer, _ := replyText(ss.askType(t, proto, name, dns.TypeA))
			want := []string{name + "\t0\tIN\tCNAME\t" + c.target, c.target + "\t0\tIN\tA\t" + c.addr}
			if rcode != "NOERROR" || !slices.Equal(answer, want) {
				t.Errorf("%s %s A: %s %q, want %q", proto, name, rcode, answer, want)
			}
		}
	}
}

// TestServiceEntryTTL: a ServiceEntry host's answers, a search-list
// expansion's CNAME to it and its NODATA's SOA take Istio's TTL, 30 s, as
// ztunnel and the sidecar's proxy give every record they make (kube-dns
// never answers these names); a Service's keep the table's, kube-dns's
// (5 s here, its default), on the fast path and the slow one alike; a
// table given another ServiceEntry TTL answers with it. Before: every
// answer took kube-dns's.
func TestServiceEntryTTL(t *testing.T) {
	snap := &model.Snapshot{
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "ns1", Name: "db", Hosts: []string{"db.example"}, Resolution: "STATIC", Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.5")}},
		},
		Services: []model.Service{{Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}}},
	}
	ss := startSlowServer(t, Options{}, snap)
	for _, c := range []struct {
		opts      table.Options
		seTTL     uint32
		name      string
		qtype     uint16
		svc       bool // a Service's answer: kube-dns's TTL
		authority bool // NODATA: the SOA's TTLs too
	}{
		{table.Options{TTL: 5}, 30, "web.ns1.svc.cluster.local.", dns.TypeA, true, false},
		{table.Options{TTL: 5}, 30, "web.ns1.svc.cluster.local.", dns.TypeTXT, true, true},
		{table.Options{TTL: 5}, 30, "db.example.", dns.TypeA, false, false},
		{table.Options{TTL: 5}, 30, "db.example.", dns.TypeAAAA, false, true},
		{table.Options{TTL: 5}, 30, "db.example.ns1.svc.cluster.local.", dns.TypeA, false, false}, // the slow path: CNAME, A
		{table.Options{TTL: 5}, 30, "db.example.ns1.svc.cluster.local.", dns.TypeAAAA, false, true},
		{table.Options{TTL: 5, ServiceEntryTTL: 60}, 60, "db.example.", dns.TypeA, false, false},
		{table.Options{TTL: 5, ServiceEntryTTL: 60}, 60, "web.ns1.svc.cluster.local.", dns.TypeA, true, false},
	} {
		tbl, _ := table.Build(snap, c.opts)
		ss.SetTable(tbl)
		want := c.seTTL
		if c.svc {
			want = 5
		}
		for _, proto := range []string{"udp", "tcp"} {
			r := ss.askType(t, proto, c.name, c.qtype)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 && !c.authority || len(r.Ns) > 0 != c.authority {
				t.Fatalf("%s %s %s: %v", proto, c.name, dns.TypeToString[c.qtype], r)
			}
			for _, rr := range append(r.Answer, r.Ns...) {
				soa, isSOA := rr.(*dns.SOA)
				if rr.Header().Ttl != want || isSOA && soa.Minttl != want {
					t.Errorf("%s %s %s, TTLs %d and ServiceEntries' %d: %s, want TTL %d", proto, c.name, dns.TypeToString[c.qtype],
						c.opts.TTL, c.opts.ServiceEntryTTL, rr, want)
				}
			}
		}
	}
}

// TestZtunnelsChoice: a pod gets the answer ztunnel would give it. A
// ServiceEntry istiod discards (a newer one in the namespace of an older
// one without a VIP) does not answer: the host is forwarded. A wildcard
// ServiceEntry covering an ExternalName Service's name answers it (istiod
// sends ztunnel no ExternalName Service), and one covering a two-label
// name answers it before the Kubernetes short form does. Before: the
// discarded VIP, the CNAME, the Service's address.
func TestZtunnelsChoice(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ss := startSlowServer(t, Options{}, &model.Snapshot{
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "a", Name: "old", Created: t0, Hosts: []string{"api.example.com"}, Resolution: "DNS"},
			{Namespace: "a", Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"api.example.com"}, Resolution: "DNS", AutoAllocate: true,
				StatusAddresses: []model.HostAddress{{Host: "api.example.com", Address: netip.MustParseAddr("240.240.0.5")}}},
			{Namespace: "mesh", Name: "shop", Created: t0, Hosts: []string{"*.shop.svc.cluster.local"}, Resolution: "STATIC",
				Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.9")}},
			{Namespace: "mesh", Name: "corp", Created: t0, Hosts: []string{"*.corp"}, Resolution: "STATIC",
				Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.11")}},
		},
		Services: []model.Service{
			{Namespace: "shop", Name: "foo", ExternalName: "foo.example.com"},
			{Namespace: "corp", Name: "git", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.50")}},
		},
	},
		`api.example.com. 60 IN A 203.0.113.50`,
		`foo.example.com. 60 IN A 203.0.113.51`,
	)
	for _, proto := range []string{"udp", "tcp"} {
		for _, c := range []struct{ name, answer string }{
			{"api.example.com.", "api.example.com.\t0\tIN\tA\t203.0.113.50"},
			{"foo.shop.svc.cluster.local.", "foo.shop.svc.cluster.local.\t0\tIN\tA\t198.51.100.9"},
			{"git.corp.", "git.corp.\t0\tIN\tA\t198.51.100.11"},
		} {
			rcode, answer, _ := replyText(ss.askType(t, proto, c.name, dns.TypeA))
			if rcode != "NOERROR" || !slices.Equal(answer, []string{c.answer}) {
				t.Errorf("%s %s A: %s %q, want %q", proto, c.name, rcode, answer, c.answer)
			}
		}
	}
}
