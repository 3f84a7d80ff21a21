package dnswire

import (
	"bytes"
	"encoding/binary"
	"slices"
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
	}{
		{"answers, authority, glue, OPT", 5, 100, false, 0},
		{"NXDOMAIN with SOA", 1, 0, true, 60}, // min(TTL 3600, MINIMUM 60)
		{"TXT", 1, 42, false, 0},
	}
	for _, tc := range cases {
		for _, suffix := range []string{"", ", compressed"} {
			s, err := ScanReply(samples[tc.name+suffix])
			if err != nil {
				t.Fatalf("%s%s: %v", tc.name, suffix, err)
			}
			if len(s.TTLOffsets) != tc.records || s.MinAnswerTTL != tc.minAnswerTTL || s.SOA != tc.soa || s.NegTTL != tc.negTTL || s.ID != 0xBEEF || s.Flags&FlagQR == 0 {
				t.Errorf("%s%s: %d TTLs, min answer TTL %d, SOA %v, negative TTL %d, header %+v; want %d, %d, %v, %d, ID 0xbeef with QR",
					tc.name, suffix, len(s.TTLOffsets), s.MinAnswerTTL, s.SOA, s.NegTTL, s.Header, tc.records, tc.minAnswerTTL, tc.soa, tc.negTTL)
			}
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
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ScanReply(tc.msg); err == nil {
				t.Error("ScanReply accepted a malformed message")
			}
		})
	}
}
