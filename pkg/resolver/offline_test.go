package resolver

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// typeOpaque is a record type no reader knows (RFC 3597), of the private
// use range: its data is packed as it came, whatever its size.
const typeOpaque = 65400

// hostileAnswers is a pod's own nameserver answering with records the
// offline pass's reads must bound in octets whatever their type (the
// cache keys them by the nameserver the pod names): names under huge. get
// three addresses, a record of typeOpaque of 60,000 octets (larger than
// any client's buffer), and three more; names under opaque. asked for
// typeOpaque 100 records of 600 octets of it (the record's number, then
// filler); names under padded. an NSEC record whose type bitmap comes
// padded with 29 empty windows (dnstest.PaddedNSEC), the record of 60,000
// octets and three addresses, and under paddedns. NODATA with an SOA,
// that NSEC record and the record of 60,000 octets as authority; names
// under noexchange. an MX record with a preference and no exchange
// (malformed), then 99 MX records; names under emptyns. 101 NS records of
// no data (malformed: 12 octets each under a pointer, where a name would
// take one more); names under twoopt. one address and, for an EDNS query,
// two OPT records (RFC 6891 6.1.1: malformed); asked counts the queries
// for names under twoopt. and once. (one address).
type hostileAnswers struct{ asked map[string]*atomic.Int64 }

func newHostileAnswers() hostileAnswers {
	return hostileAnswers{asked: map[string]*atomic.Int64{"twoopt.": new(atomic.Int64), "once.": new(atomic.Int64)}}
}

func (h hostileAnswers) Reply(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	hdr := func(rrtype uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: 300}
	}
	addrs := func(first byte) []dns.RR {
		var rrs []dns.RR
		for i := range byte(3) {
			rrs = append(rrs, &dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(10, 0, 0, first+i)})
		}
		return rrs
	}
	opaque := func(i, size int) dns.RR {
		data := fmt.Sprintf("%04d", i) + strings.Repeat("z", size-4)
		return &dns.RFC3597{Hdr: hdr(typeOpaque), Rdata: hex.EncodeToString([]byte(data))}
	}
	for prefix, n := range h.asked {
		if strings.HasPrefix(name, prefix) {
			n.Add(1)
		}
	}
	switch {
	case strings.HasPrefix(name, "huge."):
		m.Answer = append(append(addrs(1), opaque(0, 60000)), addrs(4)...)
	case strings.HasPrefix(name, "padded."):
		m.Answer = append([]dns.RR{dnstest.PaddedNSEC(q.Name, 300, 29), opaque(0, 60000)}, addrs(1)...)
	case strings.HasPrefix(name, "paddedns."):
		m.Ns = []dns.RR{dnstest.SOA, dnstest.PaddedNSEC(q.Name, 300, 29), opaque(0, 60000)}
	case strings.HasPrefix(name, "noexchange."):
		m.Answer = []dns.RR{&dns.RFC3597{Hdr: hdr(dns.TypeMX), Rdata: "000a"}}
		for i := range 99 {
			m.Answer = append(m.Answer, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: 10, Mx: fmt.Sprintf("mx%02d.example.", i)})
		}
	case strings.HasPrefix(name, "emptyns."):
		for range 101 {
			m.Answer = append(m.Answer, &dns.RFC3597{Hdr: hdr(dns.TypeNS)})
		}
		m.Compress = true
	case strings.HasPrefix(name, "opaque.") && q.Qtype == typeOpaque:
		for i := range 100 {
			m.Answer = append(m.Answer, opaque(i, 600))
		}
	default:
		m.Answer = addrs(1)[:1]
	}
	if o := req.IsEdns0(); o != nil {
		m.SetEdns0(1232, o.Do())
		if strings.HasPrefix(name, "twoopt.") {
			m.SetEdns0(1232, o.Do()) // appends a second one
		}
	}
	return m
}

// TestStandInNeverReachesAClient: a record too large for a client's
// buffer, read among a reply's first records, is stood in for by a record
// of a type of its own, which every cut to the buffer drops, with TC, as
// it drops the record: the client never sees it, however the records
// before it pack. A pod's nameserver answers with an NSEC record whose
// type bitmap comes padded (1,021 octets as it came, 4 decoded and packed
// again), then a record of 60,000 octets, in the answer or authority
// section; asked with a buffer of 1,232 octets over UDP, forwarded, then
// from the cache, the name itself, an ExternalName chased to it and
// autopath finding it as a candidate: each reply has TC and no stand-in
// (before: the stand-in, sized to what the NSEC record left of the buffer
// as it came, fit once that was packed again, and reached the client as a
// record of type 65280, without TC).
func TestStandInNeverReachesAClient(t *testing.T) {
	ss := startSlowServerWith(t, Options{Autopath: true, Limits: quota.Limits{QPS: -1}}, &model.Snapshot{
		Services: []model.Service{
			{Namespace: "ns1", Name: "paddedout", ExternalName: "padded.example"},
			{Namespace: "ns1", Name: "paddednsout", ExternalName: "paddedns.example"},
		},
	}, newHostileAnswers())
	for _, name := range []string{
		"padded.example.", "paddedout.ns1.svc.cluster.local.", "padded.ns1.svc.cluster.local.",
		"paddedns.example.", "paddednsout.ns1.svc.cluster.local.", "paddedns.ns1.svc.cluster.local.",
	} {
		check := func(how string, r *dns.Msg) {
			t.Helper()
			for _, rr := range slices.Concat(r.Answer, r.Ns, r.Extra) {
				if rr.Header().Rrtype == 0xFF00 {
					t.Errorf("%s, %s: a stand-in reached the client: %v", name, how, rr)
				}
			}
			if r.Rcode != dns.RcodeSuccess || !r.Truncated {
				t.Errorf("%s, %s: %s, TC %v; want NOERROR and TC (the record of 60,000 octets left out)", name, how, dns.RcodeToString[r.Rcode], r.Truncated)
			}
		}
		r, err := ss.tryExchange(victimIP, "udp", ednsQuery(name, 1232))
		if err != nil {
			t.Fatal(err)
		}
		check("forwarded over UDP", r)
		r, _ = ss.cachedUDPAnswer(t, name, name, dns.TypeA, 0)
		check("from the cache", r)
	}
}

// TestOfflineReadsOfHostileRecordsCostWhatTheReplyHolds: a pod's
// nameserver answers with a record of 60,000 octets among six addresses,
// or 100 records of 600 octets of a type no reader knows, cached by a
// query over TCP; a UDP query answered from it on the socket's goroutine
// (the offline pass), the name itself, an ExternalName chased to it or
// autopath finding it as a candidate, asked with a buffer of 1,232
// octets, allocates under 16 KiB, and is answered as a cut of the whole
// answer is: TC, the CNAME, and the records that fit (before: the 60,000
// octets read, and decoded, for each query: 380 KB allocated; and the
// records of the unknown type read as records of no data, 111 of them,
// all 100: 570–630 KB).
func TestOfflineReadsOfHostileRecordsCostWhatTheReplyHolds(t *testing.T) {
	up := newHostileAnswers()
	ss := startSlowServerWith(t, Options{Autopath: true, Limits: quota.Limits{QPS: -1}}, &model.Snapshot{
		Services: []model.Service{
			{Namespace: "ns1", Name: "hugeout", ExternalName: "huge.example"},
			{Namespace: "ns1", Name: "opaqueout", ExternalName: "opaque.example"},
		},
	}, up)
	for _, tc := range []struct {
		what, name, target string
		qtype              uint16
	}{
		{"a huge record, the name itself", "huge.example.", "", dns.TypeA},
		{"a huge record, an ExternalName to it", "hugeout.ns1.svc.cluster.local.", "huge.example.", dns.TypeA},
		{"a huge record, autopath's candidate", "huge.ns1.svc.cluster.local.", "huge.corp.internal.", dns.TypeA},
		{"an unknown type, the name itself", "opaque.example.", "", typeOpaque},
		{"an unknown type, an ExternalName to it", "opaqueout.ns1.svc.cluster.local.", "opaque.example.", typeOpaque},
		{"an unknown type, autopath's candidate", "opaque.ns1.svc.cluster.local.", "opaque.corp.internal.", typeOpaque},
	} {
		r, per := ss.cachedUDPAnswer(t, tc.what, tc.name, tc.qtype, 7)
		if per > 16<<10 {
			t.Errorf("%s over UDP, answered from the cache: %d bytes allocated a query, want under 16 KiB", tc.what, per)
		}
		owner := tc.target
		if owner == "" {
			owner = tc.name
		}
		// As many as a cut of the whole answer keeps (miekg's Truncate, as
		// CoreDNS's and the slow path's reply is cut).
		whole := new(dns.Msg)
		whole.SetReply(ednsQueryOf(tc.name, tc.qtype, 1232))
		if tc.target != "" {
			if len(r.Answer) == 0 || r.Answer[0].Header().Rrtype != dns.TypeCNAME || r.Answer[0].(*dns.CNAME).Target != tc.target {
				t.Fatalf("%s: %v, want a CNAME to %s first", tc.what, r.Answer, tc.target)
			}
			whole.Answer = r.Answer[:1]
		}
		whole.Answer = append(whole.Answer, up.Reply(ednsQueryOf(owner, tc.qtype, 1232), netip.AddrPort{}).Answer...)
		whole.SetEdns0(dnswire.EDNSUDPSize, false)
		whole.Truncate(1232)
		if r.Rcode != dns.RcodeSuccess || !r.Truncated || len(r.Answer) != len(whole.Answer) {
			t.Errorf("%s: %s, TC %v, %d answers; want NOERROR, TC and %d, as a cut of the whole", tc.what, dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer), len(whole.Answer))
		}
		for i, rr := range r.Answer {
			if h := rr.Header(); h.Rrtype != dns.TypeCNAME && h.Rrtype != tc.qtype {
				t.Errorf("%s: answer %d is %v, want one of the name's", tc.what, i, rr)
			}
		}
	}
}

// TestMalformedRecordsAreCut: replies larger than the client's UDP buffer
// (1,232 octets) with malformed records that miekg/dns, and so CoreDNS,
// reads (a record's data may end at any field) are cut to the records
// that fit, with TC, forwarded and from the cache, and given whole over
// TCP: an MX record of a preference alone, then 99 MX records (before:
// the cut refused the reply, as if a compression pointer in it led
// nowhere, and the client got an empty reply with TC), and 101 NS
// records of no data under compressed owners, 12 octets each (before:
// from the cache, the read of its first records counted each at least
// one octet of data, as a name takes, and stopped at 94, which fit: the
// client got 94 and no TC, a part of the answer taken for the whole).
func TestMalformedRecordsAreCut(t *testing.T) {
	ss := startSlowServerWith(t, Options{Limits: quota.Limits{QPS: -1}}, &model.Snapshot{}, newHostileAnswers())
	for _, tc := range []struct {
		name       string
		qtype      uint16
		whole, fit int // the answers, and those that fit
	}{
		{"noexchange.example.", dns.TypeMX, 100, 56}, // 21 octets each, cut compressed
		{"emptyns.example.", dns.TypeNS, 101, 99},
	} {
		for _, proto := range []string{"udp", "tcp", "udp"} {
			r, err := ss.tryExchange(victimIP, proto, ednsQueryOf(tc.name, tc.qtype, 1232))
			if err != nil {
				t.Fatal(err)
			}
			want, truncated := tc.fit, true
			if proto == "tcp" {
				want, truncated = tc.whole, false
			}
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != want || r.Truncated != truncated {
				t.Errorf("%s over %s: %s, %d answers, TC %v; want %d, TC %v", tc.name, proto, dns.RcodeToString[r.Rcode], len(r.Answer), r.Truncated, want, truncated)
			}
		}
	}
}

// TestReplyWithTwoOPTRecordsRelayedNotCached: a reply with two OPT records
// (malformed, RFC 6891 6.1.1) is relayed as it came, both OPT records
// and all, as CoreDNS's forward plugin relays it (miekg/dns reads more
// than one without complaint), but not cached: asked again, over UDP or
// TCP, it is asked upstream again, where another name's reply is answered
// from the cache (before: cached, and served again for its TTL).
func TestReplyWithTwoOPTRecordsRelayedNotCached(t *testing.T) {
	up := newHostileAnswers()
	ss := startSlowServerWith(t, Options{Limits: quota.Limits{QPS: -1}}, &model.Snapshot{}, up)
	for _, proto := range []string{"udp", "tcp", "udp"} {
		for _, name := range []string{"twoopt.example.", "once.example."} {
			r, err := ss.tryExchange(victimIP, proto, ednsQueryOf(name, dns.TypeA, 1232))
			if err != nil {
				t.Fatal(err)
			}
			opts := 0
			for _, rr := range r.Extra {
				if rr.Header().Rrtype == dns.TypeOPT {
					opts++
				}
			}
			wantOPTs := 1
			if name == "twoopt.example." {
				wantOPTs = 2
			}
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || opts != wantOPTs {
				t.Errorf("%s over %s: %s, %v, %d OPT records; want the address and %d", name, proto, dns.RcodeToString[r.Rcode], r.Answer, opts, wantOPTs)
			}
		}
	}
	if twoOPT, once := up.asked["twoopt."].Load(), up.asked["once."].Load(); twoOPT != 3 || once != 1 {
		t.Errorf("asked upstream %d times for the reply with two OPT records, %d for the other; want 3 (never cached) and 1", twoOPT, once)
	}
}
