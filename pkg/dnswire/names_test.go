package dnswire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// hostileReply is a.example.'s question and the records of rrs, built on
// the wire: rrs returns the records, given where they start.
func hostileReply(tb testing.TB, ancount uint16, rrs func(start int) []byte) []byte {
	tb.Helper()
	msg := pack(tb, newMsg("a.example.", dns.TypeA))
	SetANCount(msg, ancount)
	return append(msg, rrs(len(msg))...)
}

// pointer is a compression pointer to to.
func pointer(to int) uint16 { return 0xC000 | uint16(to) }

// The question's name, a.example., starts at HeaderLen; the first record
// at 27.
const firstRecord = HeaderLen + 11 + 4

// TestNamesLeadBackOnly: replies whose names a compression pointer leads
// forward, past what a cut may keep, or into octets a cut or ageing
// changes, which miekg/dns reads whole, are not scanned (not cached), nor
// cut: a cut of them could leave a name that no longer reads, or reads
// as another. (Before, each was scanned and cut; a cut that keeps the
// first record of the first, the fuzzer's find, leaves its owner
// pointing past the message.)
func TestNamesLeadBackOnly(t *testing.T) {
	a := func(addr ...byte) []byte { return addr }
	inPlace := func(labels string) []byte { // a name, then a pointer to the question's
		return append(append([]byte{byte(len(labels))}, labels...), byte(pointer(HeaderLen)>>8), byte(pointer(HeaderLen)))
	}
	rr := func(owner []byte, rrtype uint16, ttl uint32, rdata []byte) []byte {
		out := append([]byte(nil), owner...)
		out = binary.BigEndian.AppendUint16(out, rrtype)
		out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
		out = binary.BigEndian.AppendUint32(out, ttl)
		out = binary.BigEndian.AppendUint16(out, uint16(len(rdata)))
		return append(out, rdata...)
	}
	ptr := func(to int) []byte { return binary.BigEndian.AppendUint16(nil, pointer(to)) }
	const rrLen = 2 + rrFixedLen + 4 // an address under a pointer
	for _, tc := range []struct {
		name string
		msg  []byte
		// cutsToo: a cut changes the name (PlanFit and FirstRecordsIn
		// reject the reply too); else only ageing does.
		cutsToo bool
	}{
		{"an owner pointing to the next record's", hostileReply(t, 2, func(start int) []byte {
			return append(rr(ptr(start+rrLen), dns.TypeA, 60, a(10, 0, 0, 1)), rr(inPlace("www"), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}), true},
		{"an owner pointing back to a label that runs past it", hostileReply(t, 2, func(start int) []byte {
			// A record of an unknown type whose one octet of data is
			// a label of 14, which runs over the next record's owner,
			// fixed part and first two octets of its address.
			first := rr(inPlace("u"), 0xFF01, 60, []byte{14})
			label := start + len(first) - 1
			return append(first, rr(ptr(label), dns.TypeA, 60, a(10, 1, 0, 5))...)
		}), true},
		{"an owner pointing into the header", hostileReply(t, 2, func(start int) []byte {
			// At 7 the answer count's low octet, 2: a label of the
			// authority count's octets, then the root. A cut to one
			// answer reads a label of one.
			return append(rr(ptr(7), dns.TypeA, 60, a(10, 0, 0, 1)), rr(ptr(HeaderLen), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}), true},
		{"an owner pointing through a TTL", hostileReply(t, 2, func(start int) []byte {
			// The first TTL's second octet, 0: the root. Aged by a
			// second, 0xFF: a pointer past the message.
			ttl := start + 2 + 4
			return append(rr(ptr(HeaderLen), dns.TypeA, 0x01000000, a(10, 0, 0, 1)), rr(ptr(ttl+1), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}), false},
		// miekg/dns reads the data of a record from its octets and
		// those before it only: a name there cannot lead past what a cut
		// keeps, but into the header, which a cut rewrites.
		{"a CNAME pointing into the header", hostileReply(t, 2, func(start int) []byte {
			cname := rr(ptr(HeaderLen), dns.TypeCNAME, 60, ptr(7))
			return append(cname, rr(inPlace("www"), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}), true},
		{"an SRV target pointing into the header", hostileReply(t, 2, func(start int) []byte {
			srv := rr(ptr(HeaderLen), dns.TypeSRV, 60, append([]byte{0, 1, 0, 1, 0, 53}, ptr(7)...))
			return append(srv, rr(inPlace("www"), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}), true},
		{"a question pointing to the answer's owner", func() []byte {
			msg := pack(t, newMsg(".", dns.TypeA))
			msg = append(msg[:HeaderLen], ptr(HeaderLen+2+4)...) // past itself and its type and class
			msg = binary.BigEndian.AppendUint16(msg, dns.TypeA)
			msg = binary.BigEndian.AppendUint16(msg, dns.ClassINET)
			SetANCount(msg, 1)
			return append(msg, rr([]byte("\x03www\x00"), dns.TypeA, 60, a(10, 0, 0, 2))...)
		}(), true},
	} {
		if m := new(dns.Msg); m.Unpack(tc.msg) != nil {
			t.Errorf("%s: miekg/dns does not read %x: %v", tc.name, tc.msg, m.Unpack(tc.msg))
			continue
		}
		if _, err := ScanReply(tc.msg); !errors.Is(err, errForward) {
			t.Errorf("%s: ScanReply(%x): %v, want %v", tc.name, tc.msg, err, errForward)
		}
		if !tc.cutsToo {
			continue
		}
		if _, err := PlanFit(tc.msg, len(tc.msg)-1); !errors.Is(err, errForward) {
			t.Errorf("%s: PlanFit(%x): %v, want %v", tc.name, tc.msg, err, errForward)
		}
		if _, _, err := FirstRecords(tc.msg, 1); !errors.Is(err, errForward) {
			t.Errorf("%s: FirstRecords(%x, 1): %v, want %v", tc.name, tc.msg, err, errForward)
		}
	}
	// Compressed as servers compress, pointers to prior names only, a
	// reply scans and cuts.
	for name, msg := range sampleReplies(t) {
		if _, err := ScanReply(msg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := PlanFit(msg, len(msg)); err != nil {
			t.Errorf("%s: PlanFit: %v", name, err)
		}
	}
}

// TestDataNamesAreWhereMiekgReadsThem: for each type whose data holds
// names, each name is checked where miekg/dns decodes one: the name
// replaced by a pointer back to the question's reads as that and scans;
// by a pointer into the header (the answer count's low octet, 1: a label
// of one zero octet), it reads as that in miekg/dns, and does not scan.
func TestDataNamesAreWhereMiekgReadsThem(t *testing.T) {
	hdr := func(rrtype uint16) dns.RR_Header {
		return dns.RR_Header{Name: "x.", Rrtype: rrtype, Class: dns.ClassINET, Ttl: 60}
	}
	key := "AwEAAbdxyhNuSutc5EMzxTs9LBPCIkOFH8cIvM4p9+LrV4e19WzK00+CI6zBCQTdtWsuxKbWIy87UOoJTwkUs7lBu+Upr1gsNrut79ryra+bSRGQb1slImA8YVJyuIDsj7kwzG7jnERNqnWxZ48AWkskmdHaVDP4BcelrTI3rMXdXF5D"
	rrs := dnstest.RRs(t,
		"x. 60 IN NS ab.",
		"x. 60 IN MD ab.",
		"x. 60 IN MF ab.",
		"x. 60 IN CNAME ab.",
		"x. 60 IN SOA ab. ab. 1 2 3 4 5",
		"x. 60 IN MB ab.",
		"x. 60 IN MG ab.",
		"x. 60 IN MR ab.",
		"x. 60 IN PTR ab.",
		"x. 60 IN MINFO ab. ab.",
		"x. 60 IN MX 10 ab.",
		"x. 60 IN RP ab. ab.",
		"x. 60 IN AFSDB 1 ab.",
		"x. 60 IN RT 10 ab.",
		"x. 60 IN NSAP-PTR ab.",
		"x. 60 IN SIG A 8 2 60 20300101000000 20200101000000 12345 ab. AAAA",
		"x. 60 IN PX 10 ab. ab.",
		"x. 60 IN SRV 0 0 53 ab.",
		`x. 60 IN NAPTR 100 10 "u" "E2U+sip" "!^.*$!sip:i@x!" ab.`,
		"x. 60 IN KX 10 ab.",
		"x. 60 IN DNAME ab.",
		"x. 60 IN IPSECKEY 10 3 2 ab. AQNRU3mG7TVTO2BkR47usntb102uFJtugbo6BSGvgqt4AQ==",
		"x. 60 IN RRSIG A 8 2 60 20300101000000 20200101000000 12345 ab. AAAA",
		"x. 60 IN NSEC ab. A",
		"x. 60 IN HIP 2 200100107B1A74DF365639CC39F1D578 "+key+" ab. ab.",
		"x. 60 IN TALINK ab. ab.",
		"x. 60 IN SVCB 1 ab. alpn=h2",
		"x. 60 IN HTTPS 1 ab.",
		"x. 60 IN LP 10 ab.",
		"x. 60 IN AMTRELAY 10 0 3 ab.",
	)
	rrs = append(rrs,
		&dns.NXT{NSEC: dns.NSEC{Hdr: hdr(dns.TypeNXT), NextDomain: "ab.", TypeBitMap: []uint16{dns.TypeA}}},
		&dns.TKEY{Hdr: hdr(dns.TypeTKEY), Algorithm: "ab.", Inception: 1, Expiration: 2, Mode: 3, KeySize: 1, Key: "00", OtherLen: 1, OtherData: "00"},
		&dns.TSIG{Hdr: hdr(dns.TypeTSIG), Algorithm: "ab.", TimeSigned: uint64(time.Now().Unix()), Fudge: 300, MACSize: 1, MAC: "00", OrigId: 1},
	)
	ab := []byte("\x02ab\x00")
	for _, rr := range rrs {
		name := dns.TypeToString[rr.Header().Rrtype]
		m := newMsg("q.example.", dns.TypeA, func(m *dns.Msg) {
			m.Answer = []dns.RR{rr}
		})
		msg := pack(t, m)
		if _, err := ScanReply(msg); err != nil {
			t.Errorf("%s: %x does not scan: %v", name, msg, err)
			continue
		}
		off, _ := skipQuestions(msg, HeaderLen, 1)
		fixed, end, _ := skipRR(msg, off)
		data := fixed + rrFixedLen
		found := 0
		for at := data; ; at++ {
			i := bytes.Index(msg[at:end], ab)
			if i < 0 {
				break
			}
			at += i
			found++
			for _, header := range []bool{false, true} {
				// The name's 4 octets become a pointer's 2.
				to, want := HeaderLen, "q.example."
				if header {
					to, want = 7, `\000.`
				}
				v := append(append(append([]byte(nil), msg[:at]...), byte(pointer(to)>>8), byte(pointer(to))), msg[at+4:]...)
				binary.BigEndian.PutUint16(v[fixed+8:], uint16(end-2-data))
				got := new(dns.Msg)
				if err := got.Unpack(v); err != nil || len(got.Answer) != 1 {
					t.Errorf("%s: miekg/dns does not read %x: %v", name, v, err)
					continue
				}
				if s := got.Answer[0].String(); !strings.Contains(s, want) {
					t.Errorf("%s: the name at %d replaced by a pointer to %d: %s; miekg/dns reads no name there", name, at-data, to, s)
				}
				if _, err := ScanReply(v); header != errors.Is(err, errForward) || !header && err != nil {
					t.Errorf("%s: the name at %d pointing to %d: ScanReply: %v", name, at-data, to, err)
				}
			}
		}
		if found == 0 {
			t.Errorf("%s: no name in %x", name, msg[data:end])
		}
	}
}

// TestDataEndingBeforeItsNameHoldsNone: a record whose data ends where a
// name would start (an MX record of a preference alone, an SRV record
// without its target, a NAPTR record of an order and a preference), which
// miekg/dns reads, its fields up to there, scans and is cut as it came,
// as a reply CoreDNS reads (before: refused as if a name in it led
// nowhere, so a client over UDP got an empty reply with TC for it).
func TestDataEndingBeforeItsNameHoldsNone(t *testing.T) {
	for _, tc := range []struct {
		rrtype uint16
		data   []byte
	}{
		{dns.TypeMX, []byte{0, 10}},
		{dns.TypeSRV, []byte{0, 1, 0, 1, 0, 53}},
		{dns.TypeNAPTR, []byte{0, 100, 0, 10}},
		{dns.TypeSOA, []byte("\x02ab\x00")},
	} {
		name := dns.TypeToString[tc.rrtype]
		msg := hostileReply(t, 2, func(start int) []byte {
			rr := func(rrtype uint16, data []byte) []byte {
				out := binary.BigEndian.AppendUint16(nil, pointer(HeaderLen))
				out = binary.BigEndian.AppendUint16(out, rrtype)
				out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
				out = binary.BigEndian.AppendUint32(out, 60)
				out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
				return append(out, data...)
			}
			return append(rr(tc.rrtype, tc.data), rr(dns.TypeA, []byte{10, 0, 0, 1})...)
		})
		if err := new(dns.Msg).Unpack(msg); err != nil {
			t.Errorf("%s: miekg/dns does not read %x: %v", name, msg, err)
			continue
		}
		if _, err := ScanReply(msg); err != nil {
			t.Errorf("%s: ScanReply(%x): %v", name, msg, err)
		}
		f, err := PlanFit(msg, len(msg)-1)
		if err != nil || f.Kept() != 1 {
			t.Errorf("%s: PlanFit(%x) to one octet less: %d kept, %v; want the first record kept", name, msg, f.Kept(), err)
		}
	}
}

// chainedLabels is data of runs of labels one-octet labels, each
// run but the first ending in a pointer to the one before, at off in the
// message: a name that points to the last run reads as all of them. It
// returns the data and where the last run starts.
func chainedLabels(off, runs, labels int) (data []byte, last int) {
	last = -1
	for range runs {
		run := off + len(data)
		for range labels {
			data = append(data, 1, 'x')
		}
		if last < 0 {
			data = append(data, 0)
		} else {
			data = binary.BigEndian.AppendUint16(data, pointer(last))
		}
		last = run
	}
	return data, last
}

// TestNameLongerThanANameIsRefused: a name that pointers make longer
// than 255 octets, which miekg/dns refuses to read, is refused by
// ScanReply and the cuts as readName refuses it: one owning an additional
// record, and one owning the 2,900 other records of a 64 KB reply, which
// chains 127 runs of 120 labels (before: accepted, that one followed to
// its end, 15,000 labels for each record: 43 ms for PlanFit on a shared
// 2-core machine).
func TestNameLongerThanANameIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name         string
		runs, labels int
		fill         bool // the long name owns answers up to 64 KB; else one additional record
	}{
		{"two runs, 300 octets", 2, 75, false},
		{"127 runs of 120 labels", 127, 120, true},
	} {
		rr := func(owner uint16, data []byte) []byte {
			out := binary.BigEndian.AppendUint16(nil, owner)
			out = binary.BigEndian.AppendUint16(out, 65400)
			out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
			out = binary.BigEndian.AppendUint32(out, 60)
			out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
			return append(out, data...)
		}
		owned := 0
		msg := hostileReply(t, 1, func(start int) []byte {
			data, last := chainedLabels(start+2+rrFixedLen, tc.runs, tc.labels)
			out := rr(pointer(HeaderLen), data)
			for owned == 0 || tc.fill && start+len(out)+minRRLen+1 < 0xFFFF {
				out = append(out, rr(pointer(last), nil)...)
				owned++
			}
			return out
		})
		if tc.fill {
			SetANCount(msg, uint16(1+owned))
		} else {
			SetARCount(msg, 1)
		}
		if err := new(dns.Msg).Unpack(msg); err == nil {
			t.Errorf("%s: miekg/dns reads it", tc.name)
		}
		if _, err := ScanReply(msg); !errors.Is(err, errNameLen) {
			t.Errorf("%s: ScanReply: %v, want %v", tc.name, err, errNameLen)
		}
		if _, err := PlanFit(msg, 512); !errors.Is(err, errNameLen) {
			t.Errorf("%s: PlanFit: %v, want %v", tc.name, err, errNameLen)
		}
		if _, _, err := FirstRecordsIn(msg, 50, 500); !errors.Is(err, errNameLen) {
			t.Errorf("%s: FirstRecordsIn: %v, want %v", tc.name, err, errNameLen)
		}
	}
}
