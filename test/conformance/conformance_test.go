// Package conformance runs real DNS queries, over UDP and TCP sockets,
// against a real ztdns agent serving manifests from a directory, and checks
// every behaviour the resolver promises (issue 2), as seen from several
// namespaces.
package conformance

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

const manifests = "testdata/manifests"

var protocols = []string{"udp", "tcp"}

type answerCase struct {
	name   string
	from   netip.Addr
	qname  string
	qtype  uint16
	rcode  int
	answer []string // exact, sorted "owner TYPE rdata"; nil means "don't check"
	// prefix checks each answer's rdata starts with one of these (VIPs).
	prefix []string
	aa     bool
	// forwarded answers keep the upstream's TTLs and flags.
	forwarded bool
}

func TestAnswers(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)

	cases := []answerCase{
		// 1. Services, from two namespaces.
		{name: "service fqdn from default", from: fromDefault, qname: "web.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"web.default.svc.cluster.local. A 10.96.0.20"}, aa: true},
		{name: "service fqdn from team-a", from: fromTeamA, qname: "web.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"web.default.svc.cluster.local. A 10.96.0.20"}, aa: true},
		{name: "service AAAA by ipFamilies", from: fromDefault, qname: "web.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			answer: []string{"web.default.svc.cluster.local. AAAA 2001:db8:96::20"}, aa: true},
		{name: "short name is own namespace's (default)", from: fromDefault, qname: "web.", qtype: dns.TypeA,
			answer: []string{"web. A 10.96.0.20"}, aa: true},
		{name: "short name is own namespace's (team-a)", from: fromTeamA, qname: "web.", qtype: dns.TypeA,
			answer: []string{"web. A 10.96.1.20"}, aa: true},
		{name: "svc.ns", from: fromDefault, qname: "web.team-a.", qtype: dns.TypeA, answer: []string{"web.team-a. A 10.96.1.20"}, aa: true},
		{name: "svc.ns.svc", from: fromTeamB, qname: "web.team-a.svc.", qtype: dns.TypeA, answer: []string{"web.team-a.svc. A 10.96.1.20"}, aa: true},
		{name: "unknown asker has no namespace short name", from: fromUnknown, qname: "web.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "headless: ready endpoints", from: fromDefault, qname: "db.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"db.default.svc.cluster.local. A 10.244.1.5", "db.default.svc.cluster.local. A 10.244.1.6"}, aa: true},
		{name: "headless: endpoint hostname", from: fromTeamB, qname: "db-0.db.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"db-0.db.default.svc.cluster.local. A 10.244.1.5"}, aa: true},
		{name: "headless: not-ready hostname unknown", from: fromDefault, qname: "db-2.db.default.svc.cluster.local.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError},
		{name: "headless: publishNotReadyAddresses", from: fromDefault, qname: "db-all.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"db-all.default.svc.cluster.local. A 10.244.2.5", "db-all.default.svc.cluster.local. A 10.244.2.6"}, aa: true},
		{name: "ExternalName: CNAME, target resolved upstream", from: fromDefault, qname: "docs.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"docs.default.svc.cluster.local. CNAME docs.example.com.", "docs.example.com. A 203.0.113.20"}, aa: true, forwarded: true},
		{name: "ExternalName: CNAME query", from: fromTeamA, qname: "docs.default.svc.cluster.local.", qtype: dns.TypeCNAME,
			answer: []string{"docs.default.svc.cluster.local. CNAME docs.example.com."}, aa: true},
		{name: "ExternalName to a local service", from: fromDefault, qname: "local-alias.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"local-alias.default.svc.cluster.local. CNAME web.team-a.svc.cluster.local.", "web.team-a.svc.cluster.local. A 10.96.1.20"}, aa: true},
		// 2. SRV and PTR.
		{name: "SRV named port", from: fromTeamA, qname: "_http._tcp.web.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."}, aa: true},
		{name: "SRV headless per endpoint", from: fromDefault, qname: "_postgres._tcp.db.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"_postgres._tcp.db.default.svc.cluster.local. SRV 0 100 5432 10-244-1-6.db.default.svc.cluster.local.",
				"_postgres._tcp.db.default.svc.cluster.local. SRV 0 100 5432 db-0.db.default.svc.cluster.local."}, aa: true},
		{name: "PTR of a ClusterIP", from: fromDefault, qname: "20.0.96.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"20.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."}, aa: true},
		{name: "PTR of a ServiceEntry address", from: fromTeamB, qname: "1.100.51.198.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"1.100.51.198.in-addr.arpa. PTR address.internal."}, aa: true},
		// 3. ServiceEntry addresses and VIPs.
		{name: "spec address v4", from: fromDefault, qname: "address.internal.", qtype: dns.TypeA,
			answer: []string{"address.internal. A 198.51.100.1"}, aa: true},
		{name: "spec address v6", from: fromTeamA, qname: "address.internal.", qtype: dns.TypeAAAA,
			answer: []string{"address.internal. AAAA 2001:db8::1"}, aa: true},
		{name: "auto-allocated VIP v4", from: fromDefault, qname: "auto.internal.", qtype: dns.TypeA, prefix: []string{"240.240."}, aa: true},
		{name: "auto-allocated VIP v6", from: fromTeamB, qname: "auto.internal.", qtype: dns.TypeAAAA, prefix: []string{"2001:2::"}, aa: true},
		{name: "auto-allocated VIP v6 to an IPv4-only pod: NODATA", from: fromDefault, qname: "auto.internal.", qtype: dns.TypeAAAA,
			answer: []string{}, aa: true},
		{name: "opted out: forwarded", from: fromDefault, qname: "optout.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "resolution NONE: forwarded", from: fromDefault, qname: "none.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "CIDR address: forwarded, no VIP", from: fromDefault, qname: "range.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		// 4. exportTo.
		{name: "exportTo . from own namespace", from: fromTeamA, qname: "private.internal.", qtype: dns.TypeA,
			answer: []string{"private.internal. A 198.51.100.20"}, aa: true},
		{name: "exportTo . from another namespace", from: fromTeamB, qname: "private.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "exportTo . from an unknown client", from: fromUnknown, qname: "private.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "exportTo list member", from: fromTeamB, qname: "shared.internal.", qtype: dns.TypeA, prefix: []string{"240.240."}, aa: true},
		{name: "exportTo list non-member", from: fromDefault, qname: "shared.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		// 5. Wildcards: the owner is the queried name, most specific wins.
		{name: "wildcard", from: fromDefault, qname: "api.wild.example.", qtype: dns.TypeA,
			answer: []string{"api.wild.example. A 203.0.113.7"}, aa: true},
		{name: "wildcard most specific", from: fromTeamA, qname: "a.b.x.deep.wild.example.", qtype: dns.TypeA,
			answer: []string{"a.b.x.deep.wild.example. A 203.0.113.8"}, aa: true},
		{name: "wildcard does not cover its apex", from: fromDefault, qname: "wild.example.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		// 6. Search-list expansions of known names.
		{name: "expansion <ns>.svc.<domain>", from: fromDefault, qname: "address.internal.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"address.internal. A 198.51.100.1", "address.internal.default.svc.cluster.local. CNAME address.internal."}, aa: true},
		{name: "expansion from team-a", from: fromTeamA, qname: "address.internal.team-a.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"address.internal. A 198.51.100.1", "address.internal.team-a.svc.cluster.local. CNAME address.internal."}, aa: true},
		{name: "expansion svc.<domain>", from: fromTeamB, qname: "address.internal.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"address.internal. A 198.51.100.1", "address.internal.svc.cluster.local. CNAME address.internal."}, aa: true},
		{name: "expansion <domain>", from: fromDefault, qname: "address.internal.cluster.local.", qtype: dns.TypeA,
			answer: []string{"address.internal. A 198.51.100.1", "address.internal.cluster.local. CNAME address.internal."}, aa: true},
		{name: "no alias for a service name under a search domain (ndots:5)", from: fromDefault, qname: "web.team-a.svc.cluster.local.default.svc.cluster.local.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError},
		{name: "expansion of svc.ns under the own namespace", from: fromDefault, qname: "web.team-a.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"web.team-a. A 10.96.1.20", "web.team-a.default.svc.cluster.local. CNAME web.team-a."}, aa: true},
		{name: "expansion of an invisible name: forwarded", from: fromTeamB, qname: "private.internal.team-b.svc.cluster.local.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError},
		// 7. NODATA, case, authority.
		{name: "ServiceEntry host, other type: forwarded", from: fromDefault, qname: "address.internal.", qtype: dns.TypeMX,
			answer: []string{"address.internal. MX 10 mail.address.internal."}, aa: true, forwarded: true},
		{name: "wildcard name, other type: forwarded", from: fromTeamA, qname: "api.wild.example.", qtype: dns.TypeTXT,
			answer: []string{`api.wild.example. TXT "v=spf1 -all"`}, aa: true, forwarded: true},
		{name: "ServiceEntry host expanded, other type: forwarded", from: fromDefault, qname: "address.internal.default.svc.cluster.local.",
			qtype: dns.TypeTXT, rcode: dns.RcodeNameError},
		{name: "known name, TXT: NODATA", from: fromTeamA, qname: "web.default.svc.cluster.local.", qtype: dns.TypeTXT, answer: []string{}, aa: true},
		{name: "case kept in the reply", from: fromDefault, qname: "AdDrEsS.InTeRnAl.", qtype: dns.TypeA,
			answer: []string{"AdDrEsS.InTeRnAl. A 198.51.100.1"}, aa: true},
		// Forwarding.
		{name: "unknown name forwarded", from: fromDefault, qname: "example.com.", qtype: dns.TypeA, answer: []string{"example.com. A 203.0.113.10"},
			aa: true, forwarded: true},
		{name: "unknown name other type forwarded", from: fromTeamB, qname: "example.com.", qtype: dns.TypeMX,
			answer: []string{"example.com. MX 10 mail.example.com."}, aa: true, forwarded: true},
		{name: "NXDOMAIN relayed", from: fromDefault, qname: "nope.example.net.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "unknown service name forwarded", from: fromDefault, qname: "nope.default.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
	}
	for _, proto := range protocols {
		for _, tc := range cases {
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				resp := r.query(t, proto, tc.from, tc.qname, tc.qtype, true)
				if resp.Rcode != tc.rcode {
					t.Fatalf("rcode = %s, want %s\n%v", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode], resp)
				}
				if resp.Question[0].Name != tc.qname {
					t.Errorf("question = %q, want the client's %q", resp.Question[0].Name, tc.qname)
				}
				if tc.rcode == dns.RcodeNameError {
					if len(resp.Ns) == 0 || resp.Ns[0].Header().Rrtype != dns.TypeSOA {
						t.Errorf("forwarded NXDOMAIN lost the upstream's SOA: %v", resp.Ns)
					}
					return
				}
				if resp.Authoritative != tc.aa {
					t.Errorf("AA = %v, want %v", resp.Authoritative, tc.aa)
				}
				got := rrText(resp.Answer)
				if tc.answer != nil && !slices.Equal(got, tc.answer) {
					t.Errorf("answer\n got %q\nwant %q", got, tc.answer)
				}
				for _, p := range tc.prefix {
					if len(resp.Answer) != 1 || !strings.Contains(got[0], " "+p) || resp.Answer[0].Header().Name != tc.qname {
						t.Errorf("answer %q, want one record for %s in %s*", got, tc.qname, p)
					}
				}
				for _, rr := range resp.Answer {
					if !tc.forwarded && rr.Header().Ttl != 30 {
						t.Errorf("local answer TTL = %d, want the default 30", rr.Header().Ttl)
					}
				}
				if !tc.forwarded && len(resp.Answer) == 0 {
					checkNegativeSOA(t, resp, "")
				}
			})
		}
	}
}

// The same host named by ServiceEntries in two namespaces gets a VIP per
// entry, as istiod allocates them, and each namespace is answered its own
// entry's; a VIP's PTR names its host.
func TestOneHostTwoServiceEntries(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)
	for _, proto := range protocols {
		a := r.query(t, proto, fromTeamA, "twice.internal.", dns.TypeA, false)
		b := r.query(t, proto, fromTeamB, "twice.internal.", dns.TypeA, false)
		if len(a.Answer) != 1 || len(b.Answer) != 1 {
			t.Fatalf("%s: want one VIP each, got %v and %v", proto, a.Answer, b.Answer)
		}
		if a.Answer[0].String() == b.Answer[0].String() {
			t.Errorf("%s: two ServiceEntries share a VIP: %v", proto, a.Answer[0])
		}
	}
	// The VIP's PTR names the host.
	vip := r.query(t, "udp", fromDefault, "auto.internal.", dns.TypeA, false).Answer[0].(*dns.A).A
	rev, _ := dns.ReverseAddr(vip.String())
	ptr := r.query(t, "udp", fromDefault, rev, dns.TypePTR, false)
	if got := rrText(ptr.Answer); !slices.Equal(got, []string{rev + " PTR auto.internal."}) {
		t.Errorf("PTR of VIP %v = %q", vip, got)
	}
}

// TestIstiodStatus: once a ServiceEntry carries istiod's status.addresses,
// istiod allocates in this cluster (--vip-source=auto): its VIPs answer,
// with their PTRs, and a host it has not allocated is forwarded rather than
// answered with a VIP ztunnel would not route.
func TestIstiodStatus(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests, "testdata/istiod")
	for _, proto := range protocols {
		if got := rrText(r.query(t, proto, fromTeamB, "status.internal.", dns.TypeA, false).Answer); !slices.Equal(got, []string{"status.internal. A 240.240.0.1"}) {
			t.Errorf("%s: status.internal = %q, want istiod's 240.240.0.1", proto, got)
		}
		if got := rrText(r.query(t, proto, fromTeamB, "status.internal.", dns.TypeAAAA, false).Answer); !slices.Equal(got, []string{"status.internal. AAAA 2001:2::f0f0:1"}) {
			t.Errorf("%s: status.internal AAAA = %q, want istiod's 2001:2::f0f0:1", proto, got)
		}
		if resp := r.query(t, proto, fromDefault, "auto.internal.", dns.TypeA, false); resp.Rcode != dns.RcodeNameError {
			t.Errorf("%s: auto.internal = %s %v, want NXDOMAIN from the upstream: istiod wrote no VIP for it", proto, dns.RcodeToString[resp.Rcode], resp.Answer)
		}
	}
	ptr := r.query(t, "udp", fromTeamA, "1.0.240.240.in-addr.arpa.", dns.TypePTR, false)
	if got := rrText(ptr.Answer); !slices.Equal(got, []string{"1.0.240.240.in-addr.arpa. PTR status.internal."}) {
		t.Errorf("PTR of istiod's VIP = %q", got)
	}
}

func TestForwardingDetails(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)

	t.Run("UDP without EDNS is truncated at 512 with TC, keeping the records that fit", func(t *testing.T) {
		resp := r.query(t, "udp", fromDefault, "big.example.com.", dns.TypeTXT, false)
		resp.Compress = true
		wire, _ := resp.Pack()
		// 12 header, 33 question, 78 a TXT record compressed: 6 fit,
		// though this upstream writes them uncompressed (93 bytes: 5
		// would fit as it wrote them), as CoreDNS's cut keeps.
		if !resp.Truncated || len(resp.Answer) != 6 || len(wire) > 512 {
			t.Errorf("TC=%v with %d answers in %d bytes, want TC and the 6 that fit in 512", resp.Truncated, len(resp.Answer), len(wire))
		}
	})
	t.Run("UDP with EDNS 1232 is truncated too (reply is ~2.9KB)", func(t *testing.T) {
		resp := r.query(t, "udp", fromDefault, "big.example.com.", dns.TypeTXT, true)
		if !resp.Truncated {
			t.Error("TC not set")
		}
	})
	t.Run("TCP gets the whole reply", func(t *testing.T) {
		resp := r.query(t, "tcp", fromDefault, "big.example.com.", dns.TypeTXT, false)
		if resp.Truncated || len(resp.Answer) != 40 {
			t.Errorf("TC=%v with %d answers, want all 40", resp.Truncated, len(resp.Answer))
		}
	})
	t.Run("cache answers repeats", func(t *testing.T) {
		before := up.Queries("cached.example.com.")
		for range 3 {
			r.query(t, "udp", fromDefault, "cached.example.com.", dns.TypeA, false)
		}
		if got := up.Queries("cached.example.com.") - before; got != 1 {
			t.Errorf("upstream asked %d times for a cached negative answer, want 1", got)
		}
	})
	t.Run("non-QUERY opcode forwarded", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetNotify("example.com.")
		resp := r.exchange(t, "udp", fromDefault, m)
		if resp.Opcode != dns.OpcodeNotify || up.Queries("example.com.") == 0 {
			t.Errorf("NOTIFY not relayed: %v", resp)
		}
	})
	t.Run("EDNS relayed", func(t *testing.T) {
		resp := r.query(t, "udp", fromDefault, "example.com.", dns.TypeA, true)
		if resp.IsEdns0() == nil {
			t.Error("the upstream's OPT record was dropped")
		}
	})
}

func TestUpstreamFailures(t *testing.T) {
	good := upstream(t)
	dead := testenv.DeadAddr(t) // nothing listens: refused at once
	t.Run("first good answer wins", func(t *testing.T) {
		r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{dead, good.Addr}}, manifests)
		for _, proto := range protocols {
			if resp := r.query(t, proto, fromDefault, "example.com.", dns.TypeA, false); len(resp.Answer) != 1 {
				t.Errorf("%s: %v", proto, resp)
			}
		}
	})
	t.Run("all silent: SERVFAIL once the forward timeout ends the wait", func(t *testing.T) {
		// Upstreams that take the queries, over UDP and TCP, and never
		// reply: only the agent's forward timeout ends the wait, and the
		// client (agenttest's, which gives up after 5 s) gets SERVFAIL
		// rather than nothing.
		var silent []*dnstest.Server
		var addrs []netip.AddrPort
		for range 2 {
			up := dnstest.Start(t, "127.0.0.1:0", dnstest.Silent)
			silent = append(silent, up)
			addrs = append(addrs, up.Addr)
		}
		const timeout = 500 * time.Millisecond
		r := startAgent(t, agentOpts{upstreams: addrs, timeout: timeout}, manifests)
		for _, proto := range protocols {
			name := proto + ".example.com." // a name of its own: a SERVFAIL may be cached
			start := time.Now()
			resp := r.query(t, proto, fromDefault, name, dns.TypeA, false)
			t.Logf("%s: %s after %v with a forward timeout of %v", proto, dns.RcodeToString[resp.Rcode], time.Since(start), timeout)
			if resp.Rcode != dns.RcodeServerFailure {
				t.Errorf("%s: rcode %s, want SERVFAIL", proto, dns.RcodeToString[resp.Rcode])
			}
			// The SERVFAIL followed a question to the silent upstream, not
			// a failure to send it.
			if !askedOver(silent[0], proto, name) {
				t.Errorf("%s: the first upstream was never asked for %s", proto, name)
			}
			// Local names still answer while upstreams are down.
			if resp := r.query(t, proto, fromDefault, "address.internal.", dns.TypeA, false); len(resp.Answer) != 1 {
				t.Errorf("%s: local answer failed with upstreams down: %v", proto, resp)
			}
		}
	})
}

// askedOver reports whether a query for name came to up over proto,
// waiting at most a few seconds for it.
func askedOver(up *dnstest.Server, proto, name string) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, q := range up.ReceivedFor(name) {
			if q.Net == proto {
				return true
			}
		}
	}
	return false
}

func TestAutopath(t *testing.T) {
	// The pod's nameserver: kube-dns, denying names under cluster.local.
	// (TTL 5, no AD), in front of a validating resolver.
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.KubeDNS(5, dnstest.Validating(dnstest.ZoneOf(t, "example.com. 120 IN A 203.0.113.10"))))
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}, autopath: true}, manifests)
	for _, proto := range protocols {
		// A pod in default with ndots:5 asks for example.com first as
		// example.com.default.svc.cluster.local: one round trip answers it.
		resp := r.query(t, proto, fromDefault, "example.com.default.svc.cluster.local.", dns.TypeA, false)
		want := []string{"example.com. A 203.0.113.10", "example.com.default.svc.cluster.local. CNAME example.com."}
		if got := rrText(resp.Answer); resp.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			t.Errorf("%s: %s %q, want %q", proto, dns.RcodeToString[resp.Rcode], got, want)
		}
		// A name that exists nowhere: NXDOMAIN for the expansion, the
		// cluster zone's (kube-dns's SOA and TTL, no AD from the zones
		// of the other candidates), for a client asking with DO too.
		m := new(dns.Msg)
		m.SetQuestion("nope.example.net.default.svc.cluster.local.", dns.TypeA)
		m.SetEdns0(1232, true)
		resp = r.exchange(t, proto, fromDefault, m)
		if resp.Rcode != dns.RcodeNameError || len(resp.Ns) != 1 || resp.Ns[0].Header().Name != "cluster.local." ||
			resp.Ns[0].Header().Rrtype != dns.TypeSOA || resp.Ns[0].Header().Ttl > 5 || resp.AuthenticatedData {
			t.Errorf("%s: %s, authority %v, AD %v; want NXDOMAIN, cluster.local.'s SOA of TTL at most 5, no AD",
				proto, dns.RcodeToString[resp.Rcode], resp.Ns, resp.AuthenticatedData)
		}
		// Not a pod: no search list known, plain forwarding.
		resp = r.query(t, proto, fromUnknown, "example.com.default.svc.cluster.local.", dns.TypeA, false)
		if resp.Rcode != dns.RcodeNameError {
			t.Errorf("%s from an unknown client: rcode %s, want the forwarded NXDOMAIN", proto, dns.RcodeToString[resp.Rcode])
		}
	}
}
