package forward

import (
	"bytes"
	"encoding/binary"
	"net"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// sampleReplies are upstream replies of every shape the cache meets, packed
// by miekg/dns compressed and not.
func sampleReplies(tb testing.TB) map[string][]byte {
	tb.Helper()
	base := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("www.example.com.", dns.TypeA)
		m.Response = true
		return m
	}
	a := func(name string, ttl uint32) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP("198.51.100.1")}
	}
	msgs := map[string]*dns.Msg{}
	m := base()
	m.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 100}, Target: "cdn.example.com."},
		a("cdn.example.com.", 200), a("cdn.example.com.", 300),
	}
	m.Ns = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 400}, Ns: "ns1.example.com."}}
	m.Extra = []dns.RR{a("ns1.example.com.", 500)}
	m.SetEdns0(4096, true)
	msgs["answers, authority, glue, OPT"] = m

	m = base()
	m.Rcode = dns.RcodeNameError
	m.Ns = []dns.RR{testSOA(3600, 60)}
	m.SetEdns0(1232, false)
	msgs["NXDOMAIN with SOA"] = m

	m = base()
	m.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 42}, Txt: []string{"x", "www.example.com"}}}
	msgs["TXT"] = m

	out := map[string][]byte{}
	for name, m := range msgs {
		for _, compress := range []bool{false, true} {
			m.Compress = compress
			b, err := m.Pack()
			if err != nil {
				tb.Fatalf("pack %s: %v", name, err)
			}
			if compress {
				name += ", compressed"
			}
			out[name] = b
		}
	}
	return out
}

func TestScanReplyFindsEveryTTL(t *testing.T) {
	t.Parallel()
	for name, msg := range sampleReplies(t) {
		t.Run(name, func(t *testing.T) {
			s, err := scanReply(msg)
			if err != nil {
				t.Fatalf("scanReply: %v", err)
			}
			orig := unpack(t, msg)
			// Age by one second and check, with miekg/dns, that exactly the
			// TTLs moved: every record's but OPT's, whose TTL field holds flags.
			aged := slices.Clone(msg)
			ageTTLs(aged, s.ttlOffsets, 1)
			got := unpack(t, aged)
			origRRs := append(append(orig.Answer, orig.Ns...), orig.Extra...)
			gotRRs := append(append(got.Answer, got.Ns...), got.Extra...)
			if len(gotRRs) != len(origRRs) {
				t.Fatalf("%d records after ageing, want %d", len(gotRRs), len(origRRs))
			}
			for i, rr := range gotRRs {
				want := origRRs[i].Header().Ttl - 1
				if rr.Header().Rrtype == dns.TypeOPT {
					want = origRRs[i].Header().Ttl
				}
				if rr.Header().Ttl != want {
					t.Errorf("%s: TTL %d, want %d", rr.Header().Name, rr.Header().Ttl, want)
				}
			}
			for _, o := range s.ttlOffsets {
				aged[o], aged[o+1], aged[o+2], aged[o+3] = msg[o], msg[o+1], msg[o+2], msg[o+3]
			}
			if !bytes.Equal(aged, msg) {
				t.Error("ageing changed bytes outside the TTL fields")
			}
		})
	}
}

func TestAgeTTLsStopsAtZero(t *testing.T) {
	t.Parallel()
	msg := sampleReplies(t)["TXT"]
	s, err := scanReply(msg)
	if err != nil {
		t.Fatal(err)
	}
	ageTTLs(msg, s.ttlOffsets, 1000)
	if ttl := binary.BigEndian.Uint32(msg[s.ttlOffsets[0]:]); ttl != 0 {
		t.Errorf("TTL 42 aged by 1000s = %d, want 0", ttl)
	}
}

func TestScanReplyRejectsMalformed(t *testing.T) {
	t.Parallel()
	good := sampleReplies(t)["NXDOMAIN with SOA"]
	withRdlen := func(rdlen uint16) []byte {
		b := slices.Clone(good)
		// The SOA is the first record after the question; its rdlength
		// sits 8 bytes after its owner name, which is uncompressed here.
		off, _ := readQuestion(b)
		nameEnd, _ := skipName(b, off.end)
		binary.BigEndian.PutUint16(b[nameEnd+8:], rdlen)
		return b
	}
	cases := []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"header only with a record count", good[:headerLen]},
		{"cut in the question", good[:headerLen+3]},
		{"cut in a record", good[:len(good)-5]},
		{"rdlength past the end", withRdlen(0xFFFF)},
		{"SOA rdata too short", withRdlen(10)},
		{"bad label type", append(slices.Clone(good[:headerLen]), 0x40, 0)},
		{"too long", make([]byte, 0x10000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := scanReply(tc.msg); err == nil {
				t.Error("scanReply accepted a malformed message")
			}
		})
	}
}

func TestParseRequest(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name           string
		req            []byte
		edns, do       bool
		qtype          uint16
		opcode         int
		wantQuestionTo int
	}{
		{"plain", query(t, "a.example.", dns.TypeA), false, false, dns.TypeA, dns.OpcodeQuery, headerLen + 11 + 4},
		{"EDNS", query(t, "a.example.", dns.TypeAAAA, withEDNS(false)), true, false, dns.TypeAAAA, dns.OpcodeQuery, headerLen + 11 + 4},
		{"EDNS with DO", query(t, "a.example.", dns.TypeMX, withEDNS(true)), true, true, dns.TypeMX, dns.OpcodeQuery, headerLen + 11 + 4},
		{"NOTIFY with SOA in answer", query(t, "example.", dns.TypeSOA, withOpcode(dns.OpcodeNotify), func(m *dns.Msg) {
			m.Answer = []dns.RR{testSOA(60, 60)}
		}), false, false, dns.TypeSOA, dns.OpcodeNotify, headerLen + 9 + 4},
		{"root", query(t, ".", dns.TypeNS), false, false, dns.TypeNS, dns.OpcodeQuery, headerLen + 1 + 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseRequest(tc.req)
			if err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			if r.edns != tc.edns || r.do != tc.do || r.q.qtype != tc.qtype || r.hdr.opcode() != tc.opcode || r.q.end != tc.wantQuestionTo || r.q.qclass != dns.ClassINET {
				t.Errorf("got edns=%v do=%v qtype=%d opcode=%d question end=%d class=%d, want %v %v %d %d %d 1",
					r.edns, r.do, r.q.qtype, r.hdr.opcode(), r.q.end, r.q.qclass, tc.edns, tc.do, tc.qtype, tc.opcode, tc.wantQuestionTo)
			}
		})
	}
}

func TestParseRequestRejectsLongName(t *testing.T) {
	t.Parallel()
	msg := make([]byte, headerLen)
	msg[5] = 1 // one question
	for range 5 {
		msg = append(msg, 63)
		msg = append(msg, bytes.Repeat([]byte{'a'}, 63)...)
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	if _, err := parseRequest(msg); err == nil {
		t.Error("parseRequest accepted a 321-octet name")
	}
}
