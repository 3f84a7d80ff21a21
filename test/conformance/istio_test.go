package conformance

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// istioCase is one case of the table in Istio's DNS proxy test
// (istio/istio pkg/dns/client/dns_test.go, testDNS), named as there.
//
// The mapping of its name table (fillTable) to testdata/istio: the proxy
// runs in ns1 with the search list ns1.svc.cluster.local, svc.cluster.local,
// cluster.local, so the asker is a pod in ns1. Registry "Kubernetes" hosts
// are Services (productpage.ns1, example.ns2, svc-with-alt.ns1); the
// AltHost svc-with-alt.ns1.svc.clusterset.local and the remote cluster's
// details.ns2.svc.cluster.remote are ServiceEntry hosts (one cluster domain
// is served); registry "External" hosts are ServiceEntries with addresses.
// Addresses move into ranges that are safe here: 1.1.1.1 → 203.0.113.1,
// 2.2.2.2 → 203.0.113.2, 3.3.3.3 → 203.0.113.3, 9.9.9.9 → 10.96.9.9,
// example's 10.10.10.10 → 10.96.10.10, 15.15.15.15 → 10.96.15.15,
// 11-14.x → 198.51.100.11-14, *.wildcard's 10.10.10.10 → 198.51.100.110,
// *.b.wildcard's 11.11.11.11 → 198.51.100.111, 10.1.2.3 → 198.51.100.123.
// The upstream (makeUpstream) answers www.bing.com, giant and giant-tc (64
// A records; giant-tc truncated by the upstream itself) and NXDOMAIN
// otherwise.
type istioCase struct {
	name  string
	host  string
	qtype uint16
	// proto limits the case to one protocol (Istio's "udp:"/"tcp:" cases).
	proto string
	edns  uint16 // EDNS buffer size, 0 for none
	id    uint16 // the query's ID, 0 for any
	rcode int
	// answer is the exact answer section, in order when ordered is set.
	answer  []string
	ordered bool
	// truncated: the reply has TC set (and answer is not checked).
	truncated bool
	// differs says how ztdns's answer differs from Istio's, and why; the
	// README's "Differences from kube-dns and Istio" has the same.
	differs string
}

func TestIstioDNSTable(t *testing.T) {
	up := startIstioUpstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, "testdata/istio")
	from := netip.MustParseAddr("127.0.0.6") // the pod in ns1
	const pp = "productpage.ns1.svc.cluster.local."
	details := []string{"198.51.100.11", "198.51.100.12", "198.51.100.13", "198.51.100.14"}
	detailsFrom := func(first int) []string {
		var out []string
		for i := range details {
			out = append(out, "details.ns2.svc.cluster.remote. A "+details[(first+i)%len(details)])
		}
		return out
	}
	var giant []string
	for i := range 64 {
		giant = append(giant, fmt.Sprintf("giant. A 198.51.100.%d", 128+i))
	}
	slices.Sort(giant)
	cases := []istioCase{
		{name: "success: non k8s host in local cache", host: "www.google.com.", answer: []string{"www.google.com. A 203.0.113.1"}},
		{name: "success: non k8s host with search namespace yields cname+A record", host: "www.google.com.ns1.svc.cluster.local.",
			answer: []string{"www.google.com. A 203.0.113.1", "www.google.com.ns1.svc.cluster.local. CNAME www.google.com."}},
		{name: "success: non k8s host not in local cache", host: "www.bing.com.", answer: []string{"www.bing.com. A 203.0.113.101"}},
		{name: "success: k8s host - fqdn", host: pp, answer: []string{pp + " A 10.96.9.9"}},
		{name: "not found: k8s host, fqdn with search namespace[0]", host: pp + "ns1.svc.cluster.local.", rcode: dns.RcodeNameError},
		{name: "success: k8s host - name.namespace", host: "productpage.ns1.", answer: []string{"productpage.ns1. A 10.96.9.9"}},
		{name: "success: k8s host - shortname", host: "productpage.", answer: []string{"productpage. A 10.96.9.9"}},
		{name: "success: k8s host (name.namespace) with search namespace yields cname+A record", host: "productpage.ns1.ns1.svc.cluster.local.",
			answer: []string{"productpage.ns1. A 10.96.9.9", "productpage.ns1.ns1.svc.cluster.local. CNAME productpage.ns1."}},
		{name: "success: AAAA query for IPv4 k8s host (name.namespace) with search namespace", host: "productpage.ns1.ns1.svc.cluster.local.",
			qtype: dns.TypeAAAA, answer: []string{"productpage.ns1.ns1.svc.cluster.local. CNAME productpage.ns1."},
			differs: "Istio answers nothing; the CNAME is kept (it answers every type, RFC 1034 3.6.2), with the SOA of NODATA"},
		{name: "success: k8s host - non local namespace - name.namespace", host: "example.ns2.", answer: []string{"example.ns2. A 10.96.10.10"}},
		{name: "success: k8s host - non local namespace - fqdn", host: "example.ns2.svc.cluster.local.",
			answer: []string{"example.ns2.svc.cluster.local. A 10.96.10.10"}},
		{name: "success: k8s host - non local namespace - name.namespace.svc", host: "example.ns2.svc.",
			answer: []string{"example.ns2.svc. A 10.96.10.10"}},
		{name: "failure: k8s host - non local namespace - shortname", host: "example.", rcode: dns.RcodeNameError},
		{name: "success: alt host - name", host: "svc-with-alt.", answer: []string{"svc-with-alt. A 10.96.15.15"}},
		{name: "success: alt host - name.namespace", host: "svc-with-alt.ns1.", answer: []string{"svc-with-alt.ns1. A 10.96.15.15"}},
		{name: "success: alt host - name.namespace.svc", host: "svc-with-alt.ns1.svc.", answer: []string{"svc-with-alt.ns1.svc. A 10.96.15.15"}},
		{name: "success: alt host - name.namespace.svc.cluster.local", host: "svc-with-alt.ns1.svc.cluster.local.",
			answer: []string{"svc-with-alt.ns1.svc.cluster.local. A 10.96.15.15"}},
		{name: "success: alt host - name.namespace.svc.clusterset.local", host: "svc-with-alt.ns1.svc.clusterset.local.",
			answer: []string{"svc-with-alt.ns1.svc.clusterset.local. A 10.96.15.15"}},
		{name: "success: remote cluster k8s svc - same ns and different domain - fqdn", host: "details.ns2.svc.cluster.remote.", id: 2,
			answer: detailsFrom(2), ordered: true, differs: "the order rotates by the query's ID instead of Istio's shuffle"},
		{name: "success: remote cluster k8s svc round robin", host: "details.ns2.svc.cluster.remote.", id: 1,
			answer: detailsFrom(1), ordered: true, differs: "the order rotates by the query's ID instead of Istio's shuffle"},
		{name: "failure: remote cluster k8s svc - same ns and different domain - name.namespace", host: "details.ns2.", rcode: dns.RcodeNameError},
		{name: "success: TypeA query returns A records only", host: "dual.localhost.", answer: []string{"dual.localhost. A 203.0.113.2"}},
		{name: "success: wild card returns A record correctly", host: "foo.wildcard.", answer: []string{"foo.wildcard. A 198.51.100.110"}},
		{name: "success: specific wild card returns A record correctly", host: "a.b.wildcard.", answer: []string{"a.b.wildcard. A 198.51.100.111"}},
		{name: "success: wild card with with search namespace chained pointer correctly", host: "foo.wildcard.ns1.svc.cluster.local.",
			answer:  []string{"foo.wildcard. A 198.51.100.110", "foo.wildcard.ns1.svc.cluster.local. CNAME foo.wildcard."},
			differs: "Istio's CNAME points at the literal *.wildcard.; ztdns's at the name the client meant"},
		{name: "success: wild card with domain returns A record correctly", host: "foo.svc.mesh.company.net.",
			answer: []string{"foo.svc.mesh.company.net. A 198.51.100.123"}},
		{name: "success: wild card with namespace with domain returns A record correctly", host: "foo.foons.svc.mesh.company.net.",
			answer: []string{"foo.foons.svc.mesh.company.net. A 198.51.100.123"}},
		{name: "success: wild card with search domain returns A record correctly", host: "foo.svc.mesh.company.net.ns1.svc.cluster.local.",
			answer: []string{"foo.svc.mesh.company.net. A 198.51.100.123",
				"foo.svc.mesh.company.net.ns1.svc.cluster.local. CNAME foo.svc.mesh.company.net."},
			differs: "Istio's CNAME points at the literal *.svc.mesh.company.net.; ztdns's at the name the client meant"},
		{name: "success: TypeAAAA query returns AAAA records only", host: "dual.localhost.", qtype: dns.TypeAAAA,
			answer: []string{"dual.localhost. AAAA 2001:db8::ff00:42:8329"}},
		{name: "success: Error response if only AAAA records exist for typeA", host: "ipv6.localhost.", answer: []string{},
			differs: "NODATA carries an SOA (RFC 2308), Istio's none"},
		{name: "success: Error response if only A records exist for typeAAAA", host: "ipv4.localhost.", qtype: dns.TypeAAAA, answer: []string{},
			differs: "NODATA carries an SOA (RFC 2308), Istio's none"},
		{name: "udp: large request", host: "giant.", proto: "udp", truncated: true,
			differs: "Istio answers SERVFAIL; ztdns keeps the records that fit and sets TC so that the client may retry over TCP (RFC 1035 4.2.1)"},
		{name: "tcp: large request", host: "giant.", proto: "tcp", answer: giant},
		{name: "large request edns", host: "giant.", edns: dns.MaxMsgSize, answer: giant},
		{name: "large request truncated", host: "giant-tc.", truncated: true},
		{name: "success: hostname with a period", host: "example.localhost.", answer: []string{"example.localhost. A 203.0.113.3"}},
	}
	for _, proto := range protocols {
		for _, tc := range cases {
			if tc.proto != "" && tc.proto != proto {
				continue
			}
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				if tc.differs != "" {
					t.Logf("differs from Istio: %s", tc.differs)
				}
				qtype := tc.qtype
				if qtype == 0 {
					qtype = dns.TypeA
				}
				m := new(dns.Msg)
				m.SetQuestion(tc.host, qtype)
				if tc.id != 0 {
					m.Id = tc.id
				}
				if tc.edns != 0 {
					m.SetEdns0(tc.edns, false)
				}
				resp := r.exchange(t, proto, from, m)
				if resp.Rcode != tc.rcode {
					t.Fatalf("rcode = %s, want %s\n%v", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode], resp)
				}
				for _, rr := range resp.Answer {
					if rr.Header().Class != dns.ClassINET {
						t.Errorf("class of %v, want IN", rr)
					}
				}
				if resp.Truncated != tc.truncated {
					t.Fatalf("TC = %v, want %v", resp.Truncated, tc.truncated)
				}
				if tc.truncated || tc.rcode != dns.RcodeSuccess {
					return
				}
				got := rrText(resp.Answer)
				if tc.ordered {
					got = got[:0]
					for _, rr := range resp.Answer {
						got = append(got, rrText([]dns.RR{rr})...)
					}
				}
				if !slices.Equal(got, tc.answer) {
					t.Errorf("answer\n got %q\nwant %q", got, tc.answer)
				}
				if len(resp.Answer) == 0 || resp.Answer[len(resp.Answer)-1].Header().Rrtype == dns.TypeCNAME {
					checkNegativeSOA(t, resp, "")
				}
			})
		}
	}
}

// startIstioUpstream is makeUpstream of Istio's test: www.bing.com, 64 A
// records for giant. and giant-tc. (truncated to 512 bytes by the upstream
// itself, over UDP and TCP alike, as Istio's mux does), NXDOMAIN otherwise.
func startIstioUpstream(t *testing.T) *dnstest.Server {
	t.Helper()
	records := []string{"www.bing.com. 30 IN A 203.0.113.101"}
	for i := range 64 {
		records = append(records, fmt.Sprintf("giant. 30 IN A 198.51.100.%d", 128+i), fmt.Sprintf("giant-tc. 30 IN A 198.51.100.%d", 128+i))
	}
	return dnstest.Start(t, "127.0.0.1:0", truncating{dnstest.ZoneOf(t, records...)})
}

// truncating truncates its replies for giant-tc. to the size of a UDP
// reply without EDNS.
type truncating struct{ dnstest.Zone }

func (z truncating) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := z.Zone.Reply(req, local)
	if len(req.Question) == 1 && strings.EqualFold(req.Question[0].Name, "giant-tc.") {
		m.Truncate(dns.MinMsgSize)
	}
	return m
}
