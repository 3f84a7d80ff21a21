package conformance

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// specCase is one rule of the Kubernetes DNS-Based Service Discovery
// specification, version 1.1.0 (kubernetes/dns, docs/specification.md),
// asked by a pod in namespace default.
type specCase struct {
	section string // the specification's section the rule is in
	rule    string
	qname   string
	qtype   uint16
	rcode   int
	// answer is the exact answer section, sorted "owner TYPE rdata".
	answer []string
	// zone is the zone whose SOA a local negative answer carries.
	zone string
	// forwarded: ztdns leaves the name to the cluster's nameserver (the
	// test's upstream plays kube-dns), which answers it.
	forwarded bool
}

// The answers the upstream gives as the cluster's nameserver and the
// internet.
var specUpstream = []string{
	`dns-version.cluster.local. 28800 IN TXT "1.1.0"`,
	"www.example.com. 120 IN A 203.0.113.53",
	"www.example.com. 120 IN AAAA 2001:db8::53",
}

// TestSpecification walks the specification section by section, one case
// per rule, against testdata/spec (its examples, and Kubernetes' StatefulSet
// tutorial made dual-stack), over UDP and TCP.
func TestSpecification(t *testing.T) {
	up := startUpstream(t, specUpstream...)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, "testdata/spec")
	const (
		kubernetes = "kubernetes.default.svc.cluster.local."
		dual       = "dual.other.svc.cluster.local."
		headless   = "headless.default.svc.cluster.local."
		nginx      = "nginx.default.svc.cluster.local."
		web0       = "web-0.nginx.default.svc.cluster.local."
		web1       = "web-1.nginx.default.svc.cluster.local."
		cluster    = "cluster.local."
	)
	web0v6 := dnstest.Reverse("2001:db8:244:1::10")
	cases := []specCase{
		{section: "2.1", rule: "comparisons are case-insensitive", qname: "KUBERNETES.Default.SVC.Cluster.Local.", qtype: dns.TypeA,
			answer: []string{"KUBERNETES.Default.SVC.Cluster.Local. A 10.3.0.1"}},
		{section: "2.1", rule: "an endpoint without a hostname is named by a system-assigned identifier", qname: "10-3-0-102." + headless, qtype: dns.TypeA,
			answer: []string{"10-3-0-102." + headless + " A 10.3.0.102"}},
		{section: "2.1", rule: "a not-ready endpoint has no record", qname: "my-pet-3." + headless, qtype: dns.TypeA,
			rcode: dns.RcodeNameError, forwarded: true},
		{section: "2.1", rule: "publishNotReadyAddresses makes every endpoint ready", qname: "tolerant.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"tolerant.default.svc.cluster.local. A 10.3.4.1"}},
		{section: "2.2", rule: "dns-version TXT, from the cluster's nameserver", qname: "dns-version.cluster.local.", qtype: dns.TypeTXT,
			answer: []string{`dns-version.cluster.local. TXT "1.1.0"`}, forwarded: true},

		{section: "2.3.1", rule: "A record of an IPv4 ClusterIP", qname: kubernetes, qtype: dns.TypeA,
			answer: []string{kubernetes + " A 10.3.0.1"}},
		{section: "2.3.1", rule: "A record of a dual-stack ClusterIP", qname: dual, qtype: dns.TypeA, answer: []string{dual + " A 10.3.0.30"}},
		{section: "2.3.1", rule: "AAAA record of a dual-stack ClusterIP", qname: dual, qtype: dns.TypeAAAA, answer: []string{dual + " AAAA 2001:db8:3::30"}},
		{section: "2.3.1", rule: "no AAAA for an IPv4 ClusterIP: NODATA with the zone's SOA", qname: kubernetes, qtype: dns.TypeAAAA,
			answer: []string{}, zone: cluster},
		{section: "2.3.1", rule: "no TXT for a Service: NODATA with the zone's SOA", qname: kubernetes, qtype: dns.TypeTXT,
			answer: []string{}, zone: cluster},
		{section: "2.3.2", rule: "SRV record of a named port", qname: "_https._tcp." + kubernetes, qtype: dns.TypeSRV,
			answer: []string{"_https._tcp." + kubernetes + " SRV 0 100 443 " + kubernetes}},
		{section: "2.3.2", rule: "SRV record of a dual-stack Service's named port, once", qname: "_http._tcp." + dual, qtype: dns.TypeSRV,
			answer: []string{"_http._tcp." + dual + " SRV 0 100 80 " + dual}},
		{section: "2.3.2", rule: "an unnamed port has no SRV record", qname: dual, qtype: dns.TypeSRV, answer: []string{}, zone: cluster},
		{section: "2.3.2", rule: "a port name the Service does not have", qname: "_nope._tcp." + kubernetes, qtype: dns.TypeSRV,
			rcode: dns.RcodeNameError, forwarded: true},
		{section: "2.3.3", rule: "PTR record of an IPv4 ClusterIP", qname: "1.0.3.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"1.0.3.10.in-addr.arpa. PTR " + kubernetes}},
		{section: "2.3.3", rule: "PTR record of an IPv6 ClusterIP", qname: dnstest.Reverse("2001:db8:3::30"), qtype: dns.TypePTR,
			answer: []string{dnstest.Reverse("2001:db8:3::30") + " PTR " + dual}},
		{section: "2.3.3", rule: "no A record at a reverse name: NODATA with the reverse zone's SOA", qname: "1.0.3.10.in-addr.arpa.", qtype: dns.TypeA,
			answer: []string{}, zone: "in-addr.arpa."},

		{section: "2.4.1", rule: "A records of every ready endpoint", qname: headless, qtype: dns.TypeA,
			answer: []string{headless + " A 10.3.0.100", headless + " A 10.3.0.101", headless + " A 10.3.0.102"}},
		{section: "2.4.1", rule: "A record of an endpoint's hostname", qname: "my-pet." + headless, qtype: dns.TypeA,
			answer: []string{"my-pet." + headless + " A 10.3.0.100"}},
		{section: "2.4.1", rule: "one A record for each IP of a hostname", qname: "twin.twins.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"twin.twins.default.svc.cluster.local. A 10.3.1.1", "twin.twins.default.svc.cluster.local. A 10.3.1.2"}},
		{section: "2.4.1", rule: "no ready endpoint: NXDOMAIN", qname: "empty.default.svc.cluster.local.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, forwarded: true},
		{section: "2.4.1", rule: "no AAAA for IPv4-only endpoints: NODATA with the zone's SOA", qname: headless, qtype: dns.TypeAAAA,
			answer: []string{}, zone: cluster},
		{section: "2.4.1", rule: "dual-stack StatefulSet: A records of the Service", qname: nginx, qtype: dns.TypeA,
			answer: []string{nginx + " A 10.244.1.10", nginx + " A 10.244.2.11"}},
		{section: "2.4.1", rule: "dual-stack StatefulSet: AAAA records of the Service", qname: nginx, qtype: dns.TypeAAAA,
			answer: []string{nginx + " AAAA 2001:db8:244:1::10", nginx + " AAAA 2001:db8:244:2::11"}},
		{section: "2.4.1", rule: "dual-stack StatefulSet: A record of web-0", qname: web0, qtype: dns.TypeA,
			answer: []string{web0 + " A 10.244.1.10"}},
		{section: "2.4.1", rule: "dual-stack StatefulSet: AAAA record of web-0 (from the IPv6 slice)", qname: web0, qtype: dns.TypeAAAA,
			answer: []string{web0 + " AAAA 2001:db8:244:1::10"}},
		{section: "2.4.1", rule: "dual-stack StatefulSet: AAAA record of web-1", qname: web1, qtype: dns.TypeAAAA,
			answer: []string{web1 + " AAAA 2001:db8:244:2::11"}},
		{section: "2.4.2", rule: "SRV records: N ready endpoints times M named ports", qname: "_https._tcp." + headless, qtype: dns.TypeSRV,
			answer: []string{"_https._tcp." + headless + " SRV 0 100 443 10-3-0-102." + headless,
				"_https._tcp." + headless + " SRV 0 100 443 my-pet-2." + headless, "_https._tcp." + headless + " SRV 0 100 443 my-pet." + headless}},
		{section: "2.4.2", rule: "SRV records of the second named port", qname: "_metrics._tcp." + headless, qtype: dns.TypeSRV,
			answer: []string{"_metrics._tcp." + headless + " SRV 0 100 9090 10-3-0-102." + headless,
				"_metrics._tcp." + headless + " SRV 0 100 9090 my-pet-2." + headless, "_metrics._tcp." + headless + " SRV 0 100 9090 my-pet." + headless}},
		{section: "2.4.2", rule: "dual-stack StatefulSet: one SRV record per hostname, not one per slice", qname: "_web._tcp." + nginx, qtype: dns.TypeSRV,
			answer: []string{"_web._tcp." + nginx + " SRV 0 100 80 " + web0, "_web._tcp." + nginx + " SRV 0 100 80 " + web1}},
		{section: "2.4.2", rule: "a named port's number is each endpoint's own", qname: "_http._tcp.canary.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"_http._tcp.canary.default.svc.cluster.local. SRV 0 100 8080 stable.canary.default.svc.cluster.local.",
				"_http._tcp.canary.default.svc.cluster.local. SRV 0 100 9080 next.canary.default.svc.cluster.local."}},
		{section: "2.4.3", rule: "PTR record of an endpoint names its hostname", qname: "100.0.3.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"100.0.3.10.in-addr.arpa. PTR my-pet." + headless}},
		{section: "2.4.3", rule: "PTR record of an endpoint without hostname names its identifier", qname: "102.0.3.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"102.0.3.10.in-addr.arpa. PTR 10-3-0-102." + headless}},
		{section: "2.4.3", rule: "dual-stack StatefulSet: PTR of web-0's IPv4 address (web-0 sorts after nginx)", qname: "10.1.244.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"10.1.244.10.in-addr.arpa. PTR " + web0}},
		{section: "2.4.3", rule: "dual-stack StatefulSet: PTR of web-0's IPv6 address", qname: web0v6, qtype: dns.TypePTR,
			answer: []string{web0v6 + " PTR " + web0}},
		{section: "2.4.3", rule: "no PTR of a not-ready endpoint", qname: "103.0.3.10.in-addr.arpa.", qtype: dns.TypePTR,
			rcode: dns.RcodeNameError, forwarded: true},

		{section: "2.5", rule: "CNAME of an ExternalName, with the target's A record", qname: "foo.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"foo.default.svc.cluster.local. CNAME www.example.com.", "www.example.com. A 203.0.113.53"}},
		{section: "2.5", rule: "CNAME of an ExternalName, with the target's AAAA record", qname: "foo.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			answer: []string{"foo.default.svc.cluster.local. CNAME www.example.com.", "www.example.com. AAAA 2001:db8::53"}},
		{section: "2.5", rule: "CNAME query of an ExternalName", qname: "foo.default.svc.cluster.local.", qtype: dns.TypeCNAME,
			answer: []string{"foo.default.svc.cluster.local. CNAME www.example.com."}},
	}
	for _, proto := range protocols {
		for _, tc := range cases {
			t.Run(proto+"/"+tc.section+" "+tc.rule, func(t *testing.T) {
				resp := r.query(t, proto, fromDefault, tc.qname, tc.qtype, true)
				if resp.Rcode != tc.rcode {
					t.Fatalf("rcode = %s, want %s\n%v", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode], resp)
				}
				// (The second protocol's forwarded answers may come from the cache.)
				if asked := up.Queries(tc.qname) > 0; asked != tc.forwarded {
					t.Errorf("asked the upstream: %v, want %v", asked, tc.forwarded)
				}
				if tc.rcode != dns.RcodeSuccess {
					return
				}
				if got := rrText(resp.Answer); !slices.Equal(got, tc.answer) {
					t.Errorf("answer\n got %q\nwant %q", got, tc.answer)
				}
				if tc.forwarded {
					return
				}
				if !resp.Authoritative {
					t.Error("a local answer is not authoritative")
				}
				for _, rr := range resp.Answer {
					if strings.HasSuffix(rr.Header().Name, cluster) && rr.Header().Ttl != 30 {
						t.Errorf("TTL of %s = %d, want the table's 30", rr.Header().Name, rr.Header().Ttl)
					}
				}
				if len(tc.answer) == 0 {
					checkNegativeSOA(t, resp, tc.zone)
				} else if len(resp.Ns) != 0 {
					t.Errorf("authority section of a positive answer: %v", resp.Ns)
				}
			})
		}
	}
}

// checkNegativeSOA checks that a local negative answer carries the SOA of
// the zone (when zone is "", of some zone the last name of the answer's
// CNAME chain is in, RFC 2308 2.2), as
// CoreDNS's kubernetes plugin writes it, with the table's TTL (30 s) as its
// TTL and negative TTL.
func checkNegativeSOA(t *testing.T, resp *dns.Msg, zone string) {
	t.Helper()
	if len(resp.Ns) != 1 {
		t.Fatalf("authority section %v, want the zone's SOA alone", resp.Ns)
	}
	soa, ok := resp.Ns[0].(*dns.SOA)
	if !ok {
		t.Fatalf("authority section %v, want an SOA", resp.Ns)
	}
	owner := soa.Hdr.Name
	if zone != "" && !strings.EqualFold(owner, zone) {
		t.Errorf("SOA of %q, want the zone %q", owner, zone)
	}
	last := resp.Question[0].Name
	if n := len(resp.Answer); n > 0 {
		if c, ok := resp.Answer[n-1].(*dns.CNAME); ok {
			last = c.Target
		}
	}
	if !dns.IsSubDomain(strings.ToLower(owner), strings.ToLower(last)) {
		t.Errorf("SOA of %q, which %q is not in", owner, last)
	}
	if soa.Hdr.Ttl != 30 || soa.Minttl != 30 {
		t.Errorf("SOA TTL %d, minimum %d; want the table's 30 for both", soa.Hdr.Ttl, soa.Minttl)
	}
	if !strings.EqualFold(soa.Ns, "ns.dns."+owner) || !strings.EqualFold(soa.Mbox, "hostmaster."+owner) ||
		soa.Refresh != 7200 || soa.Retry != 1800 || soa.Expire != 86400 || soa.Serial == 0 {
		t.Errorf("SOA %v, want CoreDNS's: ns.dns.<zone> hostmaster.<zone> <serial> 7200 1800 86400 30", soa)
	}
}
