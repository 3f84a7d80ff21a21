package forward

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// step is one query in a cache scenario: advance the clock, ask, and check
// whether the upstream was contacted and the TTLs the client sees.
type step struct {
	advance      time.Duration
	name         string // default www.example.com.
	opts         []func(*dns.Msg)
	wantUpstream bool
	wantTTL      uint32 // of every non-OPT record; 0 skips the check
}

func TestCache(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		handler handlerFunc
		opts    []Option
		steps   []step
	}{
		{"positive answer: hit, TTL ages, expires", answerA(300, "198.51.100.1"), nil, []step{
			{wantUpstream: true, wantTTL: 300},
			{wantUpstream: false, wantTTL: 300},
			{advance: 100 * time.Second, wantTTL: 200},
			{advance: 199*time.Second + 999*time.Millisecond, wantTTL: 1},
			{advance: time.Millisecond, wantUpstream: true, wantTTL: 300},
		}},
		{"lifetime is the smallest answer TTL", func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(req)
			for i, ttl := range []uint32{300, 60, 120} {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 51, 100, byte(i))})
			}
			_ = w.WriteMsg(m)
		}, nil, []step{
			{wantUpstream: true},
			{advance: 59 * time.Second},
			{advance: time.Second, wantUpstream: true},
		}},
		{"TTL capped by WithMaxTTL", answerA(86400, "198.51.100.1"), []Option{WithMaxTTL(time.Hour)}, []step{
			{wantUpstream: true},
			{advance: time.Hour - time.Second},
			{advance: time.Second, wantUpstream: true},
		}},
		{"zero TTL is not cached", answerA(0, "198.51.100.1"), nil, []step{
			{wantUpstream: true},
			{wantUpstream: true},
		}},
		{"NXDOMAIN lives for SOA MINIMUM when smaller", answerNegative(dns.RcodeNameError, 3600, 30), nil, []step{
			{wantUpstream: true},
			{advance: 29 * time.Second},
			{advance: time.Second, wantUpstream: true},
		}},
		{"NODATA lives for SOA TTL when smaller", answerNegative(dns.RcodeSuccess, 10, 600), nil, []step{
			{wantUpstream: true, wantTTL: 10},
			{advance: 4 * time.Second, wantTTL: 6},
			{advance: 6 * time.Second, wantUpstream: true},
		}},
		{"NXDOMAIN without SOA is not cached", answerNegative(dns.RcodeNameError, 0, 0), nil, []step{
			{wantUpstream: true},
			{wantUpstream: true},
		}},
		{"SERVFAIL is not cached", answerRcode(dns.RcodeServerFailure), nil, []step{
			{wantUpstream: true},
			{wantUpstream: true},
		}},
		{"REFUSED is not cached", answerRcode(dns.RcodeRefused), nil, []step{
			{wantUpstream: true},
			{wantUpstream: true},
		}},
		{"name case does not matter", answerA(60, "198.51.100.1"), nil, []step{
			{name: "www.example.com.", wantUpstream: true},
			{name: "WWW.EXAMPLE.COM."},
			{name: "wWw.ExAmPlE.cOm."},
		}},
		{"EDNS, DO and CD are part of the key", answerA(60, "198.51.100.1"), nil, []step{
			{wantUpstream: true},
			{opts: []func(*dns.Msg){withEDNS(false)}, wantUpstream: true},
			{opts: []func(*dns.Msg){withEDNS(true)}, wantUpstream: true},
			{opts: []func(*dns.Msg){withEDNS(true), withCD}, wantUpstream: true},
			{opts: []func(*dns.Msg){withCD}, wantUpstream: true},
			{},
			{opts: []func(*dns.Msg){withEDNS(false)}},
			{opts: []func(*dns.Msg){withEDNS(true)}},
			{opts: []func(*dns.Msg){withEDNS(true), withCD}},
			{opts: []func(*dns.Msg){withCD}},
		}},
		{"qtype is part of the key", answerA(60, "198.51.100.1"), nil, []step{
			{wantUpstream: true},
			{opts: []func(*dns.Msg){func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }}, wantUpstream: true},
			{},
		}},
		{"least recently used entry is evicted", answerA(60, "198.51.100.1"), []Option{WithCacheSize(2)}, []step{
			{name: "a.example.", wantUpstream: true},
			{name: "b.example.", wantUpstream: true},
			{name: "a.example."},
			{name: "c.example.", wantUpstream: true}, // evicts b
			{name: "a.example."},
			{name: "c.example."},
			{name: "b.example.", wantUpstream: true},
		}},
		{"cache size 0 disables caching", answerA(60, "198.51.100.1"), []Option{WithCacheSize(0)}, []step{
			{wantUpstream: true},
			{wantUpstream: true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := startUpstream(t, tc.handler)
			clock := newFakeClock()
			f := newForwarder(t, append([]Option{WithNow(clock.Now)}, tc.opts...)...)
			for i, s := range tc.steps {
				clock.Advance(s.advance)
				name := s.name
				if name == "" {
					name = "www.example.com."
				}
				id := uint16(1000 + i)
				before := up.queries.Load()
				m := forward(t, f, query(t, name, dns.TypeA, append(s.opts, withID(id))...), false, up.addr)
				if asked := up.queries.Load() > before; asked != s.wantUpstream {
					t.Errorf("step %d (%s): upstream contacted = %v, want %v", i, name, asked, s.wantUpstream)
				}
				if m.Id != id || len(m.Question) != 1 || m.Question[0].Name != name {
					t.Errorf("step %d: ID %d question %v, want ID %d and the client's question %q", i, m.Id, m.Question, id, name)
				}
				if s.wantTTL != 0 {
					for _, rr := range append(append(m.Answer, m.Ns...), m.Extra...) {
						if rr.Header().Rrtype != dns.TypeOPT && rr.Header().Ttl != s.wantTTL {
							t.Errorf("step %d: %s has TTL %d, want %d", i, rr.Header().Name, rr.Header().Ttl, s.wantTTL)
						}
					}
				}
			}
		})
	}
}

func TestCacheIsPerUpstreamSet(t *testing.T) {
	t.Parallel()
	a := startUpstream(t, answerA(60, "198.51.100.1"))
	b := startUpstream(t, answerA(60, "198.51.100.2"))
	f := newForwarder(t)
	ask := func(ups ...netip.AddrPort) string {
		t.Helper()
		return firstA(forward(t, f, query(t, "www.example.com.", dns.TypeA), false, ups...))
	}
	if got := ask(a.addr); got != "198.51.100.1" {
		t.Errorf("via A: %s, want 198.51.100.1", got)
	}
	if got := ask(b.addr); got != "198.51.100.2" {
		t.Errorf("via B: %s, want B's own answer 198.51.100.2, not A's cached one", got)
	}
	if a.queries.Load() != 1 || b.queries.Load() != 1 {
		t.Errorf("queries A=%d B=%d, want 1 each", a.queries.Load(), b.queries.Load())
	}
	// {A, B} is a third set; listed in either order, with a repeat, it is the same set.
	ask(a.addr, b.addr)
	// Both are asked; the first good reply returns before the other's
	// query may have reached it.
	testenv.Eventually(t, guard, "both upstreams get the query", func() bool { return a.queries.Load() == 2 && b.queries.Load() == 2 })
	total := a.queries.Load() + b.queries.Load()
	ask(b.addr, a.addr)
	ask(b.addr, a.addr, b.addr)
	if got := a.queries.Load() + b.queries.Load(); got != total {
		t.Errorf("set {B, A} went upstream again (%d queries, want %d)", got, total)
	}
}

func TestCacheKeyUpstreamOrderAndDuplicates(t *testing.T) {
	t.Parallel()
	req := query(t, "www.example.com.", dns.TypeA)
	var r dnswire.Query
	if err := dnswire.ParseQuery(req, &r, nil); err != nil {
		t.Fatal(err)
	}
	ups := func(ss ...string) []netip.AddrPort {
		var out []netip.AddrPort
		for _, s := range ss {
			out = append(out, netip.MustParseAddrPort(s))
		}
		return out
	}
	key := func(u []netip.AddrPort) string { return string(appendKey(nil, req, r, u)) }
	cases := []struct {
		name string
		a, b []netip.AddrPort
		same bool
	}{
		{"order does not matter", ups("127.0.0.1:53", "127.0.0.2:53", "[::1]:53"), ups("[::1]:53", "127.0.0.2:53", "127.0.0.1:53"), true},
		{"duplicates do not matter", ups("127.0.0.1:53", "127.0.0.1:53"), ups("127.0.0.1:53"), true},
		{"mapped IPv4 is IPv4", ups("[::ffff:127.0.0.1]:53"), ups("127.0.0.1:53"), true},
		{"port matters", ups("127.0.0.1:53"), ups("127.0.0.1:5353"), false},
		{"address matters", ups("127.0.0.1:53"), ups("127.0.0.2:53"), false},
		{"subset differs", ups("127.0.0.1:53"), ups("127.0.0.1:53", "127.0.0.2:53"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if same := key(tc.a) == key(tc.b); same != tc.same {
				t.Errorf("keys equal = %v, want %v", same, tc.same)
			}
		})
	}
}

func TestCacheLifetime(t *testing.T) {
	t.Parallel()
	reply := func(rcode int, answerTTLs []uint32, soa *dns.SOA, tweak func(*dns.Msg)) dnswire.Reply {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("www.example.com.", dns.TypeA)
		m.Response, m.Rcode = true, rcode
		for i, ttl := range answerTTLs {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 51, 100, byte(i))})
		}
		if soa != nil {
			m.Ns = append(m.Ns, soa)
		}
		m.SetEdns0(1232, true)
		if tweak != nil {
			tweak(m)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		s, err := dnswire.ScanReply(b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name   string
		scan   dnswire.Reply
		want   time.Duration
		wantOK bool
	}{
		{"positive: min answer TTL", reply(dns.RcodeSuccess, []uint32{300, 20, 40}, nil, nil), 20 * time.Second, true},
		{"positive with SOA in authority: answer TTL", reply(dns.RcodeSuccess, []uint32{300}, testSOA(5, 5), nil), 300 * time.Second, true},
		{"positive capped", reply(dns.RcodeSuccess, []uint32{7200}, nil, nil), time.Hour, true},
		{"TTL with top bit set counts as zero", reply(dns.RcodeSuccess, []uint32{1 << 31}, nil, nil), 0, false},
		{"NXDOMAIN: SOA minimum", reply(dns.RcodeNameError, nil, testSOA(600, 60), nil), 60 * time.Second, true},
		{"NXDOMAIN: SOA TTL", reply(dns.RcodeNameError, nil, testSOA(15, 60), nil), 15 * time.Second, true},
		{"NXDOMAIN after CNAME: CNAME TTL bounds it", reply(dns.RcodeNameError, []uint32{5}, testSOA(600, 60), nil), 5 * time.Second, true},
		{"NODATA: SOA", reply(dns.RcodeSuccess, nil, testSOA(600, 45), nil), 45 * time.Second, true},
		{"NODATA without SOA", reply(dns.RcodeSuccess, nil, nil, nil), 0, false},
		{"CNAME, no data: SOA minimum", reply(dns.RcodeSuccess, nil, testSOA(10, 5), cnameTo(dns.TypeAAAA, 3600)), 5 * time.Second, true},
		{"CNAME, no data: CNAME TTL when smaller", reply(dns.RcodeSuccess, nil, testSOA(600, 60), cnameTo(dns.TypeAAAA, 30)), 30 * time.Second, true},
		{"CNAME, no data without SOA", reply(dns.RcodeSuccess, nil, nil, cnameTo(dns.TypeAAAA, 3600)), 0, false},
		{"CNAME, then the asked type: answer TTLs", reply(dns.RcodeSuccess, nil, testSOA(10, 5), cnameTo(dns.TypeAAAA, 3600, "2001:db8::1")), 60 * time.Second, true},
		{"CNAME question: positive", reply(dns.RcodeSuccess, nil, testSOA(10, 5), cnameTo(dns.TypeCNAME, 3600)), time.Hour, true},
		{"ANY question: positive", reply(dns.RcodeSuccess, nil, testSOA(10, 5), cnameTo(dns.TypeANY, 3600)), time.Hour, true},
		{"NXDOMAIN without SOA", reply(dns.RcodeNameError, nil, nil, nil), 0, false},
		{"SERVFAIL", reply(dns.RcodeServerFailure, nil, testSOA(600, 60), nil), 0, false},
		{"REFUSED", reply(dns.RcodeRefused, []uint32{60}, nil, nil), 0, false},
		{"truncated", reply(dns.RcodeSuccess, []uint32{60}, nil, func(m *dns.Msg) { m.Truncated = true }), 0, false},
		{"NOTIFY", reply(dns.RcodeSuccess, []uint32{60}, nil, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), 0, false},
		{"not a response", reply(dns.RcodeSuccess, []uint32{60}, nil, func(m *dns.Msg) { m.Response = false }), 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := cacheLifetime(tc.scan, time.Hour)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("cacheLifetime = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// cnameTo asks qtype and answers with a CNAME of TTL ttl to
// edge.cdn.test., then an AAAA of TTL 60 there for each address.
func cnameTo(qtype uint16, ttl uint32, addrs ...string) func(*dns.Msg) {
	return func(m *dns.Msg) {
		m.Question[0].Qtype = qtype
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: "edge.cdn.test."})
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: "edge.cdn.test.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: net.ParseIP(a)})
		}
	}
}

// TestCNAMEToNoDataKeptForTheSOAMinimum: an AAAA question answered by a
// CNAME (TTL 3600) to a name without an AAAA, and an SOA (TTL 10, MINIMUM
// 5) in authority, is no data (RFC 2308 2.2): kept for 5 s, not for the
// CNAME's hour. When the AAAA appears at the CDN's edge, a query 6 s later
// asks the upstream again and gets it, through ForwardFrom as through
// AppendCached (the resolver's answers from the cache, asking nobody),
// which has nothing to give by then.
func TestCNAMEToNoDataKeptForTheSOAMinimum(t *testing.T) {
	t.Parallel()
	var published atomic.Bool
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 3600}, Target: "edge.cdn.test."})
		if published.Load() {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: "edge.cdn.test.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 300}, AAAA: net.ParseIP("2001:db8::1")})
		} else {
			m.Ns = append(m.Ns, testSOA(10, 5))
		}
		_ = w.WriteMsg(m)
	})
	clock := newFakeClock()
	f := newForwarder(t, WithNow(clock.Now))
	ups := []netip.AddrPort{up.addr}
	src := new(quota.Source)
	ctx := quota.WithSource(t.Context(), src)
	req := query(t, "app.example.com.", dns.TypeAAAA)
	ask := func(step string, wantUpstream bool, wantAAAA string) {
		t.Helper()
		before := up.queries.Load()
		b, _, err := f.ForwardFrom(ctx, req, false, ups)
		if err != nil {
			t.Fatalf("%s: ForwardFrom: %v", step, err)
		}
		m := dnstest.Unpack(t, b)
		if asked := up.queries.Load() > before; asked != wantUpstream {
			t.Errorf("%s: upstream asked = %v, want %v", step, asked, wantUpstream)
		}
		var aaaa string
		for _, rr := range m.Answer {
			if a, ok := rr.(*dns.AAAA); ok {
				aaaa = a.AAAA.String()
			}
		}
		if m.Rcode != dns.RcodeSuccess || aaaa != wantAAAA {
			t.Errorf("%s: %s with AAAA %q, want NOERROR with %q:\n%v", step, dns.RcodeToString[m.Rcode], aaaa, wantAAAA, m)
		}
	}
	ask("first query", true, "")
	published.Store(true) // the record appears at the edge
	clock.Advance(4 * time.Second)
	if _, ok := f.fromCacheOnly(nil, req, ups, src); !ok {
		t.Error("4 s later: AppendCached has no reply; want the cached no data")
	}
	ask("4 s later", false, "")
	clock.Advance(2 * time.Second)
	if out, ok := f.fromCacheOnly(nil, req, ups, src); ok {
		t.Errorf("6 s later: AppendCached answered from the cache, past the SOA minimum:\n%v", dnstest.Unpack(t, out))
	}
	ask("6 s later", true, "2001:db8::1")
}

func BenchmarkForwardCacheHit(b *testing.B) {
	up := startUpstream(b, answerA(3600, "198.51.100.1", "198.51.100.2"))
	f := newForwarder(b)
	ups := []netip.AddrPort{up.addr, testenv.DeadAddr(b)}
	req := query(b, "www.example.com.", dns.TypeA, withEDNS(false))
	forward(b, f, req, false, ups...) // fill the cache
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.Forward(ctx, req, false, ups); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := up.queries.Load(); n != 1 {
		b.Errorf("upstream got %d queries during the benchmark, want only the first", n)
	}
}

func BenchmarkForwardMissUDP(b *testing.B) {
	up := startUpstream(b, answerA(3600, "198.51.100.1"))
	f := newForwarder(b, WithCacheSize(0))
	ups := []netip.AddrPort{up.addr}
	req := query(b, "www.example.com.", dns.TypeA)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Forward(ctx, req, false, ups); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(up.queries.Load())/float64(b.N), "upstream/op")
}

// floodUpstream answers names starting with "f" with NXDOMAIN and an SOA,
// cached for an hour like a flood of random names would be, and all others
// with an A record for an hour.
func floodUpstream(tb testing.TB) *testUpstream {
	nx, a := answerNegative(dns.RcodeNameError, 3600, 3600), answerA(3600, "198.51.100.1")
	return startUpstream(tb, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		if strings.HasPrefix(req.Question[0].Name, "f") {
			nx(u, w, req)
			return
		}
		a(u, w, req)
	})
}

// forwardAs is forward for a query from src.
func forwardAs(tb testing.TB, f *Forwarder, src *quota.Source, name string, up netip.AddrPort) *dns.Msg {
	tb.Helper()
	ctx, cancel := context.WithTimeout(quota.WithSource(context.Background(), src), 10*time.Second)
	defer cancel()
	b, err := f.Forward(ctx, query(tb, name, dns.TypeA), false, []netip.AddrPort{up})
	if err != nil {
		tb.Fatalf("Forward: %v", err)
	}
	return dnstest.Unpack(tb, b)
}

// TestCacheShareOfOneSource: one pod asking endless unique names does not
// push out what another pod keeps asking, whichever bound (entries or
// bytes) is the one that fills; the flooding pod still has its own recent
// names cached, at least its share; the cache stays within both bounds.
// Without the shares (plain LRU), the victim's names are evicted by every
// round of the flood.
func TestCacheShareOfOneSource(t *testing.T) {
	t.Parallel()
	const capacity, working, rounds = 64, 16, 10
	const flood = 4 * capacity // unique names between two of the victim's rounds: more than the cache holds
	victim, flooder := new(quota.Source), new(quota.Source)
	// Names of one length, so that every entry costs the same.
	vname := func(i int) string { return fmt.Sprintf("v%05d.example.", i) }
	fname := func(i int) string { return fmt.Sprintf("f%05d.example.", i) }
	for _, bound := range []string{"entries", "bytes"} {
		t.Run(bound, func(t *testing.T) {
			t.Parallel()
			up := floodUpstream(t)
			// What one entry costs, as the byte bound counts it (the NXDOMAIN
			// with its SOA is the larger reply).
			probe := newForwarder(t)
			forwardAs(t, probe, victim, fname(0), up.addr)
			_, probeBytes := probe.CacheUsage()
			cost := probeBytes - ownerOverhead

			opts := []Option{WithNow(newFakeClock().Now), WithCacheSize(capacity), WithCacheBytes(1 << 30)}
			if bound == "bytes" {
				opts = []Option{WithNow(newFakeClock().Now), WithCacheSize(100 * capacity), WithCacheBytes(capacity * cost)}
			}
			f := newForwarder(t, opts...)
			maxEntries, maxBytes := f.cache.max, f.cache.maxBytes
			asked := 0
			for round := range rounds {
				for i := range working {
					before := up.queries.Load()
					forwardAs(t, f, victim, vname(i), up.addr)
					if went := up.queries.Load() > before; went != (round == 0) {
						t.Errorf("round %d: the victim's %s went upstream = %v, want %v", round, vname(i), went, round == 0)
					}
				}
				for range flood {
					forwardAs(t, f, flooder, fname(asked), up.addr)
					asked++
					if entries, bytes := f.CacheUsage(); entries > maxEntries || bytes > maxBytes {
						t.Fatalf("the cache holds %d entries, %d bytes; bounds %d, %d", entries, bytes, maxEntries, maxBytes)
					}
				}
			}
			// The flooder's last share of names are still cached.
			share := capacity / shareDivisor
			before := up.queries.Load()
			for i := asked - share; i < asked; i++ {
				forwardAs(t, f, flooder, fname(i), up.addr)
			}
			if n := up.queries.Load() - before; n != 0 {
				t.Errorf("%d of the flooder's last %d names went upstream again, want them cached", n, share)
			}
			checkCache(t, f.cache)
		})
	}
}

// TestCacheSharedEntryOutlivesItsFirstAsker: a pod that asks first for the
// names another pod uses, then floods, does not push them out: the other
// pod's hit makes them shared, charged to neither.
func TestCacheSharedEntryOutlivesItsFirstAsker(t *testing.T) {
	t.Parallel()
	const capacity, working, rounds = 64, 16, 5
	const flood = 4 * capacity // unique names between two of the victim's rounds: more than the cache holds
	victim, flooder := new(quota.Source), new(quota.Source)
	up := floodUpstream(t)
	f := newForwarder(t, WithNow(newFakeClock().Now), WithCacheSize(capacity))
	vname := func(i int) string { return fmt.Sprintf("v%05d.example.", i) }
	for i := range working {
		forwardAs(t, f, flooder, vname(i), up.addr)
	}
	asked := 0
	for round := range rounds {
		before := up.queries.Load()
		for i := range working {
			forwardAs(t, f, victim, vname(i), up.addr)
		}
		if n := up.queries.Load() - before; n != 0 {
			t.Errorf("round %d: %d of the victim's %d names went upstream, want all cached", round, n, working)
		}
		for range flood {
			forwardAs(t, f, flooder, fmt.Sprintf("f%05d.example.", asked), up.addr)
			asked++
		}
	}
	checkCache(t, f.cache)
}

// TestCacheAccounting drives the cache with random puts and gets from a few
// sources, one of them flooding, and checks after every step that what each
// source is charged adds up and both bounds hold.
func TestCacheAccounting(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, bounds := range []struct {
		entries int
		bytes   int64
	}{{50, 1 << 30}, {100000, 40 * 400}, {3, 1 << 20}, {1, 1 << 20}} {
		c := newCache(bounds.entries, bounds.bytes)
		srcs := []*quota.Source{nil, new(quota.Source), new(quota.Source), new(quota.Source)}
		for step := range 20000 {
			src := srcs[rng.IntN(len(srcs))]
			name := rng.IntN(200)
			if src == srcs[3] {
				name = 1000 + step // the flooder: every name new
			}
			key := fmt.Sprintf("%d", name)
			now = now.Add(time.Duration(rng.IntN(100)) * time.Millisecond)
			if rng.IntN(2) == 0 {
				c.get([]byte(key), now, src)
			} else {
				c.put(&entry{key: key, msg: make([]byte, 10+rng.IntN(200)), stored: now, expires: now.Add(time.Duration(1+rng.IntN(30)) * time.Second)}, src)
			}
			checkCache(t, c)
			if t.Failed() {
				t.Fatalf("bounds %+v, after step %d", bounds, step)
			}
		}
	}
}

// checkCache checks the cache's books: the bytes are its entries' and its
// owners', every owner's list holds exactly what it is charged for, the
// sources over their share are exactly those in c.over, and both bounds
// hold.
func checkCache(t *testing.T, c *cache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	bytes := int64(len(c.owners)) * ownerOverhead
	n := 0
	for e := c.head.next; e != &c.head; e = e.next {
		n++
		bytes += e.cost()
		if c.entries[e.key] != e {
			t.Errorf("entry %q in the list but not the map", e.key)
		}
		if e.owner != nil && c.owners[e.owner.src] != e.owner {
			t.Errorf("entry %q charged to %v, which has no record", e.key, e.owner.src)
		}
	}
	if n != len(c.entries) || bytes != c.bytes {
		t.Errorf("list: %d entries, %d bytes; the cache says %d, %d", n, bytes, len(c.entries), c.bytes)
	}
	if len(c.entries) > c.max || c.bytes > c.maxBytes {
		t.Errorf("%d entries, %d bytes; bounds %d, %d", len(c.entries), c.bytes, c.max, c.maxBytes)
	}
	overs := 0
	for addr, o := range c.owners {
		var ob int64
		on := 0
		var prev *entry
		for e := o.newest; e != nil; prev, e = e, e.onext {
			if e.owner != o || e.oprev != prev || c.entries[e.key] != e {
				t.Errorf("owner %v: entry %q misplaced", addr, e.key)
			}
			ob += e.cost()
			on++
		}
		if prev != o.oldest {
			t.Errorf("owner %v: oldest is not the end of its list", addr)
		}
		if ob != o.bytes || on != o.entries || on == 0 {
			t.Errorf("owner %v: list has %d entries, %d bytes; charged %d, %d", addr, on, ob, o.entries, o.bytes)
		}
		over := o.bytes > c.shareBytes || o.entries > c.shareEntries
		if over != (o.overAt >= 0) || (over && c.over[o.overAt] != o) {
			t.Errorf("owner %v: over its share = %v, at %d in the over list", addr, over, o.overAt)
		}
		if over {
			overs++
		}
	}
	if overs != len(c.over) {
		t.Errorf("%d owners over their share, %d in the over list", overs, len(c.over))
	}
}

// TestCacheSourcesConcurrently: sources asking overlapping names at once
// (hits that share entries, misses that evict) leave the books straight.
func TestCacheSourcesConcurrently(t *testing.T) {
	t.Parallel()
	up := floodUpstream(t)
	f := newForwarder(t, WithNow(newFakeClock().Now), WithCacheSize(32))
	var wg sync.WaitGroup
	for s := range 4 {
		src := new(quota.Source)
		var queries [][]byte
		for i := range 200 {
			name := fmt.Sprintf("v%d.example.", i%40) // shared with the others
			if s == 0 {
				name = fmt.Sprintf("f%d.example.", i) // a flood of its own
			}
			queries = append(queries, query(t, name, dns.TypeA))
		}
		wg.Go(func() {
			ctx := quota.WithSource(t.Context(), src)
			for _, q := range queries {
				if _, err := f.Forward(ctx, q, false, []netip.AddrPort{up.addr}); err != nil {
					t.Errorf("Forward: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	checkCache(t, f.cache)
}

// TestAppendCachedIsForwardFromsCachedReply: what AppendCached answers
// from the cache is, byte for byte, what ForwardFrom answers the same query
// from it, after the prefix it was appended to: TTLs aged, sets rotated by
// the ID, the client's ID, RD and question spelling, AD as fitted to the
// client, a negative answer too; and where the reply came from. A query the
// cache does not answer (not cached, RD=0, another opcode) gets nothing,
// asks no upstream and leaves dst as it was. Hits count as ForwardFrom's,
// misses not (ForwardFrom, asked next, counts them).
func TestAppendCachedIsForwardFromsCachedReply(t *testing.T) {
	clock := newFakeClock()
	u := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		if strings.HasPrefix(req.Question[0].Name, "nx.") {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeNameError)
			m.AuthenticatedData = true
			m.Ns = append(m.Ns, testSOA(600, 300))
			_ = w.WriteMsg(m)
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable, m.AuthenticatedData = true, true
		for _, a := range fourAddrs {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP(a)})
		}
		if o := req.IsEdns0(); o != nil {
			m.SetEdns0(1232, o.Do())
		}
		_ = w.WriteMsg(m)
	})
	f := newForwarder(t, WithNow(clock.Now))
	ups := []netip.AddrPort{u.addr}
	src := new(quota.Source)
	ctx := quota.WithSource(context.Background(), src)
	withAD := func(m *dns.Msg) { m.AuthenticatedData = true }
	cases := map[string][]func(*dns.Msg){
		"plain":    nil,
		"edns":     {withEDNS(false)},
		"do":       {withEDNS(true)},
		"cd":       {withCD},
		"ad":       {withAD},
		"edns-ad":  {withEDNS(false), withAD},
		"nxdomain": nil,
	}
	prefix := []byte("batch")
	for name, opts := range cases {
		qname := "Mixed-" + name + ".Example.com." // a key of each case's own
		if name == "nxdomain" {
			qname = "nx.Example.com."
		}
		fill := query(t, strings.ToLower(qname), dns.TypeA, opts...)
		if _, ok := f.fromCacheOnly(prefix, fill, ups, src); ok {
			t.Fatalf("%s: answered from an empty cache", name)
		}
		if _, _, err := f.ForwardFrom(ctx, fill, false, ups); err != nil {
			t.Fatal(err)
		}
		for _, advance := range []time.Duration{0, 100 * time.Second} {
			clock.Advance(advance)
			for id := range 6 {
				req := query(t, qname, dns.TypeA, append(slices.Clone(opts), withID(uint16(id)))...)
				hits := testutil.ToFloat64(cacheHits)
				got, from, ok := f.AppendCached(slices.Clone(prefix), req, ups, src)
				if !ok || !bytes.Equal(got[:len(prefix)], prefix) {
					t.Fatalf("%s, ID %d, %v later: AppendCached answered %v, %q; want a reply after %q", name, id, advance, ok, got, prefix)
				}
				if d := testutil.ToFloat64(cacheHits) - hits; d != 1 {
					t.Errorf("%s: AppendCached's hit counted %v times, want once", name, d)
				}
				want, wantFrom, err := f.ForwardFrom(ctx, req, false, ups)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got[len(prefix):], want) || from != wantFrom || !wantFrom.Cached {
					t.Errorf("%s, ID %d, %v later: AppendCached gave\n%x from %+v, ForwardFrom\n%x from %+v", name, id, advance, got[len(prefix):], from, want, wantFrom)
				}
			}
		}
	}
	if n := u.queries.Load(); n != int64(len(cases)) {
		t.Errorf("the upstream was asked %d times, want %d: once to fill each", n, len(cases))
	}

	for name, req := range map[string][]byte{
		"not cached": query(t, "other.example.com.", dns.TypeA),
		"RD=0":       query(t, "mixed.example.com.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired = false }),
		"NOTIFY":     query(t, "mixed.example.com.", dns.TypeA, withOpcode(dns.OpcodeNotify)),
	} {
		misses := testutil.ToFloat64(cacheMisses)
		if out, ok := f.fromCacheOnly(prefix, req, ups, src); ok || len(out) != len(prefix) || &out[0] != &prefix[0] {
			t.Errorf("%s: AppendCached answered %v, %q; want nothing, dst as it was", name, ok, out)
		}
		if d := testutil.ToFloat64(cacheMisses) - misses; d != 0 {
			t.Errorf("%s: AppendCached counted %v misses, want none", name, d)
		}
	}
	if n := u.queries.Load(); n != int64(len(cases)) {
		t.Errorf("the upstream was asked %d times, want %d: AppendCached asks none", n, len(cases))
	}
}

// fromCacheOnly is AppendCached without the origin.
func (f *Forwarder) fromCacheOnly(dst, req []byte, ups []netip.AddrPort, src *quota.Source) ([]byte, bool) {
	out, _, ok := f.AppendCached(dst, req, ups, src)
	return out, ok
}

// TestCacheCountsTheRotationPlan: an entry that a client's cut may keep
// only the first records of (a reply of 2,000 addresses) holds its
// rotation plan from when it is stored, and the cache's bytes count it;
// a cut hit then rotates by that plan, and makes and keeps nothing more
// (before: the first cut hit made the plan, 128 bytes the bytes bound
// never counted, up to an eighth of a cache of such entries). A reply
// no cut leaves records out of (one address) holds none and is not
// charged for one.
func TestCacheCountsTheRotationPlan(t *testing.T) {
	src := new(quota.Source)
	ctx := quota.WithSource(context.Background(), src)
	for _, tc := range []struct {
		what    string
		records int
		plan    bool
	}{{"2,000 addresses", 2000, true}, {"one address", 1, false}} {
		t.Run(tc.what, func(t *testing.T) {
			ups := []netip.AddrPort{startUpstream(t, answerMany(tc.records)).addr}
			f := newForwarder(t)
			req := query(t, "big.example.", dns.TypeA)
			if _, from, err := f.ForwardFrom(ctx, req, true, ups); err != nil || from.Failure != "" {
				t.Fatalf("filling the cache over TCP: %v, %+v", err, from)
			}
			f.cache.mu.Lock()
			e := f.cache.head.next
			f.cache.mu.Unlock()
			plan := e.rotation
			want := int64(len(e.key)+cap(e.msg)+2*cap(e.ttlOffsets)+entryOverhead) + ownerOverhead
			if tc.plan {
				want += rotationPlanCost
			}
			if _, bytes := f.CacheUsage(); bytes != want || (plan != nil) != tc.plan {
				t.Errorf("stored: the cache counts %d bytes, a plan held %v; want %d, %v", bytes, plan != nil, want, tc.plan)
			}
			if _, _, ok := f.AppendCachedFirst(nil, req, ups, src, 111, 1232-dnswire.HeaderLen); !ok {
				t.Fatal("not a hit")
			}
			if _, bytes := f.CacheUsage(); bytes != want || e.rotation != plan {
				t.Errorf("after a hit: the cache counts %d bytes, the plan changed %v; want %d, the plan it was stored with", bytes, e.rotation != plan, want)
			}
			checkCache(t, f.cache)
		})
	}
}
