package dnswire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// sampleReplies are upstream replies of every shape the cache meets, packed
// by miekg/dns compressed and not.
func sampleReplies(tb testing.TB) map[string][]byte {
	tb.Helper()
	response := func(m *dns.Msg) { m.Response = true }
	msgs := map[string]*dns.Msg{
		"answers, authority, glue, OPT": newMsg("www.example.com.", dns.TypeA, response,
			records(tb, answer, "www.example.com. 100 IN CNAME cdn.example.com.", "cdn.example.com. 200 IN A 198.51.100.1", "cdn.example.com. 300 IN A 198.51.100.2"),
			records(tb, authority, "example.com. 400 IN NS ns1.example.com."),
			records(tb, additional, "ns1.example.com. 500 IN A 198.51.100.3"),
			func(m *dns.Msg) { m.SetEdns0(4096, true) }),
		"NXDOMAIN with SOA": newMsg("www.example.com.", dns.TypeA, response, withEDNS(false),
			func(m *dns.Msg) { m.Rcode = dns.RcodeNameError }, records(tb, authority, testSOA)),
		"TXT": newMsg("www.example.com.", dns.TypeA, response,
			records(tb, answer, `www.example.com. 42 IN TXT "x" "www.example.com"`)),
		"CNAME, no data, SOA": newMsg("app.example.com.", dns.TypeAAAA, response, withEDNS(false),
			records(tb, answer, "app.example.com. 3600 IN CNAME edge.cdn.test."),
			records(tb, authority, "cdn.test. 10 IN SOA ns.cdn.test. hostmaster.cdn.test. 1 7200 3600 1209600 5")),
	}
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
			s, err := ScanReply(msg)
			if err != nil {
				t.Fatalf("ScanReply: %v", err)
			}
			orig := dnstest.Unpack(t, msg)
			// Age by one second and check, with miekg/dns, that exactly the
			// TTLs moved: every record's but OPT's, whose TTL field holds flags.
			aged := slices.Clone(msg)
			AgeTTLs(aged, s.TTLOffsets, 1)
			got := dnstest.Unpack(t, aged)
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
			for _, o := range s.TTLOffsets {
				aged[o], aged[o+1], aged[o+2], aged[o+3] = msg[o], msg[o+1], msg[o+2], msg[o+3]
			}
			if !bytes.Equal(aged, msg) {
				t.Error("ageing changed bytes outside the TTL fields")
			}
		})
	}
}

func TestScanReplyFields(t *testing.T) {
	t.Parallel()
	samples := sampleReplies(t)
	cases := []struct {
		name         string
		records      int // TTLs to age: all but OPT
		minAnswerTTL uint32
		soa          bool
		negTTL       uint32
		answered     bool
	}{
		{"answers, authority, glue, OPT", 5, 100, false, 0, true},
		{"NXDOMAIN with SOA", 1, 0, true, 60, false}, // min(TTL 3600, MINIMUM 60)
		{"TXT", 1, 42, false, 0, false},              // an A question
		{"CNAME, no data, SOA", 2, 3600, true, 5, false},
	}
	for _, tc := range cases {
		for _, suffix := range []string{"", ", compressed"} {
			s, err := ScanReply(samples[tc.name+suffix])
			if err != nil {
				t.Fatalf("%s%s: %v", tc.name, suffix, err)
			}
			if len(s.TTLOffsets) != tc.records || s.MinAnswerTTL != tc.minAnswerTTL || s.SOA != tc.soa || s.NegTTL != tc.negTTL || s.Answered != tc.answered || s.ID != 0xBEEF || s.Flags&FlagQR == 0 {
				t.Errorf("%s%s: %d TTLs, min answer TTL %d, SOA %v, negative TTL %d, answered %v, header %+v; want %d, %d, %v, %d, %v, ID 0xbeef with QR",
					tc.name, suffix, len(s.TTLOffsets), s.MinAnswerTTL, s.SOA, s.NegTTL, s.Answered, s.Header, tc.records, tc.minAnswerTTL, tc.soa, tc.negTTL, tc.answered)
			}
		}
	}
}

// TestScanReplyAnswered: Answered says whether the answer holds a record
// of the asked type at the end of the CNAME chain from the question's name,
// as a client following the chain would find it: names compared without
// regard to case and compression, the chain in any order. ANY and CNAME
// questions are answered by any record. answeredMiekg, the fuzz target's
// reference, agrees on every case.
func TestScanReplyAnswered(t *testing.T) {
	t.Parallel()
	const soa = "example.com. 10 IN SOA ns.example.com. hostmaster.example.com. 1 7200 3600 1209600 5"
	chain := func(n int, last string) []string {
		var rrs []string
		for i := range n {
			owner := "app.example.com."
			if i > 0 {
				owner = fmt.Sprintf("c%d.example.com.", i)
			}
			rrs = append(rrs, fmt.Sprintf("%s 300 IN CNAME c%d.example.com.", owner, i+1))
		}
		return append(rrs, fmt.Sprintf("c%d.example.com. 300 IN %s", n, last))
	}
	cases := []struct {
		name     string
		qtype    uint16
		answer   []string
		answered bool
	}{
		{"the asked type at the name", dns.TypeA, []string{"app.example.com. 60 IN A 198.51.100.1"}, true},
		{"CNAME then the asked type", dns.TypeAAAA, []string{"app.example.com. 3600 IN CNAME edge.cdn.test.", "edge.cdn.test. 60 IN AAAA 2001:db8::1"}, true},
		{"CNAME, no data", dns.TypeAAAA, []string{"app.example.com. 3600 IN CNAME edge.cdn.test."}, false},
		{"CNAME, another type at its end", dns.TypeAAAA, []string{"app.example.com. 3600 IN CNAME edge.cdn.test.", "edge.cdn.test. 60 IN A 198.51.100.1"}, false},
		{"CNAME and its signature, no data", dns.TypeAAAA, []string{"app.example.com. 3600 IN CNAME edge.cdn.test.", "app.example.com. 3600 IN RRSIG CNAME 13 3 3600 20260101000000 20250101000000 12345 example.com. AAAA"}, false},
		{"the asked type at another name", dns.TypeA, []string{"other.example.com. 60 IN A 198.51.100.1"}, false},
		{"the asked type at the name before its CNAME", dns.TypeA, []string{"edge.cdn.test. 60 IN A 198.51.100.1", "app.example.com. 3600 IN CNAME edge.cdn.test."}, true},
		{"chain out of order", dns.TypeA, []string{"c2.example.com. 60 IN A 198.51.100.1", "c1.example.com. 300 IN CNAME c2.example.com.", "app.example.com. 300 IN CNAME c1.example.com."}, true},
		{"names in other cases", dns.TypeA, []string{"APP.Example.COM. 300 IN CNAME Edge.CDN.test.", "eDGE.cdn.TEST. 60 IN A 198.51.100.1"}, true},
		{"CNAME loop", dns.TypeA, []string{"app.example.com. 300 IN CNAME b.example.com.", "b.example.com. 300 IN CNAME app.example.com."}, false},
		{"DNAME with its synthesised CNAME", dns.TypeA, []string{"example.com. 300 IN DNAME example.net.", "app.example.com. 300 IN CNAME app.example.net.", "app.example.net. 60 IN A 198.51.100.1"}, true},
		{"DNAME alone", dns.TypeA, []string{"example.com. 300 IN DNAME example.net.", "app.example.net. 60 IN A 198.51.100.1"}, false},
		{"ANY", dns.TypeANY, []string{"app.example.com. 60 IN HINFO \"RFC8482\" \"\""}, true},
		{"CNAME question", dns.TypeCNAME, []string{"app.example.com. 3600 IN CNAME edge.cdn.test."}, true},
		{"no answer", dns.TypeA, nil, false},
		{"chain of 16", dns.TypeA, chain(16, "A 198.51.100.1"), true},
		{"chain of 17", dns.TypeA, chain(17, "A 198.51.100.1"), false},
	}
	for _, tc := range cases {
		for _, compress := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, compressed %v", tc.name, compress), func(t *testing.T) {
				m := newMsg("app.example.com.", tc.qtype, func(m *dns.Msg) { m.Response = true },
					records(t, answer, tc.answer...), records(t, authority, soa))
				m.Compress = compress
				msg := pack(t, m)
				s, err := ScanReply(msg)
				if err != nil {
					t.Fatalf("ScanReply: %v", err)
				}
				if s.Answered != tc.answered {
					t.Errorf("Answered = %v, want %v", s.Answered, tc.answered)
				}
				if ref := answeredMiekg(dnstest.Unpack(t, msg)); ref != tc.answered {
					t.Errorf("the reference says %v, want %v", ref, tc.answered)
				}
			})
		}
	}
}

// answeredMiekg is what ScanReply's Answered says, found in a message
// miekg/dns unpacked: it follows the chain the same way (maxCNAMEChain
// links at most, in passes over the answer), on the names as miekg/dns
// spells them.
func answeredMiekg(m *dns.Msg) bool {
	if len(m.Question) != 1 || len(m.Answer) == 0 {
		return false
	}
	q := m.Question[0]
	if q.Qtype == dns.TypeANY || q.Qtype == dns.TypeCNAME {
		return true
	}
	name, links := strings.ToLower(q.Name), 0
	for moved := true; moved; {
		moved = false
		for _, rr := range m.Answer {
			h := rr.Header()
			switch {
			case strings.ToLower(h.Name) != name:
			case h.Rrtype == q.Qtype:
				return true
			case h.Rrtype == dns.TypeCNAME:
				if links++; links > maxCNAMEChain {
					return false
				}
				name, moved = strings.ToLower(rr.(*dns.CNAME).Target), true
			}
		}
	}
	return false
}

// ScanReply reads the names of a CNAME chain however they are compressed,
// and rejects a CNAME whose target it cannot read.
func TestScanReplyAnsweredReadsCompressedNames(t *testing.T) {
	t.Parallel()
	// App.Example.COM. AAAA? answered by a CNAME owned by a pointer to the
	// question, its target "edge" and a pointer to the question's
	// Example.COM., and an AAAA owned by a pointer to the target.
	question := pack(t, newMsg("App.Example.COM.", dns.TypeAAAA, func(m *dns.Msg) { m.Response = true }))
	binary.BigEndian.PutUint16(question[6:], 2)
	target := len(question) + 2 + rrFixedLen
	build := func(rdata ...byte) []byte {
		msg := appendRR(slices.Clone(question), Pointer(HeaderLen), dns.TypeCNAME, dns.ClassINET, 300, rdata)
		return appendRR(msg, Pointer(target), dns.TypeAAAA, dns.ClassINET, 60, make([]byte, 16))
	}
	pointer := func(off int) []byte { return binary.BigEndian.AppendUint16(nil, Pointer(off)) }
	edge := append([]byte("\x04edge"), pointer(HeaderLen+4)...)
	msg := build(edge...)
	if got := dnstest.Unpack(t, msg).Answer; len(got) != 2 || got[1].Header().Name != "edge.Example.COM." {
		t.Fatalf("test message reads %v", got)
	}
	if s, err := ScanReply(msg); err != nil || !s.Answered {
		t.Fatalf("ScanReply = %v, %v; want answered", s.Answered, err)
	}
	for name, rdata := range map[string][]byte{
		"pointer loop":                    append([]byte("\x04edge"), pointer(target+5)...),
		"pointer past the CNAME's data":   append([]byte("\x04edge"), pointer(target+7)...),
		"CNAME data longer than its name": append(slices.Clone(edge), 0),
		"CNAME data empty":                nil,
	} {
		if _, err := ScanReply(build(rdata...)); err == nil {
			t.Errorf("%s: ScanReply accepted it", name)
		}
	}
}

// A sender's record counts do not size what ScanReply allocates: the
// message's length does.
func TestScanReplyBoundsCountsByLength(t *testing.T) {
	t.Parallel()
	msg := slices.Clone(sampleReplies(t)["TXT"])
	binary.BigEndian.PutUint16(msg[6:], 0xFFFF)
	binary.BigEndian.PutUint16(msg[8:], 0xFFFF)
	binary.BigEndian.PutUint16(msg[10:], 0xFFFF)
	s, err := ScanReply(msg)
	if err == nil {
		t.Fatal("ScanReply accepted 196,605 records in a short message")
	}
	if c := cap(s.TTLOffsets); c > len(msg)/minRRLen {
		t.Errorf("room for %d TTLs made for a %d-octet message", c, len(msg))
	}
}

func TestAgeTTLsStopsAtZero(t *testing.T) {
	t.Parallel()
	msg := sampleReplies(t)["TXT"]
	s, err := ScanReply(msg)
	if err != nil {
		t.Fatal(err)
	}
	AgeTTLs(msg, s.TTLOffsets, 1000)
	if ttl := binary.BigEndian.Uint32(msg[s.TTLOffsets[0]:]); ttl != 0 {
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
		var q Question
		_ = readQuestion(b, &q, nil)
		nameEnd, _ := skipName(b, q.End)
		binary.BigEndian.PutUint16(b[nameEnd+8:], rdlen)
		return b
	}
	cases := []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"header only with a record count", good[:HeaderLen]},
		{"cut in the question", good[:HeaderLen+3]},
		{"cut in a record", good[:len(good)-5]},
		{"rdlength past the end", withRdlen(0xFFFF)},
		{"SOA rdata too short", withRdlen(10)},
		{"bad label type", append(slices.Clone(good[:HeaderLen]), 0x40, 0)},
		{"too long", make([]byte, 0x10000)},
		// RFC 6891 6.1.1: malformed, so not cached (before: cached, and
		// served again with both).
		{"two OPT records", twoOPTReply(t)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ScanReply(tc.msg); err == nil {
				t.Error("ScanReply accepted a malformed message")
			}
		})
	}
}

// twoOPTReply is an answer with two OPT records in its additional section.
func twoOPTReply(tb testing.TB) []byte {
	return pack(tb, newMsg("www.example.com.", dns.TypeA, func(m *dns.Msg) { m.Response = true },
		records(tb, answer, "www.example.com. 60 IN A 198.51.100.1"), withEDNS(false), withEDNS(true)))
}
