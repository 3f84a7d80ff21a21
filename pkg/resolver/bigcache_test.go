package resolver

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// bigRecords is how many records a pod's nameserver puts in its large
// replies: 1,800 A records of big.corp.internal. take 59 KB.
const bigRecords = 1800

// bigTXT is how many TXT records, of 600 octets each, a pod's nameserver
// puts in its large TXT replies: 100 take 62 KB.
const bigTXT = 100

// bigAnswers is a pod's own nameserver filling ztdns's cache with large
// replies (the cache keys them by the nameserver the pod names): names
// under big. get bigRecords A records (TTL 300), or asked for TXT, bigTXT
// TXT records of 600 octets (three strings, the last the record's number
// in 87 digits); names under nx. NXDOMAIN, an SOA and 6 additional TXT
// records of 10,040 octets (one of them past any client's buffer); names
// under full. NXDOMAIN, an SOA and 60 additional TXT records of 100
// octets (a client's buffer of 4,096 octets full of them); names under
// gone. NXDOMAIN and an SOA; every other name, and every name in
// found.example., one address, 203.0.113.1.
type bigAnswers struct{}

func (bigAnswers) Reply(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	q := req.Question[0]
	many := func() []dns.RR {
		rrs := make([]dns.RR, bigRecords)
		for i := range rrs {
			rrs[i] = &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(10, byte(i/200), byte(i%200), 1)}
		}
		return rrs
	}
	switch name := strings.ToLower(q.Name); {
	case strings.HasSuffix(name, ".found.example."):
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(203, 0, 113, 1)}}
	case strings.HasPrefix(name, "big.") && q.Qtype == dns.TypeTXT:
		for i := range bigTXT {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: []string{strings.Repeat("a", 255), strings.Repeat("b", 255), fmt.Sprintf("%087d", i)}})
		}
	case strings.HasPrefix(name, "big."):
		m.Answer = many()
	case strings.HasPrefix(name, "nx."):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{dnstest.SOA}
		for range 6 {
			m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: slices.Repeat([]string{strings.Repeat("x", 250)}, 40)})
		}
	case strings.HasPrefix(name, "full."):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{dnstest.SOA}
		for i := range 60 {
			m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
				Txt: []string{fmt.Sprintf("%099d", i)}})
		}
	case strings.HasPrefix(name, "gone."):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{dnstest.SOA}
	default:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(203, 0, 113, 1)}}
	}
	if o := req.IsEdns0(); o != nil {
		m.SetEdns0(1232, o.Do())
	}
	return m
}

// ednsQuery is a query for name of type A with EDNS, size its UDP buffer.
func ednsQuery(name string, size uint16) *dns.Msg { return ednsQueryOf(name, dns.TypeA, size) }

// ednsQueryOf is a query for name of type qtype with EDNS, size its UDP
// buffer.
func ednsQueryOf(name string, qtype, size uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(size, false)
	return m
}

// cachedUDPAnswer fills the forwarder's cache with the reply to name, of
// type qtype, asked over TCP (answers records at least), then asks for it
// over UDP with a buffer of 1,232 octets, answered from the cache on the
// socket's goroutine (the offline pass) into a batch buffer, as the UDP
// loop asks: the reply, and the bytes a query allocates.
func (ss *slowServer) cachedUDPAnswer(t *testing.T, what, name string, qtype uint16, answers int) (*dns.Msg, uint64) {
	t.Helper()
	if r, err := ss.tryExchange(victimIP, "tcp", ednsQueryOf(name, qtype, 1232)); err != nil || len(r.Answer) < answers {
		t.Fatalf("%s over TCP, to fill the cache: %v, %v", what, err, r)
	}
	q, err := ednsQueryOf(name, qtype, 1232).Pack()
	if err != nil {
		t.Fatal(err)
	}
	src, local := netip.AddrPortFrom(victimIP, 5000), netip.MustParseAddrPort("127.0.0.1:53")
	out := make([]byte, 0, 4096+512) // as the UDP loop's batch buffer
	var reply []byte
	per := testenv.BytesPerCall(20, func() {
		if reply = ss.slowUDP(nil, q, src, local, out); reply == nil {
			t.Fatalf("%s over UDP: not answered from the cache", what)
		}
	})
	t.Logf("%s over UDP: %d bytes allocated a query", what, per)
	return dnstest.Unpack(t, reply), per
}

// TestLargeCachedRepliesCostWhatTheReplyHolds: a pod's nameserver gives
// 59 KB of A records for a name, or 62 KB of TXT records of 600 octets,
// cached by a query over TCP; a UDP query answered from it on the socket's
// goroutine (the offline pass) reads only the records its reply can hold:
// an ExternalName chased to it, autopath finding it as a candidate, or the
// name itself, asked with a buffer of 1,232 octets, allocate 24–37 KB of
// the A records (before: the whole reply copied, and for the chase and
// autopath every record decoded: 403 KB, 435 KB and 73 KB a query), under
// 32 KiB of the TXT records (before they were bounded in octets as well
// as in number: 149–154 KB, all 100 read and decoded), and answer what
// they did: TC, the CNAME, and as many of the records, in the set's order,
// as fit.
func TestLargeCachedRepliesCostWhatTheReplyHolds(t *testing.T) {
	ss := startSlowServerWith(t, Options{Autopath: true, Limits: quota.Limits{QPS: -1}}, &model.Snapshot{
		Services: []model.Service{{Namespace: "ns1", Name: "out", ExternalName: "big.example"}},
	}, bigAnswers{})
	for _, tc := range []struct {
		what, name, target string
		qtype              uint16
		under              uint64 // bytes a query may allocate
	}{
		{"an ExternalName to it", "out.ns1.svc.cluster.local.", "big.example.", dns.TypeA, 64 << 10},
		{"autopath's candidate", "big.ns1.svc.cluster.local.", "big.corp.internal.", dns.TypeA, 64 << 10},
		// What is left is the cut compressed (compressedFit): it decodes
		// the records a reply of 1,232 octets can keep.
		{"the name itself", "big.example.", "", dns.TypeA, 32 << 10},
		{"TXT, an ExternalName to it", "out.ns1.svc.cluster.local.", "big.example.", dns.TypeTXT, 32 << 10},
		{"TXT, autopath's candidate", "big.ns1.svc.cluster.local.", "big.corp.internal.", dns.TypeTXT, 32 << 10},
		{"TXT, the name itself", "big.example.", "", dns.TypeTXT, 32 << 10},
	} {
		records := bigRecords
		if tc.qtype == dns.TypeTXT {
			records = bigTXT
		}
		r, per := ss.cachedUDPAnswer(t, tc.what, tc.name, tc.qtype, records)
		if per > tc.under {
			t.Errorf("%s over UDP, answered from the cache: %d bytes allocated a query, want under %d", tc.what, per, tc.under)
		}
		answers := r.Answer
		if tc.target != "" {
			if len(answers) == 0 || answers[0].Header().Rrtype != dns.TypeCNAME || answers[0].(*dns.CNAME).Target != tc.target {
				t.Fatalf("%s: %v, want a CNAME to %s first", tc.what, answers, tc.target)
			}
			answers = answers[1:]
		}
		// As many as a cut of the whole answer keeps (miekg's Truncate, as
		// CoreDNS's and the slow path's reply is cut).
		owner := tc.target
		if owner == "" {
			owner = tc.name
		}
		whole := new(dns.Msg)
		whole.SetReply(ednsQueryOf(tc.name, tc.qtype, 1232))
		whole.Answer = append(whole.Answer, r.Answer[:len(r.Answer)-len(answers)]...)
		whole.Answer = append(whole.Answer, bigAnswers{}.Reply(ednsQueryOf(owner, tc.qtype, 1232), netip.AddrPort{}).Answer...)
		whole.SetEdns0(dnswire.EDNSUDPSize, false)
		whole.Truncate(1232)
		if r.Rcode != dns.RcodeSuccess || !r.Truncated || len(r.Answer) != len(whole.Answer) || len(answers) == 0 {
			t.Errorf("%s: %s, TC %v, %d answers; want NOERROR, TC and %d, as a cut of the whole", tc.what, dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer), len(whole.Answer))
		}
		first := -1
		for i, rr := range answers { // consecutive records of the set, from wherever it was rotated to
			n := -1
			switch rr := rr.(type) {
			case *dns.A:
				if v4 := rr.A.To4(); v4[0] == 10 {
					n = int(v4[1])*200 + int(v4[2])
				}
			case *dns.TXT:
				if len(rr.Txt) == 3 {
					fmt.Sscan(rr.Txt[2], &n)
				}
			}
			if n < 0 || rr.Header().Rrtype != tc.qtype {
				t.Fatalf("%s: answer %d is %v, want one of the set", tc.what, i, rr)
			}
			if first < 0 {
				first = n
			}
			if n != (first+i)%records {
				t.Errorf("%s: answer %d is record %d of the set, want %d", tc.what, i, n, (first+i)%records)
			}
		}
	}
}

// TestFitUDPOfTheFirstRecordsIsTheCutOfTheWhole: what the offline pass
// hands fitUDP of a large cached reply, its first records (firstRecords:
// one more than the cut can keep, by number or by octets;
// AppendCachedFirst), is cut to the same reply, TC and all, as the whole
// reply is, for a client's buffer of 512, 1,232 and 4,096 octets: answers
// cut, authority cut, additional sets kept or dropped whole, of small
// records and of huge TXT records.
func TestFitUDPOfTheFirstRecordsIsTheCutOfTheWhole(t *testing.T) {
	q := ednsQuery("big.example.", 1232)
	many := bigAnswers{}.Reply(q, netip.AddrPort{})
	glue := func(n int) []dns.RR {
		rrs := make([]dns.RR, n)
		for i := range rrs {
			rrs[i] = &dns.A{Hdr: dns.RR_Header{Name: fmt.Sprintf("ns%d.example.", i%3), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(10, 9, byte(i/200), byte(i%200))}
		}
		slices.SortStableFunc(rrs, func(a, b dns.RR) int { return strings.Compare(a.Header().Name, b.Header().Name) })
		return rrs
	}
	txt := bigAnswers{}.Reply(ednsQueryOf("big.example.", dns.TypeTXT, 1232), netip.AddrPort{})
	replies := map[string]*dns.Msg{"answers": many, "huge TXT answers": txt}
	for name, c := range map[string]struct {
		from           *dns.Msg
		answers, glued int
	}{
		"a few answers, much glue": {many, 30, 1500},
		"some answers, glue":       {many, 60, 60},
		"a huge TXT answer, glue":  {txt, 1, 60},
		"huge TXT answers, glue":   {txt, 5, 60},
	} {
		m := c.from.Copy()
		m.Answer = m.Answer[:c.answers]
		m.Ns = []dns.RR{dnstest.SOA}
		m.Extra = append(glue(c.glued), m.Extra...)
		replies[name] = m
	}
	// A hostile nameserver's: a record of 60,000 octets among the
	// answers, or in the additional section after records of its set
	// (read as far as it, and not copied: a stand-in in its place, or left
	// out with its set), and 100 records of 600 octets of a type no
	// reader knows.
	hostile := newHostileAnswers()
	huge := hostile.Reply(ednsQuery("huge.example.", 1232), netip.AddrPort{})
	huge.Ns = []dns.RR{dnstest.SOA}
	huge.Extra = append(glue(3), huge.Extra...)
	replies["a huge answer, glue"] = huge
	hugeGlue := many.Copy()
	hugeGlue.Answer = hugeGlue.Answer[:3]
	set := func(data ...string) dns.RR {
		return &dns.TXT{Hdr: dns.RR_Header{Name: "ns1.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}, Txt: data}
	}
	hugeGlue.Extra = append([]dns.RR{set("a"), set("b"), set(slices.Repeat([]string{strings.Repeat("h", 255)}, 235)...)}, hugeGlue.Extra...)
	hugeGlue.Extra = append(glue(2), hugeGlue.Extra...)
	replies["a huge additional record after its set"] = hugeGlue
	replies["records of an unknown type"] = hostile.Reply(ednsQueryOf("opaque.example.", typeOpaque, 1232), netip.AddrPort{})
	cuts := 0
	for name, m := range replies {
		for _, compress := range []bool{false, true} {
			m.Compress = compress
			whole, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			for _, limit := range []uint16{512, 1232, 4096} {
				sq := &slowQuery{msg: whole}
				sq.r.EDNS, sq.r.UDPSize = true, limit
				n, room := sq.firstRecords()
				first, dropped, err := dnswire.FirstRecordsIn(whole, n, room)
				if err != nil {
					t.Fatal(err)
				}
				if !dropped {
					continue // served whole (AppendCachedFirst)
				}
				cuts++
				want := sq.fitUDP(slices.Clone(whole))
				wantTC := sq.cut
				if got := sq.fitUDP(first); !bytes.Equal(got, want) || sq.cut != wantTC {
					t.Errorf("%s, compressed %v, buffer %d: the first records cut to\n%x (TC %v), the whole to\n%x (TC %v)", name, compress, limit, got, sq.cut, want, wantTC)
				}
			}
		}
	}
	if cuts < 40 {
		t.Errorf("%d replies left records out, want 40 at least", cuts)
	}
}

// TestOfflineCacheReadsBoundedInBytes: the offline pass reads at most
// maxOfflineBytes of cached replies for one query, as it makes at most
// maxOfflineLookups lookups: with every forwarding slot held, an autopath
// query whose fifth candidate exists, the first four cached NXDOMAINs
// with 60 additional TXT records of 100 octets each (a client with a
// buffer of 4,096 octets, whose reply they fill: 4.2–4.8 KB read a
// candidate), gets SERVFAIL for the node's bound: past the bytes it
// needed a slot, as a miss does (before: answered on the socket's
// goroutine, each candidate's reply read and decoded whole). The same
// walk over plain NXDOMAINs is answered, and so is one over NXDOMAINs
// with additional TXT records of 10 KB each, larger than the client's
// buffer: none is read (before: each read whole as the one past the
// buffer, 10 KB a candidate, and the walk was past the bytes at the third
// candidate: SERVFAIL).
func TestOfflineCacheReadsBoundedInBytes(t *testing.T) {
	const slots = 8
	silent := startSilentUpstream(t)
	up := dnstest.Start(t, "127.0.0.1:0", bigAnswers{}).Addr
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: -1}, MaxInflight: slots, Autopath: true}, silent.addr, up)
	ls.pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "victim", IPs: []netip.Addr{victimIP},
		DNSSearches: []string{"d1.example", "d2.example", "d3.example", "d4.example", "found.example"}}})
	// Under d1.example. to d4.example. every name of each kind is an
	// NXDOMAIN; under found.example. each exists (bigAnswers answers any
	// other name).
	names := map[string]string{"filling the buffer": "full", "past the buffer": "nx", "plain": "gone"}
	ask := func(proto, kind string) *dns.Msg {
		t.Helper()
		r, err := ls.tryExchange(victimIP, proto, ednsQuery(names[kind]+".default.svc.cluster.local.", 4096))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	answered := func(r *dns.Msg, kind string) bool {
		return r.Rcode == dns.RcodeSuccess && len(r.Answer) == 2 && r.Answer[0].(*dns.CNAME).Target == names[kind]+".found.example."
	}
	for kind := range names { // every candidate into the cache, over TCP
		if r := ask("tcp", kind); !answered(r, kind) {
			t.Fatalf("NXDOMAINs with records %s, before the slots were taken: %s %v, want a CNAME to %s.found.example. and its address", kind, dns.RcodeToString[r.Rcode], r.Answer, names[kind])
		}
	}
	ls.holdForwardingSlots(t, slots)
	overload := testutil.ToFloat64(metricQueries.overload)
	for _, kind := range []string{"plain", "past the buffer"} {
		if r := ask("udp", kind); !answered(r, kind) {
			t.Errorf("NXDOMAINs, records %s, every slot taken: %s %v, want a CNAME to %s.found.example. and its address, from the cache", kind, dns.RcodeToString[r.Rcode], r.Answer, names[kind])
		}
	}
	if r := ask("udp", "filling the buffer"); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("NXDOMAINs with records filling the buffer, every slot taken: %s %v, want SERVFAIL (past the bytes the offline pass may read, it needs a slot)", dns.RcodeToString[r.Rcode], r.Answer)
	}
	if got := testutil.ToFloat64(metricQueries.overload) - overload; got != 1 {
		t.Errorf("%v queries refused for the node's bound, want 1: the one past the bytes", got)
	}
}

// BenchmarkLargeCachedReply answers, as the UDP loop does, on the socket's
// goroutine (the offline pass), queries the forwarder's cache answers from
// replies of one record, of bigRecords addresses (59 KB, a pod's
// nameserver's, cached from TCP) and of bigTXT TXT records of 600 octets
// (62 KB): the name asked, an ExternalName chased to it, autopath finding
// it as a candidate; the client asks with a buffer of 1,232 octets.
// README's limits table quotes it.
func BenchmarkLargeCachedReply(b *testing.B) {
	up := dnstest.Start(b, "127.0.0.1:0", bigAnswers{}).Addr
	fwd := forward.New()
	b.Cleanup(func() { fwd.Close() })
	ups := []netip.AddrPort{up}
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "client", IPs: []netip.Addr{victimIP}, DNSSearches: []string{"corp.internal"}}})
	s := fuzzServerWith(b, Options{Limits: rateInKernel, Forwarder: fwd, Pods: pods, Autopath: true,
		Upstreams: func(netip.AddrPort, netip.AddrPort) ([]netip.AddrPort, bool) { return ups, false }})
	tbl, _ := table.Build(&model.Snapshot{Services: []model.Service{
		{Namespace: "ns1", Name: "out", ExternalName: "big.example"},
		{Namespace: "ns1", Name: "small", ExternalName: "small.example"},
	}}, table.Options{})
	s.SetTable(tbl)
	// The names the queries below ask the cache, asked as the lookups ask
	// them (EDNS, no DO), over TCP.
	for _, name := range []string{"small.example.", "big.example.", "little.corp.internal.", "big.corp.internal."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeTXT} {
			q, _ := ednsQueryOf(name, qtype, dnswire.EDNSUDPSize).Pack()
			if _, from, err := fwd.ForwardFrom(b.Context(), q, true, ups); err != nil || from.Failure != "" {
				b.Fatalf("filling the cache with %s: %v, %+v", name, err, from)
			}
		}
	}
	src, local := netip.AddrPortFrom(victimIP, 5000), netip.MustParseAddrPort("127.0.0.1:53")
	for _, bc := range []struct {
		name, qname string
		qtype       uint16
	}{
		{"hit/small", "small.example.", dns.TypeA},
		{"hit/59KB", "big.example.", dns.TypeA},
		{"hit/62KB-TXT", "big.example.", dns.TypeTXT},
		{"ExternalName/small", "small.ns1.svc.cluster.local.", dns.TypeA},
		{"ExternalName/59KB", "out.ns1.svc.cluster.local.", dns.TypeA},
		{"ExternalName/62KB-TXT", "out.ns1.svc.cluster.local.", dns.TypeTXT},
		{"autopath/small", "little.ns1.svc.cluster.local.", dns.TypeA},
		{"autopath/59KB", "big.ns1.svc.cluster.local.", dns.TypeA},
		{"autopath/62KB-TXT", "big.ns1.svc.cluster.local.", dns.TypeTXT},
	} {
		b.Run(bc.name, func(b *testing.B) {
			q, _ := ednsQueryOf(bc.qname, bc.qtype, 1232).Pack()
			out := make([]byte, 0, 4096+512) // as a batch's
			b.ReportAllocs()
			for b.Loop() {
				if reply := s.slowUDP(nil, q, src, local, out); reply == nil || dnswire.HeaderRcode(reply) != dnswire.RcodeSuccess {
					b.Fatalf("not answered from the cache: %x", reply)
				}
			}
		})
	}
}
