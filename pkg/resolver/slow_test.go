package resolver

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// slowServer is a limitsServer whose one pod, at victimIP in ns1, has
// corp.internal after kubelet's search domains, and whose upstream answers
// from zone. log gets what the server logs at Warn and above.
type slowServer struct {
	*limitsServer
	log *testenv.Log
}

func startSlowServer(t *testing.T, opts Options, snap *model.Snapshot, zone ...string) *slowServer {
	t.Helper()
	return startSlowServerWith(t, opts, snap, dnstest.ZoneOf(t, zone...))
}

// startSlowServerWith is startSlowServer with an upstream that answers as
// up does.
func startSlowServerWith(t *testing.T, opts Options, snap *model.Snapshot, up dnstest.Responder) *slowServer {
	t.Helper()
	upAddr := dnstest.Start(t, "127.0.0.1:0", up).Addr
	buf := &testenv.Log{}
	opts.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ls := startLimitsServer(t, opts, upAddr, upAddr)
	ls.pods.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "client", IPs: []netip.Addr{victimIP}, DNSSearches: []string{"corp.internal"}}})
	tbl, _ := table.Build(snap, table.Options{})
	ls.SetTable(tbl)
	return &slowServer{limitsServer: ls, log: buf}
}

// askType asks name (in presentation form) of type qtype from the pod.
func (ss *slowServer) askType(t *testing.T, proto, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, err := ss.tryExchange(victimIP, proto, m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// dialUDP opens a UDP socket from the pod to the server, closed when the
// test ends.
func (ss *slowServer) dialUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(victimIP, 0)), net.UDPAddrFromAddrPort(ss.addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// replyText is a reply's rcode and its answer and authority sections, one
// string a record, TTLs left out.
func replyText(r *dns.Msg) (rcode string, answer, ns []string) {
	text := func(rrs []dns.RR) []string {
		var out []string
		for _, rr := range rrs {
			rr = dns.Copy(rr)
			rr.Header().Ttl = 0
			out = append(out, rr.String())
		}
		return out
	}
	return dns.RcodeToString[r.Rcode], text(r.Answer), text(r.Ns)
}

// TestAutopathNODATA: a search-list candidate that exists without records
// of the asked type ends autopath's walk, as CoreDNS's: the pod gets the
// CNAME to it and its zone's SOA (NODATA), not the NXDOMAIN of the bare
// name further down the list, which would deny the candidate's A records
// the CNAME gives (RFC 8020).
func TestAutopathNODATA(t *testing.T) {
	ss := startSlowServer(t, Options{Autopath: true}, &model.Snapshot{},
		"db.corp.internal. 300 IN A 198.51.100.210",
		"solo. 300 IN A 198.51.100.211")
	_, _, soa := replyText(&dns.Msg{Ns: []dns.RR{dnstest.SOA}})
	for _, proto := range []string{"udp", "tcp"} {
		for _, tc := range []struct {
			name      string
			qtype     uint16
			answer    []string
			authority []string
		}{
			{"db.ns1.svc.cluster.local.", dns.TypeA, []string{
				"db.ns1.svc.cluster.local.\t0\tIN\tCNAME\tdb.corp.internal.",
				"db.corp.internal.\t0\tIN\tA\t198.51.100.210",
			}, nil},
			{"db.ns1.svc.cluster.local.", dns.TypeAAAA, []string{
				"db.ns1.svc.cluster.local.\t0\tIN\tCNAME\tdb.corp.internal.",
			}, soa},
			// No candidate exists, the bare name does, without AAAA.
			{"solo.ns1.svc.cluster.local.", dns.TypeAAAA, []string{
				"solo.ns1.svc.cluster.local.\t0\tIN\tCNAME\tsolo.",
			}, soa},
		} {
			r := ss.askType(t, proto, tc.name, tc.qtype)
			rcode, answer, ns := replyText(r)
			if rcode != "NOERROR" || !slices.Equal(answer, tc.answer) || !slices.Equal(ns, tc.authority) {
				t.Errorf("%s %s %s: %s, answer %q, authority %q; want NOERROR, %q, %q",
					proto, tc.name, dns.TypeToString[tc.qtype], rcode, answer, ns, tc.answer, tc.authority)
			}
		}
	}
}

// TestAutopathWalksKubeletsSearchOrder: autopath tries the candidates in
// the order of the search line kubelet writes into the pod's resolv.conf,
// which its resolver would try: for ClusterFirst the cluster's domains,
// the node's, then spec.dnsConfig.searches; for None dnsConfig.searches
// alone; for Default, which starts with the node's, none (autopath knows
// only that names under the cluster domain do not exist). Before: the pod's own domains came before the node's, and the
// node's were added to a None pod's list: a name under both a node domain
// and the pod's was answered with the pod's (x.corp.internal), the one its
// resolver would not have reached, and a None pod got a name under a node
// domain it does not have (y.node.example).
func TestAutopathWalksKubeletsSearchOrder(t *testing.T) {
	ss := startSlowServer(t, Options{Autopath: true, NodeSearch: []string{"node.example."}}, &model.Snapshot{},
		"x.node.example. 300 IN A 198.51.100.220",
		"x.corp.internal. 300 IN A 198.51.100.221",
		"y.node.example. 300 IN A 198.51.100.222",
		"y. 300 IN A 198.51.100.223")
	for _, tc := range []struct {
		pod    model.Pod
		name   string
		answer []string
	}{
		{
			model.Pod{DNSSearches: []string{"corp.internal"}}, // ClusterFirst
			"x.ns1.svc.cluster.local.", []string{
				"x.ns1.svc.cluster.local.\t0\tIN\tCNAME\tx.node.example.",
				"x.node.example.\t0\tIN\tA\t198.51.100.220",
			},
		},
		{
			model.Pod{DNSPolicy: model.DNSNone, DNSSearches: []string{"ns1.svc.cluster.local", "corp.internal"}},
			"y.ns1.svc.cluster.local.", []string{
				"y.ns1.svc.cluster.local.\t0\tIN\tCNAME\ty.",
				"y.\t0\tIN\tA\t198.51.100.223",
			},
		},
		{
			// The list starts with the node's domain: only an upstream
			// knows whether the name asked exists, not autopath.
			model.Pod{DNSPolicy: model.DNSDefault, DNSSearches: []string{"corp.internal"}},
			"x.node.example.", []string{"x.node.example.\t0\tIN\tA\t198.51.100.220"},
		},
	} {
		pod := tc.pod
		pod.Namespace, pod.Name, pod.IPs = "ns1", "client", []netip.Addr{victimIP}
		ss.pods.SetSourcePods([]model.Pod{pod})
		for _, proto := range []string{"udp", "tcp"} {
			rcode, answer, _ := replyText(ss.askType(t, proto, tc.name, dns.TypeA))
			if rcode != "NOERROR" || !slices.Equal(answer, tc.answer) {
				t.Errorf("dnsPolicy %q, %s %s: %s %q, want NOERROR %q", tc.pod.DNSPolicy, proto, tc.name, rcode, answer, tc.answer)
			}
		}
	}
}

// kubeDNSNegTTL is the negative TTL of the kube-dns upstream's denials.
const kubeDNSNegTTL = 5

// TestAutopathNXDOMAINIsTheClusterZones: when no candidate exists, the
// query is forwarded as it is, as CoreDNS's autopath then answers the name
// asked: a client asking with DO gets the cluster zone's denial, kube-dns's
// SOA and negative TTL, without the AD of the validated zones it does not
// belong to. Before: the bare name's NXDOMAIN copied, its zone's SOA
// (test., 300 s, which a cache would keep a Service created meanwhile
// denied for) and its AD.
func TestAutopathNXDOMAINIsTheClusterZones(t *testing.T) {
	ss := startSlowServerWith(t, Options{Autopath: true, NodeSearch: []string{"node.example"}}, &model.Snapshot{},
		dnstest.KubeDNS(kubeDNSNegTTL, dnstest.Validating(dnstest.ZoneOf(t, "other.example. 300 IN A 198.51.100.230"))))
	for _, proto := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("nope.example.net.ns1.svc.cluster.local.", dns.TypeA)
		m.SetEdns0(1232, true)
		r, err := ss.tryExchange(victimIP, proto, m)
		if err != nil {
			t.Fatal(err)
		}
		var soa *dns.SOA
		if len(r.Ns) == 1 {
			soa, _ = r.Ns[0].(*dns.SOA)
		}
		if r.Rcode != dns.RcodeNameError || soa == nil || soa.Hdr.Name != "cluster.local." || soa.Hdr.Ttl > kubeDNSNegTTL || r.AuthenticatedData {
			t.Errorf("%s: %s, authority %v, AD %v; want NXDOMAIN, cluster.local.'s SOA of TTL at most %d, no AD",
				proto, dns.RcodeToString[r.Rcode], r.Ns, r.AuthenticatedData, kubeDNSNegTTL)
		}
	}
}

// TestAutopathKeepsAD: autopath's answer is built on its upstream's, and
// keeps its AD as a forwarded reply does: for a client that asked with DO
// or AD, not for one that asked with neither (RFC 6840 5.8). Before, it
// never had AD.
func TestAutopathKeepsAD(t *testing.T) {
	ss := startSlowServerWith(t, Options{Autopath: true}, &model.Snapshot{}, dnstest.Validating(dnstest.ZoneOf(t,
		"db.corp.internal. 300 IN A 198.51.100.210")))
	for _, tc := range []struct {
		client       string
		do, ad, want bool
	}{
		{"without DO or AD", false, false, false},
		{"with DO", true, false, true},
		{"with AD", false, true, true},
	} {
		for _, name := range []string{"db.ns1.svc.cluster.local.", "gone.ns1.svc.cluster.local."} {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			m.AuthenticatedData = tc.ad
			if tc.do {
				m.SetEdns0(1232, true)
			}
			r, err := ss.tryExchange(victimIP, "udp", m)
			if err != nil {
				t.Fatal(err)
			}
			if r.AuthenticatedData != tc.want {
				t.Errorf("a client %s, %s: %s with AD %v, want AD %v", tc.client, name, dns.RcodeToString[r.Rcode], r.AuthenticatedData, tc.want)
			}
		}
	}
}

// TestExpansionOfAnEscapedName: a search-list expansion whose name has
// octets miekg escapes in presentation form ('(' and the like, which no
// Kubernetes name has but a wildcard ServiceEntry matches) gets the CNAME
// to the name it expands and that name's records, as any other: not a
// SERVFAIL from a CNAME target cut short, nor one cut on the wrong dot
// ("f(o)o.b." is not "f(o)o."), and nothing logged past Info.
func TestExpansionOfAnEscapedName(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{ServiceEntries: []model.ServiceEntry{{
		Namespace: "ns1", Name: "wild", Hosts: []string{"*.example.com", "*.b"},
		Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.5")},
	}}})
	for _, proto := range []string{"udp", "tcp"} {
		for _, meant := range []string{
			`a\(b.example.com.`,
			`f\(o\)o.b.`,
			`q\@\;\"\'x.example.com.`,
		} {
			name := meant + "ns1.svc.cluster.local."
			rcode, answer, _ := replyText(ss.askType(t, proto, name, dns.TypeA))
			want := []string{name + "\t0\tIN\tCNAME\t" + meant, meant + "\t0\tIN\tA\t198.51.100.5"}
			if rcode != "NOERROR" || !slices.Equal(answer, want) {
				t.Errorf("%s %s: %s %q, want NOERROR %q", proto, name, rcode, answer, want)
			}
		}
	}
	if l := ss.log.String(); l != "" {
		t.Errorf("logged past Info:\n%s", l)
	}
}

// TestReplyThatDoesNotPack: a slow-path reply that miekg cannot pack (here
// a CNAME target not fully qualified, as a search expansion of an escaped
// name once made) is a SERVFAIL to the client, logged at Debug only: its
// contents come from what the pod asked, so it may come at the pod's query
// rate.
func TestReplyThatDoesNotPack(t *testing.T) {
	buf := &testenv.Log{}
	s := New(Options{Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	defer s.Close()
	msg := packQuery(t, "a.example.", dns.TypeA)
	q := &slowQuery{s: s, msg: msg, src: netip.AddrPortFrom(victimIP, 5353)}
	if v := parse(msg, &q.r, new(nameBuf)); v != verdictOK {
		t.Fatalf("the query parsed as %d", v)
	}
	req := dnstest.Unpack(t, msg)
	reply := replyTo(req, &q.r)
	reply.Answer = []dns.RR{cname("a.example.", "a.example", 30)}
	r := dnstest.Unpack(t, q.pack(reply))
	if r.Id != req.Id || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("reply ID %d %s, want %d SERVFAIL", r.Id, dns.RcodeToString[r.Rcode], req.Id)
	}
	if l := buf.String(); l != "" {
		t.Errorf("logged past Debug:\n%s", l)
	}
}

// TestLookupsOverThePodsBytesAreCounted: the slow path's own lookups (a
// CNAME's target, autopath's candidates) whose replies do not fit what the
// pod may hold are the pod's outcome, as a forward's are: they count in
// `ztdns pods` (the pod's bytesRefused) and as forward_limited, once per
// query, however many of its lookups and its forward were refused. Before:
// a chased CNAME's refusal counted nowhere. Only the chased CNAME over UDP
// shows a lookup's refusal counted: over TCP the reply's own hold is
// refused too and counts the query anyway, and autopath's forward, refused
// too, counts it; those cases show it is counted once.
func TestLookupsOverThePodsBytesAreCounted(t *testing.T) {
	const perSource = 16 << 10
	b := quota.NewBudget(64<<10, perSource)
	ss := startSlowServerWith(t, Options{Autopath: true, Limits: quota.Limits{QPS: -1}, Budget: b}, &model.Snapshot{
		Services: []model.Service{{Namespace: "ns1", Name: "out", ExternalName: "out.example"}},
	}, liveAnswers())
	if r := ss.askType(t, "udp", "out.ns1.svc.cluster.local.", dns.TypeA); len(r.Answer) != 2 {
		t.Fatalf("with the pod's bytes free: %v, want the CNAME and its target's address", r.Answer)
	}
	pod := ss.pods.Lookup(victimIP).Quota
	useUpBytes(t, b, pod, perSource) // no reply of the pod's fits now
	for _, tc := range []struct{ what, name string }{
		{"a CNAME chased", "out.ns1.svc.cluster.local."},
		// A lookup (corp.internal's candidate), then the query forwarded
		// as it is: two refusals.
		{"autopath", "gone.ns1.svc.cluster.local."},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			refused := ss.usage(victimIP).BytesRefused
			limited := testutil.ToFloat64(metricQueries.forwardLimited)
			ss.askType(t, proto, tc.name, dns.TypeA)
			if got := ss.usage(victimIP).BytesRefused - refused; got != 1 {
				t.Errorf("%s over %s: the pod's bytesRefused rose by %d, want 1", tc.what, proto, got)
			}
			if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 1 {
				t.Errorf("%s over %s: forward_limited rose by %v, want 1", tc.what, proto, got)
			}
		}
	}
}

// TestAutopathStopsAtAFailedLookup: a candidate whose lookup fails says
// nothing of whether it exists, so autopath's walk stops there and the
// query is forwarded as it is. Failed here: refused for the pod's bytes, a
// SERVFAIL of ztdns's own (the forward is refused too: SERVFAIL), though a
// later candidate's answer is in the cache; and an upstream's SERVFAIL,
// the query then answered as asked. Before: the walk moved on, and the
// pod got NXDOMAIN for a name that exists (db.corp.internal) or a CNAME to
// the wrong one (web., not web.corp.internal).
func TestAutopathStopsAtAFailedLookup(t *testing.T) {
	t.Run("refused for the pod's bytes", testAutopathStopsAtABytesRefusal)
	t.Run("upstream SERVFAIL", testAutopathStopsAtAnUpstreamsSERVFAIL)
}

func testAutopathStopsAtABytesRefusal(t *testing.T) {
	const perSource = 16 << 10
	b := quota.NewBudget(64<<10, perSource)
	ss := startSlowServer(t, Options{Autopath: true, Limits: quota.Limits{QPS: -1}, Budget: b}, &model.Snapshot{},
		"db.corp.internal. 300 IN A 198.51.100.210",
		"web.corp.internal. 300 IN A 198.51.100.211",
		"web. 300 IN A 198.51.100.212")
	// The bare names, later candidates than corp.internal's, asked as
	// they are while the pod's bytes are free: now in the cache.
	for name, rcode := range map[string]int{"db.": dns.RcodeNameError, "web.": dns.RcodeSuccess} {
		if r := ss.askType(t, "udp", name, dns.TypeA); r.Rcode != rcode {
			t.Fatalf("%s with the pod's bytes free: %s, want %s", name, dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
		}
	}
	pod := ss.pods.Lookup(victimIP).Quota
	useUpBytes(t, b, pod, perSource) // no upstream reply of the pod's fits now
	// Over UDP: over TCP the reply's own hold would refuse any answer.
	for _, name := range []string{"db.ns1.svc.cluster.local.", "web.ns1.svc.cluster.local."} {
		limited := testutil.ToFloat64(metricQueries.forwardLimited)
		r := ss.askType(t, "udp", name, dns.TypeA)
		if rcode, answer, _ := replyText(r); r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s, corp.internal's candidate refused for the pod's bytes: %s %v, want SERVFAIL", name, rcode, answer)
		}
		if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 1 {
			t.Errorf("%s: forward_limited rose by %v, want 1", name, got)
		}
	}
}

// TestRefusedForwardAfterACachedCandidateIsFromNone: a query whose
// autopath walk had a candidate answered (from the cache) and whose
// forward is then refused for the pod's bytes gets a SERVFAIL of ztdns's
// own, counted from source "none": the forward's reply is the whole
// answer. Before: from "cache", the candidate's origin, where a pod's own
// refusals could set off an alert on upstream and cache SERVFAILs.
func TestRefusedForwardAfterACachedCandidateIsFromNone(t *testing.T) {
	const perSource = 16 << 10
	b := quota.NewBudget(64<<10, perSource)
	ss := startSlowServer(t, Options{Autopath: true, NodeSearch: []string{"node.example"}, Limits: quota.Limits{QPS: -1}, Budget: b}, &model.Snapshot{})
	// node.example's candidate (the first outside the cluster domain, as
	// kubelet puts the node's domains before the pod's own), NXDOMAIN, now
	// in the cache.
	if r := ss.askType(t, "udp", "db.node.example.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("db.node.example. with the pod's bytes free: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	pod := ss.pods.Lookup(victimIP).Quota
	useUpBytes(t, b, pod, perSource) // no upstream reply of the pod's fits now
	// Over UDP: over TCP the reply's own hold is refused too, and its
	// SERVFAIL is from "none" whatever the forward's was.
	requests := scrape(t, ss.Collector(), "ztdns_dns_requests_total")
	r := ss.askType(t, "udp", "db.ns1.svc.cluster.local.", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("corp.internal's candidate and the forward refused for the pod's bytes: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	const none = `ztdns_dns_requests_total{proto="udp",rcode="SERVFAIL",source="none",type="A"}`
	after := scrape(t, ss.Collector(), "ztdns_dns_requests_total")
	if d := after[none] - requests[none]; d != 1 {
		t.Errorf("%s rose by %v, want 1", none, d)
	}
	for k, v := range after {
		if d := v - requests[k]; k != none && d != 0 {
			t.Errorf("%s rose by %v, want 0", k, d)
		}
	}
}

// testAutopathStopsAtAnUpstreamsSERVFAIL: the upstream fails every
// candidate (corp.internal's) and answers any other name: the pod gets
// the answer to the name it asked, not a CNAME to a later candidate (the
// bare name, which the upstream answers too).
func testAutopathStopsAtAnUpstreamsSERVFAIL(t *testing.T) {
	marker := liveAnswers()
	ss := startSlowServerWith(t, Options{Autopath: true}, &model.Snapshot{}, respondFunc(func(req *dns.Msg, local netip.AddrPort) *dns.Msg {
		if dns.IsSubDomain("corp.internal.", dns.CanonicalName(req.Question[0].Name)) {
			return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
		}
		return marker.Reply(req, local)
	}))
	for _, proto := range []string{"udp", "tcp"} {
		const name = "db.ns1.svc.cluster.local."
		rcode, answer, _ := replyText(ss.askType(t, proto, name, dns.TypeA))
		if want := []string{name + "\t0\tIN\tA\t203.0.113.7"}; rcode != "NOERROR" || !slices.Equal(answer, want) {
			t.Errorf("%s %s, its candidate's lookup failed: %s %q, want NOERROR %q", proto, name, rcode, answer, want)
		}
	}
}

// TestEndedForwardOfARefusedLookupCountedOnce: a query whose lookup was
// refused for the pod's bytes (counted forward_limited) and whose forward
// is then ended for a source under its share is one query refused:
// forward_limited rises once for it. Before: twice, once more as its
// forward was ended.
func TestEndedForwardOfARefusedLookupCountedOnce(t *testing.T) {
	const perSource = 16 << 10
	b := quota.NewBudget(64<<10, perSource)
	release := make(chan struct{})
	// corp.internal's names are answered (and refused for the pod's
	// bytes); any other query waits until the test ends.
	marker := liveAnswers()
	up := respondFunc(func(req *dns.Msg, local netip.AddrPort) *dns.Msg {
		if !dns.IsSubDomain("corp.internal.", dns.CanonicalName(req.Question[0].Name)) {
			<-release
		}
		return marker.Reply(req, local)
	})
	ss := startSlowServerWith(t, Options{Autopath: true, MaxInflight: 2, Limits: quota.Limits{QPS: -1, Forwarding: -1}, Budget: b}, &model.Snapshot{}, up)
	t.Cleanup(func() { close(release) }) // before the upstream stops
	pod := ss.pods.Lookup(victimIP).Quota
	useUpBytes(t, b, pod, perSource) // no upstream reply of the pod's fits now

	c := ss.dialUDP(t)
	limited, refused := testutil.ToFloat64(metricQueries.forwardLimited), ss.usage(victimIP).BytesRefused
	// Both slots the pod's: each query's candidate (…corp.internal)
	// refused for its bytes, then its forward, as it is, waiting.
	for _, name := range []string{"a1.ns1.svc.cluster.local.", "a2.ns1.svc.cluster.local."} {
		if _, err := c.Write(packQuery(t, name, dns.TypeA)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "both queries' lookups refused for the pod's bytes", func() bool {
		return ss.usage(victimIP).BytesRefused-refused == 2
	})
	if r := endOldestForward(t, ss.limitsServer, c, "other.corp.internal."); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("the pod's ended forward: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 2 {
		t.Errorf("forward_limited rose by %v, want 2: once for each query, the ended one too", got)
	}
	if u := ss.usage(victimIP); u.BytesRefused-refused != 2 || u.ForwardRefused != 1 {
		t.Errorf("the pod's bytesRefused rose by %d and forwardRefused is %d, want 2 and 1", u.BytesRefused-refused, u.ForwardRefused)
	}
}

// endOldestForward has another source, holding nothing, ask name: it gets
// a forwarding slot, and the pod's oldest forward is ended for it. It
// returns the pod's reply to that forward, read from c.
func endOldestForward(t *testing.T, ss *limitsServer, c *net.UDPConn, name string) *dns.Msg {
	t.Helper()
	if r := ss.ask(t, flooderIP, "udp", name); r == nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("the other source's forwarded query: %v, want NOERROR", r)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply to the pod's ended forward: %v", err)
	}
	return dnstest.Unpack(t, buf[:n])
}

// respondFunc is a dnstest.Responder made of a function.
type respondFunc func(req *dns.Msg, local netip.AddrPort) *dns.Msg

func (f respondFunc) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg { return f(req, local) }

// TestTruncatedUDPReplyOfAnEndedForwardNotCounted: a UDP query whose
// CNAME chain (two ExternalNames, long names) is more than 512 bytes,
// its target's lookup waiting, has its forward ended for another source
// under its share: its work ends with the chain alone, cut to an empty
// reply with TC, but the client gets SERVFAIL. ztdns_resolver_truncated_total,
// replies sent with TC, does not count it; the same chain sent with TC
// does count. Before: it counted the TC reply as it was built, sent or not.
func TestTruncatedUDPReplyOfAnEndedForwardNotCounted(t *testing.T) {
	label := func(c string) string { return strings.Repeat(c, 63) }
	nsA, nsB := label("m"), label("n")
	asked := label("a") + "." + nsA + ".svc.cluster.local."
	target := label("x") + "." + label("y") + "." + label("z") + ".example."
	release := make(chan struct{})
	arrived := make(chan string, 16)
	marker := liveAnswers()
	// The chain's target: A waits until the test ends, any other type
	// fails (the chain alone answers). So does wait.example.; the rest is
	// answered at once.
	up := respondFunc(func(req *dns.Msg, local netip.AddrPort) *dns.Msg {
		q := req.Question[0]
		switch name := dns.CanonicalName(q.Name); {
		case name == target && q.Qtype != dns.TypeA:
			return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
		case name == target || name == "wait.example.":
			arrived <- name
			<-release
		}
		return marker.Reply(req, local)
	})
	ss := startSlowServerWith(t, Options{MaxInflight: 2, Limits: quota.Limits{QPS: -1, Forwarding: -1}}, &model.Snapshot{
		Services: []model.Service{
			{Namespace: nsA, Name: label("a"), ExternalName: label("b") + "." + nsB + ".svc.cluster.local"},
			{Namespace: nsB, Name: label("b"), ExternalName: target},
		},
	}, up)
	t.Cleanup(func() { close(release) }) // before the upstream stops

	truncated := truncatedCounts()
	if r := ss.askType(t, "udp", asked, dns.TypeMX); r.Rcode != dns.RcodeSuccess || !r.Truncated {
		t.Fatalf("the chain sent over UDP: %s, TC %v; want NOERROR with TC", dns.RcodeToString[r.Rcode], r.Truncated)
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{udp: 1}) {
		t.Errorf("the chain sent with TC: ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 1 and 0", got.udp, got.tcp)
	}

	c := ss.dialUDP(t)
	truncated = truncatedCounts()
	// Both slots the pod's: the chain's target's lookup waiting, the
	// oldest, then a forward waiting.
	for _, q := range []struct{ name, upstream string }{{asked, target}, {"wait.example.", "wait.example."}} {
		if _, err := c.Write(packQuery(t, q.name, dns.TypeA)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-arrived:
			if got != q.upstream {
				t.Fatalf("the upstream was asked %s, want %s", got, q.upstream)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the upstream was not asked %s", q.name, q.upstream)
		}
	}
	if r := endOldestForward(t, ss.limitsServer, c, "other.example."); r.Rcode != dns.RcodeServerFailure || r.Truncated || len(r.Question) != 1 || r.Question[0].Name != asked {
		t.Fatalf("the pod's ended forward: %s, TC %v, question %v; want SERVFAIL without TC for %s", dns.RcodeToString[r.Rcode], r.Truncated, r.Question, asked)
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0 and 0", got.udp, got.tcp)
	}
}

// TestExternalNameLoop: an ExternalName naming itself, or two naming each
// other, is NODATA with the cluster zone's SOA, for any type but CNAME, as
// CoreDNS drops a loop's CNAMEs; a chain without a loop still ends in its
// target's addresses. Before: eight CNAMEs, the same ones repeated in one
// RRset.
func TestExternalNameLoop(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{Services: []model.Service{
		{Namespace: "ns1", Name: "loop", ExternalName: "loop.ns1.svc.cluster.local"},
		{Namespace: "ns1", Name: "a", ExternalName: "b.ns1.svc.cluster.local"},
		{Namespace: "ns1", Name: "b", ExternalName: "A.ns1.svc.cluster.local"},
		{Namespace: "ns1", Name: "c", ExternalName: "web.ns1.svc.cluster.local"},
		{Namespace: "ns1", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}},
	}})
	const soa = "cluster.local.\t0\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. "
	for _, proto := range []string{"udp", "tcp"} {
		for _, c := range []struct {
			name   string
			qtype  uint16
			answer []string
		}{
			{"loop.ns1.svc.cluster.local.", dns.TypeA, nil},
			{"a.ns1.svc.cluster.local.", dns.TypeA, nil},
			{"b.ns1.svc.cluster.local.", dns.TypeTXT, nil},
			{"loop.ns1.ns1.svc.cluster.local.", dns.TypeAAAA, []string{"loop.ns1.ns1.svc.cluster.local.\t0\tIN\tCNAME\tloop.ns1."}}, // the search expansion's own
			{"loop.ns1.svc.cluster.local.", dns.TypeCNAME, []string{"loop.ns1.svc.cluster.local.\t0\tIN\tCNAME\tloop.ns1.svc.cluster.local."}},
			{"c.ns1.svc.cluster.local.", dns.TypeA, []string{"c.ns1.svc.cluster.local.\t0\tIN\tCNAME\tweb.ns1.svc.cluster.local.", "web.ns1.svc.cluster.local.\t0\tIN\tA\t10.96.0.20"}},
		} {
			rcode, answer, ns := replyText(ss.askType(t, proto, c.name, c.qtype))
			if rcode != "NOERROR" || !slices.Equal(answer, c.answer) {
				t.Errorf("%s %s %s: %s %q, want NOERROR %q", proto, c.name, dns.TypeToString[c.qtype], rcode, answer, c.answer)
			}
			if c.answer == nil && (len(ns) != 1 || !strings.HasPrefix(ns[0], soa)) {
				t.Errorf("%s %s %s: authority %q, want the SOA of cluster.local.", proto, c.name, dns.TypeToString[c.qtype], ns)
			}
		}
	}
}

// TestAutopathCachedCandidateCountedOnce: a search-list expansion whose
// first candidate the forwarder's cache holds (NXDOMAIN) and whose next
// candidate it does not is answered in two passes, the cache's offline on
// the socket's goroutine, the rest online: the cached candidate is counted
// one cache hit, not two, the others and the query itself (forwarded, every
// candidate gone) one miss each, and the query one request and one access
// log line. Asked again, every lookup is a hit, answered offline: four
// hits, no miss, one request, one line.
func TestAutopathCachedCandidateCountedOnce(t *testing.T) {
	al, log := startAccessLog(t)
	ss := startSlowServer(t, Options{Autopath: true, NodeSearch: []string{"node.example"}, AccessLog: al}, &model.Snapshot{})
	if r := ss.askType(t, "udp", "db.node.example.", dns.TypeA); r.Rcode != dns.RcodeNameError { // into the cache
		t.Fatalf("db.node.example.: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	lines := len(accessLines(t, log, 2)) // startLimitsServer's query, and the one above
	const (
		hits     = cacheHitsSeries
		misses   = cacheMissesSeries
		requests = `ztdns_dns_requests_total{proto="udp",rcode="NXDOMAIN",source="%s",type="A"}`
	)
	counts := func() map[string]float64 {
		return addForwardCache(t, scrape(t, ss.Collector(), "ztdns_dns_requests_total"))
	}
	for _, tc := range []struct {
		from                string
		hits, misses, total float64
	}{
		{"upstream", 1, 3, 1}, // node.example's candidate from the cache; corp.internal's, the bare name's and the query asked
		{"cache", 4, 0, 1},
	} {
		before := counts()
		r := ss.askType(t, "udp", "db.ns1.svc.cluster.local.", dns.TypeA)
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("db.ns1.svc.cluster.local., every candidate gone: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
		}
		after := counts()
		req := fmt.Sprintf(requests, tc.from)
		if h, m, n := after[hits]-before[hits], after[misses]-before[misses], after[req]-before[req]; h != tc.hits || m != tc.misses || n != tc.total {
			t.Errorf("answered from %s: %v cache hits, %v misses, %v requests; want %v, %v, %v", tc.from, h, m, n, tc.hits, tc.misses, tc.total)
		}
		got := accessLines(t, log, lines+1)
		if l := got[len(got)-1]; len(got) != lines+1 || l.Name != "db.ns1.svc.cluster.local." || l.Answered != tc.from {
			t.Errorf("access log: %d lines, the last %+v; want one more, answered by %s", len(got)-lines, l, tc.from)
		}
		lines = len(got)
	}
}
