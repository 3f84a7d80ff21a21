package resolver

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// Rate limits for fuzzServer: rateInResolver, a rate every query passes
// (a billion a second, a burst of a billion), so the fast path pays for the
// resolver's own check (TCP, or UDP without the kernel's) and never hits
// it; rateInKernel, the fast path as UDP queries take it when the kernel
// applies the rate (kernelrate_linux.go) or there is none.
var (
	rateInResolver = quota.Limits{QPS: 1e9, Burst: 1 << 30}
	rateInKernel   = quota.Limits{QPS: -1}
)

func fuzzServer(tb testing.TB, limits quota.Limits) *Server {
	return fuzzServerWith(tb, Options{Limits: limits})
}

func fuzzServerWith(tb testing.TB, opts Options) *Server {
	// No forwarder: misses get SERVFAIL without a network.
	s := New(opts)
	tbl, _ := table.Build(&model.Snapshot{
		Services: []model.Service{
			{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}, Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}},
			{Namespace: "default", Name: "ext", ExternalName: "web.default.svc.cluster.local"},
		},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "default", Name: "a", Hosts: []string{"address.internal", "*.wild.example"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}, AutoAllocate: true},
			{Namespace: "default", Name: "b", Hosts: []string{"auto.internal"}, Resolution: "DNS", AutoAllocate: true},
			{Namespace: "default", Name: "c", Hosts: []string{"big.internal"}, Addresses: bigSet},
		},
	}, table.Options{})
	s.SetTable(tbl)
	tb.Cleanup(func() { s.Close() })
	return s
}

// bigSet is 40 addresses, more than a reply of 512 bytes holds.
var bigSet = func() []netip.Addr {
	var as []netip.Addr
	for i := range 40 {
		as = append(as, netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}))
	}
	return as
}()

func query(name string, qtype uint16, edns bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(4096, true)
	}
	b, _ := m.Pack()
	return b
}

// FuzzAnswer feeds arbitrary packets to both paths of the request handler:
// they must never panic, and a reply must carry the query's ID, be a
// response, and parse.
func FuzzAnswer(f *testing.F) {
	for _, q := range [][]byte{
		query("address.internal.", dns.TypeA, false),
		query("AUTO.internal.", dns.TypeAAAA, true),
		query("x.wild.example.", dns.TypeANY, true),
		query("ext.default.svc.cluster.local.", dns.TypeA, false),
		query("address.internal.default.svc.cluster.local.", dns.TypeA, true),
		query("_http._tcp.web.default.svc.cluster.local.", dns.TypeSRV, false),
		query("1.0.96.10.in-addr.arpa.", dns.TypePTR, false),
		query("Web.Default.svc.cluster.local.", dns.TypeTXT, true), // NODATA: an SOA compressed into the question
		query("1.0.96.10.in-addr.arpa.", dns.TypeA, false),
		query("unknown.example.", dns.TypeA, false),
		{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0},
		{0xc0},
	} {
		f.Add(q, false)
		f.Add(q, true)
	}
	s := fuzzServer(f, rateInResolver)
	f.Fuzz(func(t *testing.T, pkt []byte, tcp bool) {
		src := netip.MustParseAddrPort("127.0.0.2:5000")
		reply, slow := s.answerFast(pkt, src, tcp, nil, new(scratch), 0)
		if slow {
			reply = s.answerSlow(context.Background(), pkt, src, netip.AddrPort{}, tcp)
		}
		if reply == nil {
			return
		}
		if len(pkt) < 2 || binary.BigEndian.Uint16(reply) != binary.BigEndian.Uint16(pkt) {
			t.Fatalf("reply ID differs from the query's: %x for %x", reply, pkt)
		}
		m := new(dns.Msg)
		if err := m.Unpack(reply); err != nil {
			t.Fatalf("reply does not parse: %v\nquery %x\nreply %x", err, pkt, reply)
		}
		if !m.Response {
			t.Fatalf("reply without QR: %x", reply)
		}
		if !tcp && len(reply) > 4096 {
			t.Fatalf("UDP reply of %d bytes", len(reply))
		}
	})
}

// FuzzCompressedFit checks the decoded cut fitUDP sends when the cut on
// the wire drops records: it never panics, and a cut it makes is within
// the limit, parses, has the reply's ID, and TC when it left out an
// answer or authority record and only then (or when the reply had it);
// and for a reply every record of which decodes, with at most one
// OPT record, the root's, among the additional, and no TSIG (plainReply),
// it is the cut made decoding every record (decodedFit). (Where miekg and
// the wire cut part ways, on an OPT record elsewhere or owned by another
// name, or on records beyond those that fit that do not decode, the cut
// may differ; the rest is still checked.) Seeds, with and without an OPT
// record, cut to 512 octets (miekg's Truncate cuts to no less): 20
// addresses uncompressed, which all fit compressed; 3 TXT records, of
// which 2 fit (TC); an address, its NS and 2 TXT records of the NS's name
// in the additional section, both left out (a set is kept whole; no TC).
// And one whose records shrink decoded: an NSEC record of a padded type
// bitmap (dnstest.PaddedNSEC, 375 octets, packed again in 4) before
// a TXT record larger than the room, which the read of the first records
// stands in for (its stand-in must not fit however the NSEC record packs).
// They are as small as that allows: the fuzzer minimizes each input that
// finds new coverage, for up to a minute, by tries that grow with the
// square of its length, and with seeds of 60 addresses (1.7 KB) its
// workers did little else (a few hundred inputs, then none for a minute).
func FuzzCompressedFit(f *testing.F) {
	a := func(name string, i int) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(203, 0, 113, byte(i+1))}
	}
	txt := func(name string, i, n int) dns.RR {
		return &dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat(string(rune('a'+i)), n)}}
	}
	ns := &dns.NS{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.example."}
	addresses := make([]dns.RR, 20)
	for i := range addresses {
		addresses[i] = a("big.example.", i)
	}
	for _, seed := range []struct {
		compress                 bool
		answer, authority, extra []dns.RR
	}{
		{compress: false, answer: addresses},
		{compress: true, answer: []dns.RR{txt("big.example.", 0, 150), txt("big.example.", 1, 150), txt("big.example.", 2, 150)}},
		{compress: true, answer: []dns.RR{a("big.example.", 0)}, authority: []dns.RR{ns}, extra: []dns.RR{txt("ns.example.", 0, 220), txt("ns.example.", 1, 220)}},
	} {
		for _, edns := range []bool{false, true} {
			m := new(dns.Msg)
			m.SetQuestion("Big.example.", dns.TypeA)
			m.Response = true
			m.Answer, m.Ns, m.Extra = seed.answer, seed.authority, slices.Clone(seed.extra)
			if edns {
				m.SetEdns0(1232, true)
			}
			m.Compress = seed.compress
			b, _ := m.Pack()
			f.Add(b, uint16(512))
		}
	}
	padded := new(dns.Msg)
	padded.SetQuestion("big.example.", dns.TypeA)
	padded.Response = true
	nsec := dnstest.PaddedNSEC("big.example.", 60, 10)
	larger := txt("big.example.", 0, 250)
	larger.(*dns.TXT).Txt = append(larger.(*dns.TXT).Txt, strings.Repeat("z", 250)) // 514 octets
	padded.Answer = []dns.RR{nsec, larger, a("big.example.", 0)}
	b, _ := padded.Pack()
	f.Add(b, uint16(512))
	f.Fuzz(func(t *testing.T, msg []byte, limit uint16) {
		fit, err := dnswire.PlanFit(msg, int(limit))
		if err != nil || !fit.Dropped {
			return
		}
		out, tc := compressedFit(msg, int(limit), fit.Kept())
		if plainReply(msg) { // made only where the two cuts must agree
			if want := decodedFit(msg, int(limit), fit.Kept()); !bytes.Equal(out, want) {
				t.Fatalf("the cut %x\nwant, as when every record is decoded, %x\nreply %x, limit %d", out, want, msg, limit)
			}
		}
		if out == nil {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("the cut does not parse: %v\nreply %x\ncut %x", err, msg, out)
		}
		// TC when an answer or authority record is left out (RFC 2181 9),
		// and then only, or when the reply had it.
		cut := len(m.Answer) < int(binary.BigEndian.Uint16(msg[6:])) || len(m.Ns) < int(binary.BigEndian.Uint16(msg[8:]))
		hadTC := msg[2]&(dnswire.FlagTC>>8) != 0
		if len(out) > int(limit) || m.Truncated != (cut || hadTC) || tc != cut || binary.BigEndian.Uint16(out) != binary.BigEndian.Uint16(msg) {
			t.Fatalf("cut to %d octets (limit %d), TC %v (reported %v), answers or authority cut %v, TC before %v, ID %#x for %#x",
				len(out), limit, m.Truncated, tc, cut, hadTC, m.Id, binary.BigEndian.Uint16(msg))
		}
	})
}

// plainReply reports whether every record of msg decodes, the only OPT
// record, if any, is the root's in the additional section, and there is
// no TSIG.
func plainReply(msg []byte) bool {
	m := new(dns.Msg)
	if m.Unpack(msg) != nil {
		return false
	}
	rrs := slices.Concat(m.Answer, m.Ns, m.Extra)
	if int(binary.BigEndian.Uint16(msg[6:]))+int(binary.BigEndian.Uint16(msg[8:]))+int(binary.BigEndian.Uint16(msg[10:])) != len(rrs) {
		return false
	}
	opts := 0
	for i, rr := range rrs {
		switch rr.Header().Rrtype {
		case dns.TypeTSIG:
			return false
		case dns.TypeOPT:
			if opts++; i < len(m.Answer)+len(m.Ns) || rr.Header().Name != "." {
				return false
			}
		}
	}
	return opts <= 1
}

func TestFastPathAllocatesNothing(t *testing.T) {
	type fastQuery struct {
		q           []byte
		answer, soa int // records in the answer and authority sections
	}
	// An answer, NODATA (which carries the zone's SOA), SRV (with its
	// target's address in the additional section), and a rotated set cut
	// to the 30 addresses that fit in 512 bytes (12 header, 18 question).
	common := []fastQuery{
		{query("address.internal.", dns.TypeA, true), 1, 0},
		{query("web.default.svc.cluster.local.", dns.TypeTXT, true), 0, 1},
		{query("_http._tcp.web.default.svc.cluster.local.", dns.TypeSRV, true), 1, 0},
		{query("big.internal.", dns.TypeA, false), (512 - 12 - 18) / 16, 0},
	}
	// A pod whose addresses are all IPv6: the family filter keeps its
	// queries on the fast path, its own family's VIP and NODATA with the
	// SOA for the other.
	v6 := podcache.New()
	v6.SetSourcePods([]model.Pod{{Namespace: "default", Name: "v6", IPs: []netip.Addr{netip.MustParseAddr("fd00::2")}}})
	for _, c := range []struct {
		name    string
		opts    Options
		src     string
		queries []fastQuery
	}{
		{"rate in the kernel", Options{Limits: rateInKernel}, "127.0.0.2:5000", common},
		{"rate in the resolver", Options{Limits: rateInResolver}, "127.0.0.2:5000", common},
		{"single-stack pod", Options{Limits: rateInKernel, Pods: v6}, "[fd00::2]:5000", []fastQuery{
			{query("auto.internal.", dns.TypeA, true), 0, 1},
			{query("auto.internal.", dns.TypeAAAA, true), 1, 0},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := fuzzServerWith(t, c.opts)
			out := make([]byte, 0, 512)
			// Counted per batch, as over UDP, and at once, as over TCP.
			batched, unbatched := &scratch{batch: s.newBatchCounts()}, new(scratch)
			src := netip.MustParseAddrPort(c.src)
			for _, fq := range c.queries {
				what := dnstest.Unpack(t, fq.q).Question[0].String()
				reply, slow := s.answerFast(fq.q, src, false, out, batched, 0)
				if slow {
					t.Fatalf("%s: took the slow path", what)
				}
				m := dnstest.Unpack(t, reply)
				if len(m.Answer) != fq.answer || len(m.Ns) != fq.soa || m.Rcode != dns.RcodeSuccess {
					t.Errorf("%s: %s, answer %v, authority %v; want %d answers, %d SOA", what, dns.RcodeToString[m.Rcode], m.Answer, m.Ns, fq.answer, fq.soa)
				}
				allocs := testing.AllocsPerRun(1000, func() {
					for _, sc := range []*scratch{batched, unbatched} {
						if _, slow := s.answerFast(fq.q, src, false, out, sc, 0); slow {
							t.Fatal("took the slow path")
						}
					}
					s.flush(batched.batch, 1000)
				})
				if allocs != 0 {
					t.Errorf("%s: fast path allocates %.1f times per query, want 0", what, allocs)
				}
			}
		})
	}
}

// BenchmarkFastPath answers a known name over UDP as it runs with the
// agent's defaults: the query rate is applied in the kernel.
func BenchmarkFastPath(b *testing.B) { benchmarkFastPath(b, rateInKernel) }

// BenchmarkFastPathRateInResolver is the same with the resolver checking
// the source's rate itself, as over TCP, or UDP without CAP_BPF.
func BenchmarkFastPathRateInResolver(b *testing.B) { benchmarkFastPath(b, rateInResolver) }

func benchmarkFastPath(b *testing.B, limits quota.Limits) {
	benchmarkFastPathFrom(b, fuzzServer(b, limits), false)
}

// BenchmarkFastPathCapturedPod is BenchmarkFastPath with the query from a
// captured pod the registry knows, on a socket that is a capture slot
// (captureSlot) or not: what capture costs the fast path beyond the pod
// lookup is the check for a released pod (Options.CaptureSlot).
func BenchmarkFastPathCapturedPod(b *testing.B) {
	pods := podcache.New()
	pods.Attach(podcache.Attachment{Namespace: "default", Name: "client", NetnsCookie: 1,
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}, Captured: true})
	for _, slot := range []bool{false, true} {
		b.Run(fmt.Sprintf("captureSlot=%v", slot), func(b *testing.B) {
			benchmarkFastPathFrom(b, fuzzServerWith(b, Options{Limits: rateInKernel, Pods: pods}), slot)
		})
	}
}

func benchmarkFastPathFrom(b *testing.B, s *Server, captureSlot bool) {
	q := query("address.internal.", dns.TypeA, true)
	out := make([]byte, 0, 512)
	sc := &scratch{batch: s.newBatchCounts(), captureSlot: captureSlot}
	src := netip.MustParseAddrPort("127.0.0.2:5000")
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		s.answerFast(q, src, false, out, sc, 0)
		if n++; n%batchSize == 0 { // as the UDP loop adds a batch's counts
			s.flush(sc.batch, 1000)
		}
	}
}

// BenchmarkForwardCacheHit answers, as the UDP loop does, a forwarded name
// the forwarder's cache holds: the fast path hands it over, and the slow
// path's offline pass answers it from the cache into the batch's buffer,
// on the socket's goroutine. The rate is applied in the kernel, as with
// the agent's defaults; the client is no pod (as dnsperf on the node).
func BenchmarkForwardCacheHit(b *testing.B) {
	up := dnstest.Start(b, "127.0.0.1:0", dnstest.ZoneOf(b, "www.example.com. 3600 IN A 203.0.113.7", "www.example.com. 3600 IN A 203.0.113.8")).Addr
	fwd := forward.New()
	b.Cleanup(func() { fwd.Close() })
	ups := []netip.AddrPort{up}
	s := fuzzServerWith(b, Options{Limits: rateInKernel, Forwarder: fwd,
		Upstreams: func(netip.AddrPort, netip.AddrPort) ([]netip.AddrPort, bool) { return ups, false }})
	q := query("www.example.com.", dns.TypeA, true)
	if _, from, err := fwd.ForwardFrom(b.Context(), q, false, ups); err != nil || from.Cached {
		b.Fatalf("filling the cache: %v, %+v", err, from)
	}
	out := make([]byte, 0, 4096+512) // as a batch's
	sc := &scratch{batch: s.newBatchCounts()}
	src, local := netip.MustParseAddrPort("127.0.0.2:5000"), netip.MustParseAddrPort("127.0.0.1:53")
	b.ReportAllocs()
	for b.Loop() {
		reply, slow := s.answerFast(q, src, false, out, sc, 0)
		if !slow || reply != nil {
			b.Fatal("a forwarded name was not handed to the slow path")
		}
		if reply = s.slowUDP(nil, q, src, local, out); !sameStart(reply, out) || dnswire.HeaderRcode(reply) != dnswire.RcodeSuccess {
			b.Fatalf("the cached answer was not answered into the batch's buffer: %x", reply)
		}
	}
}

// TestUDPLoopAllocatesNothing runs real queries through a real socket: the
// batch loop and the fast path together must not allocate per query.
func TestUDPLoopAllocatesNothing(t *testing.T) {
	s := fuzzServer(t, rateInResolver)
	conn, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeUDP(conn)
	client, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	q := query("address.internal.", dns.TypeA, true)
	buf := make([]byte, 1500)
	ask := func() {
		if _, err := client.Write(q); err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := client.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm up: first batches size the buffers
		ask()
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		ask()
	}
	runtime.ReadMemStats(&after)
	if per := float64(after.Mallocs-before.Mallocs) / n; per > 0.05 {
		t.Errorf("%.2f allocations per query through the UDP loop, want 0", per)
	}
}
