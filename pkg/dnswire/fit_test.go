package dnswire

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// bigReply is a compressed reply to big.example. A: n addresses, two NS
// records, their glue, and an OPT record placed as opt says (its index in
// the additional section, -1 for none).
func bigReply(tb testing.TB, n, opt int) []byte {
	tb.Helper()
	var an []string
	for i := range n {
		an = append(an, fmt.Sprintf("big.example. 60 IN A 203.0.113.%d", i%250+1))
	}
	m := newMsg("big.example.", dns.TypeA,
		records(tb, answer, an...),
		records(tb, authority, "example. 60 IN NS ns1.example.", "example. 60 IN NS ns2.example."),
		records(tb, additional, "ns1.example. 60 IN A 198.51.100.1", "ns2.example. 60 IN AAAA 2001:db8::2"))
	m.Response, m.Authoritative, m.RecursionDesired, m.RecursionAvailable = true, true, true, true
	if opt >= 0 {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(4096)
		o.SetDo()
		o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 12)})
		m.Extra = slices.Insert(m.Extra, opt, dns.RR(o))
	}
	m.Compress = true
	return pack(tb, m)
}

// TestFitReplyKeepsWhatTruncateKeeps: a reply cut on the wire parses, keeps
// the ID, flags and question, the OPT record with its options, and as many
// records of each section as miekg's Msg.Truncate keeps (CoreDNS's forward
// plugin cuts with it), with TC when an answer or authority record is
// left out (RFC 2181 9), where Truncate sets it for any record.
func TestFitReplyKeepsWhatTruncateKeeps(t *testing.T) {
	for _, tc := range []struct {
		n, opt, limit int
	}{
		{250, 2, 512}, {250, 2, 1232}, {250, 2, 4096}, // answers cut
		{70, 2, 1232}, {71, 2, 1232}, {72, 2, 1232}, // authority and additional cut
		{250, -1, 512}, {72, -1, 1232},
	} {
		t.Run(fmt.Sprintf("%d answers, OPT %d, %d bytes", tc.n, tc.opt, tc.limit), func(t *testing.T) {
			msg := bigReply(t, tc.n, tc.opt)
			if len(msg) <= tc.limit {
				t.Fatalf("the reply is %d bytes, within %d", len(msg), tc.limit)
			}
			want := new(dns.Msg)
			if err := want.Unpack(msg); err != nil {
				t.Fatal(err)
			}
			want.Truncate(tc.limit)

			f, err := PlanFit(msg, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			cut := f.Apply(slices.Clone(msg))
			t.Logf("kept %d/%d/%d records", f.an, f.ns, f.ar)
			got := new(dns.Msg)
			if err := got.Unpack(cut); err != nil {
				t.Fatalf("the cut reply does not parse: %v", err)
			}
			wantTC := len(want.Answer) < tc.n || len(want.Ns) < 2
			if len(cut) > tc.limit || got.Truncated != wantTC || f.Truncated != wantTC || !f.Dropped {
				t.Errorf("%d bytes, TC %v (planned %v), dropped %v; want at most %d, TC %v", len(cut), got.Truncated, f.Truncated, f.Dropped, tc.limit, wantTC)
			}
			if got.Id != 0xBEEF || !got.Response || !got.Authoritative || !got.RecursionDesired || !got.RecursionAvailable ||
				len(got.Question) != 1 || got.Question[0] != want.Question[0] {
				t.Errorf("header or question changed: %v", got.MsgHdr)
			}
			if len(got.Answer) != len(want.Answer) || len(got.Ns) != len(want.Ns) || len(got.Extra) != len(want.Extra) {
				t.Errorf("%d/%d/%d records, want %d/%d/%d as Truncate keeps", len(got.Answer), len(got.Ns), len(got.Extra), len(want.Answer), len(want.Ns), len(want.Extra))
			}
			for i, rr := range got.Answer {
				if rr.String() != want.Answer[i].String() {
					t.Errorf("answer %d: %v, want %v", i, rr, want.Answer[i])
				}
			}
			if opt, wantOPT := got.IsEdns0(), want.IsEdns0(); (opt == nil) != (wantOPT == nil) || opt != nil && opt.String() != wantOPT.String() {
				t.Errorf("OPT %v, want %v", opt, wantOPT)
			}
		})
	}
}

// TestFitReplyOPTFirst: additional records after the OPT record are left
// out, as moving them would break their compression pointers, without TC
// (they are additional records); what is kept parses.
func TestFitReplyOPTFirst(t *testing.T) {
	msg := bigReply(t, 60, 0)
	f, err := PlanFit(msg, 1232)
	if err != nil {
		t.Fatal(err)
	}
	got := new(dns.Msg)
	if err := got.Unpack(f.Apply(msg)); err != nil {
		t.Fatalf("the cut reply does not parse: %v", err)
	}
	if len(got.Answer) != 60 || len(got.Ns) != 2 || len(got.Extra) != 1 || got.IsEdns0() == nil || got.Truncated || !f.Dropped {
		t.Errorf("%d/%d/%d records, OPT %v, TC %v, dropped %v; want 60/2/1 (the OPT), no TC, dropped", len(got.Answer), len(got.Ns), len(got.Extra), got.IsEdns0() != nil, got.Truncated, f.Dropped)
	}
}

// srvReply is a reply to _http._tcp.db.example. SRV: 8 records, each
// target's two AAAA records in the additional section, with RRSIGs of
// the answer and of each target's set when signed, then an OPT record with
// DO set (RFC 3225) when signed.
func srvReply(tb testing.TB, compress, signed bool) []byte {
	tb.Helper()
	const sig = "RRSIG %s 13 3 60 20300101000000 20200101000000 12345 example. dGVzdHNpZ25hdHVyZXRlc3RzaWduYXR1cmU="
	m := newMsg("_http._tcp.db.example.", dns.TypeSRV)
	m.Response = true
	for i := range 8 {
		m.Answer = append(m.Answer, dnstest.RRs(tb, fmt.Sprintf("_http._tcp.db.example. 60 IN SRV 0 100 80 db-%d.example.", i))...)
		m.Extra = append(m.Extra, dnstest.RRs(tb,
			fmt.Sprintf("DB-%d.example. 60 IN AAAA 2001:db8::%d:1", i, i), // spelled otherwise: the same owner
			fmt.Sprintf("db-%d.example. 60 IN AAAA 2001:db8::%d:2", i, i))...)
		if signed {
			m.Extra = append(m.Extra, dnstest.RRs(tb, fmt.Sprintf("db-%d.example. 60 IN "+sig, i, "AAAA"))...)
		}
	}
	if signed {
		m.Answer = append(m.Answer, dnstest.RRs(tb, "_http._tcp.db.example. 60 IN "+fmt.Sprintf(sig, "SRV"))...)
		m.SetEdns0(4096, true)
	}
	m.Compress = compress
	return pack(tb, m)
}

// TestFitReplyAdditionalLeftOutSetsNoTC: an SRV reply whose answers fit
// and whose additional records do not all keeps every answer, without TC
// (RFC 2181 9: TC is not set for what additional section processing could
// not fit, and a client given TC throws the answer away), and of the
// additional section whole RRsets only, an owner spelled in another case
// or compressed otherwise still the same (RFC 2181 5: without TC, part of
// a set would pass for the whole). Signed (DO), the RRSIGs that do not fit
// in the additional section are left out without TC (RFC 4035 3.1.1: MUST
// NOT set TC solely for them); the answer's own are answers. Where an
// answer does not fit, TC.
func TestFitReplyAdditionalLeftOutSetsNoTC(t *testing.T) {
	for _, tc := range []struct {
		compress, signed bool
		limit            int
		tc               bool
		unsigned         int // sets kept whose RRSIG is left out
	}{
		{true, false, 512, false, 0}, {false, false, 560, false, 0},
		{true, true, 450, false, 1}, {true, true, 700, false, 1}, {false, true, 1232, false, 0},
		{false, false, 300, true, 0}, {true, true, 300, true, 0},
	} {
		t.Run(fmt.Sprintf("compressed %v, signed %v, %d bytes", tc.compress, tc.signed, tc.limit), func(t *testing.T) {
			msg := srvReply(t, tc.compress, tc.signed)
			answers := 8
			if tc.signed {
				answers = 9
			}
			f, err := PlanFit(msg, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			cut := f.Apply(slices.Clone(msg))
			got := new(dns.Msg)
			if err := got.Unpack(cut); err != nil {
				t.Fatalf("the cut reply does not parse: %v", err)
			}
			sets, sigs := map[string]int{}, 0
			for _, rr := range got.Extra {
				switch rr.Header().Rrtype {
				case dns.TypeAAAA:
					sets[strings.ToLower(rr.Header().Name)]++
				case dns.TypeRRSIG:
					sigs++
				}
			}
			if tc.signed && len(sets)-sigs != tc.unsigned {
				t.Errorf("%d sets, %d of their RRSIGs; want %d without", len(sets), sigs, tc.unsigned)
			}
			t.Logf("%d bytes, %d answers, %d additional, sets %v", len(cut), len(got.Answer), len(got.Extra), sets)
			if len(cut) > tc.limit || !f.Dropped || got.Truncated != tc.tc || f.Truncated != tc.tc ||
				(len(got.Answer) == answers) == tc.tc || (got.IsEdns0() != nil) != tc.signed {
				t.Errorf("%d bytes, TC %v, %d answers, OPT %v; want at most %d, TC %v, all %d answers unless TC, the OPT record if signed",
					len(cut), got.Truncated, len(got.Answer), got.IsEdns0() != nil, tc.limit, tc.tc, answers)
			}
			for name, n := range sets {
				if n != 2 {
					t.Errorf("%d of %s's 2 addresses: a set cut in two", n, name)
				}
			}
			if !tc.tc && len(sets) == 0 {
				t.Error("no address kept: the test cuts nothing in the additional section")
			}
		})
	}
}

// TestSameName: names compare equal ignoring case, written out or
// compressed; a pointer to itself or around a loop reads as no name, and
// the walk ends.
func TestSameName(t *testing.T) {
	// 12 octets of header, then names from offset 12.
	msg := make([]byte, HeaderLen)
	a := len(msg)
	msg = append(msg, 3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0) // www.example.
	b := len(msg)
	msg = append(msg, 3, 'W', 'W', 'W', 0xC0, byte(a+4)) // WWW + pointer to example.
	c := len(msg)
	msg = append(msg, 0xC0, byte(b)) // pointer to b
	d := len(msg)
	msg = append(msg, 3, 'w', 'w', 'x', 0xC0, byte(a+4))
	loop := len(msg)
	msg = append(msg, 1, 'a', 0xC0, byte(loop)) // a.a.a.… back to itself
	self := len(msg)
	msg = append(msg, 0xC0, byte(self))
	for _, tc := range []struct {
		x, y int
		want bool
	}{
		{a, b, true}, {a, c, true}, {b, c, true}, {a, d, false}, {a, a + 4, false},
		{loop, loop, false}, {loop, a, false}, {self, self, false}, {a, len(msg), false},
	} {
		if got := sameName(msg, tc.x, tc.y); got != tc.want {
			t.Errorf("sameName(%d, %d) = %v, want %v", tc.x, tc.y, got, tc.want)
		}
	}
}

// TestFitReplyUncompressed: a reply without compression pointers is cut
// as it is written: the whole records that fit, and it parses.
func TestFitReplyUncompressed(t *testing.T) {
	m := new(dns.Msg)
	if err := m.Unpack(bigReply(t, 60, 2)); err != nil {
		t.Fatal(err)
	}
	m.Compress = false
	f, err := PlanFit(pack(t, m), 512)
	if err != nil || !f.Dropped {
		t.Fatalf("dropped %v, %v; want records dropped", f.Dropped, err)
	}
	cut := f.Apply(pack(t, m))
	got := new(dns.Msg)
	if err := got.Unpack(cut); err != nil || len(cut) > 512 || !got.Truncated || len(got.Answer) == 0 {
		t.Errorf("%d bytes, TC %v, %d answers, %v; want at most 512, TC, some answers, parsed", len(cut), got.Truncated, len(got.Answer), err)
	}
}

// TestFitReplyRejects: a malformed reply, and one whose OPT record alone
// does not fit, cannot be cut.
func TestFitReplyRejects(t *testing.T) {
	msg := bigReply(t, 60, 2)
	if _, err := PlanFit(msg[:len(msg)-3], 512); err == nil {
		t.Error("a reply cut short: no error")
	}
	m := newMsg("big.example.", dns.TypeA)
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 600)})
	m.Extra = append(m.Extra, o)
	if _, err := PlanFit(pack(t, m), 512); err == nil {
		t.Error("an OPT record over the limit: no error")
	}
}

// TestFitReplyAllocatesNothing: the cut is a walk over the wire, also
// where it keeps whole RRsets of the additional section.
func TestFitReplyAllocatesNothing(t *testing.T) {
	for _, msg := range [][]byte{bigReply(t, 250, 2), srvReply(t, true, false)} {
		buf := make([]byte, len(msg))
		if n := testing.AllocsPerRun(100, func() {
			copy(buf, msg)
			f, err := PlanFit(buf, 512)
			if err != nil {
				t.Fatal(err)
			}
			f.Apply(buf)
		}); n != 0 {
			t.Errorf("%v allocations a cut, want 0", n)
		}
	}
}

// TestFirstRecords: the first n records, whatever section they end in, and
// the OPT record wherever it was, parse as the reply's records did, with
// the reply's header and question; a reply with no more than n is itself.
func TestFirstRecords(t *testing.T) {
	for _, tc := range []struct {
		n, opt, records int // records: answers (60), NS (2) and glue (2)
	}{
		{10, 2, 64}, {10, -1, 64}, {61, 2, 64}, {62, 2, 64}, {63, 0, 64}, {63, 1, 64}, {63, 2, 64},
	} {
		t.Run(fmt.Sprintf("%d records, OPT %d", tc.n, tc.opt), func(t *testing.T) {
			msg := bigReply(t, 60, tc.opt)
			whole := new(dns.Msg)
			if err := whole.Unpack(msg); err != nil {
				t.Fatal(err)
			}
			first, dropped, err := FirstRecords(msg, tc.n)
			if err != nil || !dropped {
				t.Fatalf("dropped %v, %v; want records dropped", dropped, err)
			}
			got := new(dns.Msg)
			if err := got.Unpack(first); err != nil {
				t.Fatalf("does not parse: %v", err)
			}
			wantRRs := slices.Concat(whole.Answer, whole.Ns, whole.Extra)
			wantRRs = slices.DeleteFunc(wantRRs, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })[:tc.n]
			gotRRs := slices.DeleteFunc(slices.Concat(got.Answer, got.Ns, got.Extra), func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
			if got.MsgHdr != whole.MsgHdr || !slices.Equal(got.Question, whole.Question) || len(gotRRs) != tc.n ||
				(got.IsEdns0() == nil) != (tc.opt < 0) || tc.opt >= 0 && got.IsEdns0().String() != whole.IsEdns0().String() {
				t.Fatalf("%v %v, %d records, OPT %v; want %v %v, %d and %v", got.MsgHdr, got.Question, len(gotRRs), got.IsEdns0(),
					whole.MsgHdr, whole.Question, tc.n, whole.IsEdns0())
			}
			for i, rr := range gotRRs {
				if rr.String() != wantRRs[i].String() {
					t.Errorf("record %d: %v, want %v", i, rr, wantRRs[i])
				}
			}
			if len(got.Answer) != min(tc.n, 60) {
				t.Errorf("%d answers, want %d: the sections as they came", len(got.Answer), min(tc.n, 60))
			}
		})
	}
	msg := bigReply(t, 60, 2)
	if first, dropped, err := FirstRecords(msg, 64); err != nil || dropped || &first[0] != &msg[0] || len(first) != len(msg) {
		t.Errorf("all 64 records: dropped %v, %v, a copy %v; want the reply itself", dropped, err, &first[0] != &msg[0])
	}
	if _, _, err := FirstRecords(msg[:len(msg)-3], 10); err == nil {
		t.Error("a reply cut short: no error")
	}
}

// hugeRecordReplies are replies a hostile nameserver (a pod's own) sends,
// by name: a record of 60,000 octets, larger than any client's buffer,
// among the answers (TXT, or of a type no reader knows, or after an NSEC
// record whose type bitmap comes padded, which packs again in a few
// octets), in the authority section, and in the additional section after
// records of its set; and 100 records of 600 octets or so of types other
// than A, AAAA and TXT, whose data a cut's read counted as nothing.
func hugeRecordReplies(tb testing.TB) map[string][]byte {
	tb.Helper()
	hugeTXT := func(owner string) string { // 235 strings of 255 octets
		return owner + " 60 IN TXT " + strings.Repeat(`"`+strings.Repeat("h", 255)+`" `, 235)
	}
	opaque := func(owner string, size int) string { // octets below 0xC0: no pointer
		return fmt.Sprintf(`%s 60 IN TYPE65400 \# %d %s`, owner, size, strings.Repeat("5a", size))
	}
	many := func(line func(i int) string) []string {
		var out []string
		for i := range 100 {
			out = append(out, line(i))
		}
		return out
	}
	addrs := []string{"big.example. 60 IN A 10.0.0.1", "big.example. 60 IN A 10.0.0.2", "big.example. 60 IN A 10.0.0.3"}
	glue := []string{"ns1.example. 60 IN A 10.1.1.1", "ns2.example. 60 IN A 10.1.1.2"}
	small := func(owner string) string { return owner + ` 60 IN TXT "small"` }
	msgs := map[string]*dns.Msg{
		"a huge TXT answer": newMsg("big.example.", dns.TypeTXT, records(tb, answer, small("big.example."), small("big.example."),
			hugeTXT("big.example."), small("big.example.")), records(tb, additional, glue...)),
		"a huge answer after a padded NSEC": newMsg("big.example.", dns.TypeA, func(m *dns.Msg) {
			m.Answer = []dns.RR{dnstest.PaddedNSEC("big.example.", 60, 29)}
		}, records(tb, answer, hugeTXT("big.example."), addrs[0])),
		"a huge answer of an unknown type": newMsg("big.example.", dns.TypeA, records(tb, answer,
			slices.Concat(addrs, []string{opaque("big.example.", 60000)}, addrs)...)),
		"a huge authority record": newMsg("big.example.", dns.TypeA, records(tb, authority, testSOA, hugeTXT("example.com.")),
			records(tb, additional, glue...)),
		"a huge additional record after its set": newMsg("big.example.", dns.TypeA, records(tb, answer, addrs...),
			records(tb, additional, small("ns1.example."), small("ns1.example."), hugeTXT("ns1.example."), glue[1])),
		"OPENPGPKEY records of 600 octets": newMsg("big.example.", dns.TypeOPENPGPKEY, records(tb, answer, many(func(i int) string {
			return "big.example. 60 IN OPENPGPKEY " + base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%0600d", i)))
		})...)),
		"SRV records of long targets": newMsg("_x._tcp.big.example.", dns.TypeSRV, records(tb, answer, many(func(i int) string {
			return fmt.Sprintf("_x._tcp.big.example. 60 IN SRV 0 0 80 %s.%03d.example.", strings.Repeat("t", 60)+"."+strings.Repeat("u", 60)+"."+strings.Repeat("v", 60), i)
		})...)),
		"records of 600 octets of an unknown type": newMsg("big.example.", dns.TypeA, records(tb, answer, many(func(int) string {
			return opaque("big.example.", 600)
		})...)),
	}
	out := map[string][]byte{}
	for name, m := range msgs {
		m.Response = true
		m.SetEdns0(1232, false)
		m.Compress = true
		out[name] = pack(tb, m)
	}
	return out
}

// firstReadOf is the resolver's firstRead for a client's buffer of limit
// octets: the records, and the octets of them, a cut to it reads.
func firstReadOf(limit int) (n, room int) {
	room = max(limit, minUDPSize) - HeaderLen
	return room/minRRLen + 1, room
}

// TestFirstRecordsReadWhatTheRoomHolds: what FirstRecordsIn reads of a
// hostile nameserver's reply, for a client's buffer of 512, 1,232 and
// 4,096 octets, is at most about two buffers' worth, whatever the records'
// types and sizes (before: a record of 60,000 octets read whole, as the
// one past the room, and 100 records of 600 octets of types other than A,
// AAAA and TXT read as records of none: all of them), and the cut of it to
// the buffer (PlanFit) is the cut of the whole, TC and all; decoded and
// cut as miekg cuts (Truncate, the resolver's compressedFit and slow
// path's replies), it keeps no stand-in, and has TC where that cut has
// it (before: after the
// padded NSEC record, which packs again smaller than it came, the
// stand-in fit, and was kept without TC).
func TestFirstRecordsReadWhatTheRoomHolds(t *testing.T) {
	t.Parallel()
	for name, msg := range hugeRecordReplies(t) {
		for _, limit := range []int{512, 1232, 4096} {
			n, room := firstReadOf(limit)
			first, dropped, err := FirstRecordsIn(msg, n, room)
			if err != nil || !dropped {
				t.Fatalf("%s, buffer %d: dropped %v, %v", name, limit, dropped, err)
			}
			if len(first) > 2*limit+512 {
				t.Errorf("%s, buffer %d: %d octets read of %d", name, limit, len(first), len(msg))
			}
			if _, err := ScanReply(first); err != nil {
				t.Fatalf("%s, buffer %d: %x does not walk: %v", name, limit, first, err)
			}
			got, err := PlanFit(first, limit)
			if err != nil {
				t.Fatal(err)
			}
			want, err := PlanFit(msg, limit)
			if err != nil {
				t.Fatal(err)
			}
			if cut, wholeCut := got.Apply(slices.Clone(first)), want.Apply(slices.Clone(msg)); !bytes.Equal(cut, wholeCut) || got.Truncated != want.Truncated {
				t.Errorf("%s, buffer %d: the first records cut to\n%x (TC %v), the whole to\n%x (TC %v)", name, limit, cut, got.Truncated, wholeCut, want.Truncated)
			}
			m := new(dns.Msg)
			if err := m.Unpack(first); err != nil {
				t.Fatalf("%s, buffer %d: %x does not decode: %v", name, limit, first, err)
			}
			if m.Truncate(limit); hasStandIn(m) || m.Truncated != want.Truncated {
				t.Errorf("%s, buffer %d: decoded and cut: TC %v, answer %v, authority %v; want TC %v and no stand-in", name, limit, m.Truncated, m.Answer, m.Ns, want.Truncated)
			}
		}
	}
}

// TestPackedAtLeastIsWhatPackingLeaves: packedAtLeast is at most what a
// record takes packed by miekg/dns, compressed, after one with the same
// names (the most compression can save), for every type; and all of that
// where the type's data holds no name packing compresses (before: the data
// of every type but A, AAAA and TXT counted as nothing, so that a reply of
// such records was read as far as 111 of them, whatever their size, for a
// buffer of 1,232 octets).
func TestPackedAtLeastIsWhatPackingLeaves(t *testing.T) {
	t.Parallel()
	compressed := map[uint16]bool{dns.TypeNS: true, dns.TypeMD: true, dns.TypeMF: true, dns.TypeCNAME: true, dns.TypeMB: true,
		dns.TypeMG: true, dns.TypeMR: true, dns.TypePTR: true, dns.TypeMINFO: true, dns.TypeMX: true, dns.TypeSOA: true}
	for _, line := range []string{
		"x.example. 60 IN A 10.0.0.1",
		"x.example. 60 IN AAAA 2001:db8::1",
		`x.example. 60 IN TXT "a" "bc"`,
		"x.example. 60 IN CNAME target.example.",
		"x.example. 60 IN NS ns1.x.example.",
		"x.example. 60 IN PTR host.x.example.",
		"x.example. 60 IN MX 10 mail.x.example.",
		"x.example. 60 IN MINFO r.x.example. e.x.example.",
		testSOA,
		"x.example. 60 IN SRV 0 0 80 target.example.",
		`x.example. 60 IN NAPTR 100 10 "u" "E2U+sip" "!^.*$!sip:info@example.com!" .`,
		`x.example. 60 IN CAA 0 issue "ca.example.net"`,
		"x.example. 60 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==",
		"x.example. 60 IN DS 12345 13 2 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"x.example. 60 IN TLSA 3 1 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		`x.example. 60 IN HTTPS 1 . alpn="h2,h3"`,
		"x.example. 60 IN SVCB 1 svc.example. port=8443",
		"x.example. 60 IN NSEC next.example. A AAAA RRSIG NSEC",
		"x.example. 60 IN RRSIG A 13 2 60 20300101000000 20200101000000 12345 example. aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		`x.example. 60 IN HINFO "cpu" "os"`,
		"x.example. 60 IN DNAME y.example.",
		"x.example. 60 IN RP m.x.example. t.x.example.",
		`x.example. 60 IN TYPE65400 \# 4 01020304`,
	} {
		rr := dnstest.RRs(t, line)[0]
		packed := func(compress bool, rrs ...dns.RR) []byte {
			m := newMsg(rr.Header().Name, rr.Header().Rrtype, func(m *dns.Msg) { m.Answer = rrs })
			m.Compress = compress
			return pack(t, m)
		}
		one := packed(true, rr)
		least := len(packed(true, rr, dns.Copy(rr))) - len(one) // the second, after the first
		wire := packed(false, rr)
		var q Question
		if err := readQuestion(wire, &q, nil); err != nil {
			t.Fatal(err)
		}
		fixed, end, err := skipRR(wire, q.End)
		if err != nil {
			t.Fatal(err)
		}
		p := packedAtLeast(wire, q.End, fixed, end)
		if p > least || !compressed[rr.Header().Rrtype] && p != least {
			t.Errorf("%s: packedAtLeast %d, packed after one like it %d", line, p, least)
		}
	}
}

// hasStandIn reports whether m holds a record of typeStandIn.
func hasStandIn(m *dns.Msg) bool {
	for _, rr := range slices.Concat(m.Answer, m.Ns, m.Extra) {
		if rr.Header().Rrtype == typeStandIn {
			return true
		}
	}
	return false
}

// TestPackedAtLeastIsNoMoreThanTheRecord: of records whose data is
// missing its name (malformed: an NS record of no data, an MX record of a
// preference alone, an SOA record cut short), packedAtLeast is no more
// than the record takes as it came (before: a name counted 1 octet
// however little the data held, so that a read of a reply of 101 NS
// records of no data stopped at 94, which fit the client's buffer as they
// came: cut without TC).
func TestPackedAtLeastIsNoMoreThanTheRecord(t *testing.T) {
	for _, tc := range []struct {
		rrtype uint16
		data   []byte
	}{
		{dns.TypeNS, nil},
		{dns.TypeCNAME, nil},
		{dns.TypePTR, nil},
		{dns.TypeMINFO, []byte{0}},
		{dns.TypeMX, []byte{0, 10}},
		{dns.TypeSOA, []byte{0, 0}},
	} {
		msg := pack(t, newMsg("x.example.", tc.rrtype))
		start := len(msg)
		msg = appendRR(msg, uint16(pointer(HeaderLen)), tc.rrtype, dns.ClassINET, 60, tc.data)
		fixed, end, err := skipRR(msg, start)
		if err != nil {
			t.Fatal(err)
		}
		if p := packedAtLeast(msg, start, fixed, end); p > end-start {
			t.Errorf("%s of %d octets of data: packedAtLeast %d, the record as it came %d", dns.TypeToString[tc.rrtype], len(tc.data), p, end-start)
		}
	}
}
