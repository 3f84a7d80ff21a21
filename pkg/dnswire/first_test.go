package dnswire

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// firstSamples are large replies to take the first records of, by name:
// sets to rotate (one, or two of different types after a CNAME), one whose
// octets read as a pointer into its set (left in place), OPT records
// before and after other additional records, and few huge records (100
// TXT records of 600 octets).
func firstSamples(tb testing.TB) map[string][]byte {
	tb.Helper()
	build := func(compress bool, an []string, opt int, extra ...string) []byte {
		m := newMsg("big.example.", dns.TypeA, records(tb, answer, an...),
			records(tb, authority, "example. 3700 IN NS ns1.example.", "example. 3700 IN NS ns2.example."),
			records(tb, additional, extra...))
		m.Response, m.RecursionDesired, m.RecursionAvailable = true, true, true
		if opt >= 0 {
			o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
			o.SetUDPSize(1232)
			m.Extra = slices.Insert(m.Extra, opt, dns.RR(o))
		}
		m.Compress = compress
		return pack(tb, m)
	}
	// Addresses whose octets are all below 192: no two octets of the
	// answer read as a compression pointer, whatever the TTLs are aged to
	// (3700, 0x0E74, aged by less than 64 s: a TTL's last octet goes from
	// 0x74 down to 0x35, no pointer's first).
	set := func(owner, rrtype string, n int) []string {
		var out []string
		for i := range n {
			addr := fmt.Sprintf("10.%d.%d.1", i/150, i%150)
			if rrtype == "AAAA" {
				addr = fmt.Sprintf("2001:db8::%x", i+1)
			}
			out = append(out, fmt.Sprintf("%s 3700 IN %s %s", owner, rrtype, addr))
		}
		return out
	}
	glue := []string{"ns1.example. 3700 IN A 10.1.1.1", "ns2.example. 3700 IN A 10.1.1.2"}
	unsafe := make([]string, 300)
	for i := range unsafe { // 192.168…: octets that read as pointers into the set
		unsafe[i] = fmt.Sprintf("big.example. 300 IN A 192.168.%d.%d", i/200, i%200)
	}
	txt := make([]string, 100)
	for i := range txt { // 600 octets of data: strings of 255, 255 and 87
		txt[i] = fmt.Sprintf("big.example. 3700 IN TXT %q %q %q", strings.Repeat("a", 255), strings.Repeat("b", 255), fmt.Sprintf("%087d", i))
	}
	return map[string][]byte{
		"huge TXT records":           build(true, txt, 2, glue...),
		"one set":                    build(false, set("big.example.", "A", 300), 2, glue...),
		"one set, compressed":        build(true, set("big.example.", "A", 300), 2, glue...),
		"CNAME, two sets":            build(true, slices.Concat([]string{"big.example. 3700 IN CNAME cdn.example."}, set("cdn.example.", "A", 150), set("cdn.example.", "AAAA", 150)), 0, glue...),
		"OPT first, no glue":         build(false, set("big.example.", "A", 300), 0),
		"no OPT":                     build(false, set("big.example.", "A", 300), -1, glue...),
		"a pointer into the set":     build(false, unsafe, 2, glue...),
		"OPT between glue records":   build(true, set("big.example.", "A", 60), 1, glue...),
		"few records, all kept here": build(true, set("big.example.", "A", 3), 2, glue...),
	}
}

// TestAppendFirstIsFirstRecordsOfTheRotatedReply: what AppendFirst appends
// of a reply is, byte for byte, FirstRecordsIn of the reply aged and
// rotated as AppendCached makes it (AgeTTLs, RotateAnswers), for every ID,
// age, number of records and room in octets, sets moved or left in place
// as RotateAnswers moves them; a reply with no more records is left to
// the caller (ok false, dst as it was).
func TestAppendFirstIsFirstRecordsOfTheRotatedReply(t *testing.T) {
	t.Parallel()
	prefix := []byte("batch")
	samples := firstSamples(t)
	maps.Copy(samples, hugeRecordReplies(t))
	for name, msg := range samples {
		s, err := ScanReply(msg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p := PlanRotation(msg)
		kept := 0
		for _, n := range []int{0, 1, 2, 45, 111, 151, 299, 300, 301, 302, 303, 304, 400} {
			for _, room := range []int{AnyRoom, 0, 611, 612, 1220, 4084} {
				for _, elapsed := range []uint32{0, 7, 63} {
					for id := range uint16(7) {
						ref := slices.Clone(msg)
						AgeTTLs(ref, s.TTLOffsets, elapsed)
						RotateAnswers(ref, id*97+1)
						want, dropped, err := FirstRecordsIn(ref, n, room)
						if err != nil {
							t.Fatal(err)
						}
						got, ok := AppendFirst(slices.Clone(prefix), msg, p, id*97+1, n, room, s.TTLOffsets, elapsed)
						switch {
						case ok != dropped:
							t.Fatalf("%s, %d records, room %d, ID %d: ok %v; want %v, as FirstRecordsIn drops records", name, n, room, id*97+1, ok, dropped)
						case !ok && !bytes.Equal(got, prefix):
							t.Fatalf("%s, %d records, room %d: nothing to leave out, and dst became %q", name, n, room, got)
						case ok && (!bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want)):
							t.Fatalf("%s, %d records, room %d, ID %d, %d s: got\n%x\nwant\n%x", name, n, room, id*97+1, elapsed, got, want)
						}
						if ok {
							kept++
						}
					}
				}
			}
		}
		if name != "few records, all kept here" && kept == 0 {
			t.Errorf("%s: never cut", name)
		}
	}
	// The sets do move: the first records differ from ID to ID. (Not with
	// the OPT record: its UDP size, 1232, has an octet 0xD0 that reads,
	// with the next, as a pointer into the set.)
	msg := firstSamples(t)["no OPT"]
	p := PlanRotation(msg)
	a, _ := AppendFirst(nil, msg, p, 1, 10, AnyRoom, nil, 0)
	b, _ := AppendFirst(nil, msg, p, 2, 10, AnyRoom, nil, 0)
	if bytes.Equal(a, b) {
		t.Error("IDs 1 and 2 got the same first records: the set was not rotated")
	}
}

// TestAppendFirstCopiesOnlyWhatItKeeps: of a reply of 2,000 records,
// taking the first 111 allocates only those.
func TestAppendFirstCopiesOnlyWhatItKeeps(t *testing.T) {
	var an []string
	for i := range 2000 {
		an = append(an, fmt.Sprintf("big.example. 3600 IN A 10.%d.%d.1", i/150, i%150))
	}
	msg := pack(t, newMsg("big.example.", dns.TypeA, records(t, answer, an...)))
	s, err := ScanReply(msg)
	if err != nil {
		t.Fatal(err)
	}
	p := PlanRotation(msg)
	dst := make([]byte, 0, 4096)
	if allocs := testing.AllocsPerRun(100, func() {
		if _, ok := AppendFirst(dst, msg, p, 7, 111, AnyRoom, s.TTLOffsets, 9); !ok {
			t.Fatal("not cut")
		}
	}); allocs != 0 {
		t.Errorf("%.1f allocations, want none (dst has room)", allocs)
	}
	out, _ := AppendFirst(nil, msg, p, 7, 111, AnyRoom, s.TTLOffsets, 9)
	if len(msg) < 50<<10 || len(out) > 4<<10 {
		t.Errorf("a reply of %d bytes gave %d; want only its first 111 records", len(msg), len(out))
	}
}

// TestFirstAnswers: the first n answer and authority records, in their
// sections, the OPT record and no other additional record, the header and
// question the reply's (an extended rcode too); a reply with nothing to
// leave out is itself.
func TestFirstAnswers(t *testing.T) {
	t.Parallel()
	nx := newMsg("gone.example.", dns.TypeA, records(t, authority, testSOA), records(t, additional,
		"ns1.example. 60 IN A 10.1.1.1", "ns2.example. 60 IN A 10.1.1.2"), withEDNS(true))
	nx.Response, nx.Rcode = true, dns.RcodeNameError
	badCookie := newMsg("cookie.example.", dns.TypeA, withEDNS(false))
	badCookie.Response, badCookie.Rcode = true, dns.RcodeBadCookie // extended: 23
	small := newMsg("small.example.", dns.TypeA, records(t, answer, "small.example. 60 IN A 10.0.0.1"), withEDNS(false))
	small.Response = true
	for name, tc := range map[string]struct {
		msg         []byte
		n, an, ns   int
		sameAsWhole bool
	}{
		"answers cut":              {bigReply(t, 60, 2), 10, 10, 0, false},
		"into the authority":       {bigReply(t, 60, 2), 61, 60, 1, false},
		"glue left out":            {bigReply(t, 60, 2), 62, 60, 2, false},
		"glue left out, OPT after": {bigReply(t, 60, 0), 100, 60, 2, false},
		"NXDOMAIN, rcode only":     {pack(t, nx), 0, 0, 0, false},
		"NXDOMAIN, SOA":            {pack(t, nx), 1, 0, 1, false},
		"extended rcode":           {pack(t, badCookie), 0, 0, 0, true},
		"nothing to leave out":     {pack(t, small), 5, 1, 0, true},
	} {
		whole := new(dns.Msg)
		if err := whole.Unpack(tc.msg); err != nil {
			t.Fatal(err)
		}
		first, err := FirstAnswers(tc.msg, tc.n)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if same := &first[0] == &tc.msg[0]; same != tc.sameAsWhole {
			t.Errorf("%s: the reply itself %v, want %v", name, same, tc.sameAsWhole)
		}
		got := new(dns.Msg)
		if err := got.Unpack(first); err != nil {
			t.Fatalf("%s: does not parse: %v", name, err)
		}
		wantExtra := 0
		if whole.IsEdns0() != nil {
			wantExtra = 1
		}
		if got.MsgHdr != whole.MsgHdr || !slices.Equal(got.Question, whole.Question) || len(got.Answer) != tc.an || len(got.Ns) != tc.ns ||
			len(got.Extra) != wantExtra || wantExtra == 1 && got.IsEdns0().String() != whole.IsEdns0().String() {
			t.Errorf("%s: %v %v, %d answers, %d authority, %v; want %v %v, %d, %d and the OPT only", name, got.MsgHdr, got.Question,
				len(got.Answer), len(got.Ns), got.Extra, whole.MsgHdr, whole.Question, tc.an, tc.ns)
			continue
		}
		for i, rr := range slices.Concat(got.Answer, got.Ns) {
			if want := slices.Concat(whole.Answer, whole.Ns)[i]; rr.String() != want.String() {
				t.Errorf("%s: record %d: %v, want %v", name, i, rr, want)
			}
		}
	}
	if _, err := FirstAnswers(bigReply(t, 60, 2)[:200], 10); err == nil {
		t.Error("a reply cut short: no error")
	}
}

// FuzzAppendFirst checks the reads of a reply's first records on hostile
// replies (a pod's nameserver's): they never panic, keep no more records
// than asked, and what they keep walks, and reads in miekg/dns when the
// whole did (a name a pointer leads past the records kept, or into the
// header, would not: such replies are refused, checkName), and cut to
// the room as miekg cuts, keeps no stand-in (appendStandIn). Seeds: the
// replies FuzzScanReply starts from and firstSamples; testdata has the
// fuzzer's finds.
func FuzzAppendFirst(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg, uint16(1), uint16(1), uint16(0xFFFF))
	}
	for _, msg := range firstSamples(f) {
		f.Add(msg, uint16(3), uint16(45), uint16(0xFFFF))
	}
	f.Add(twoOPTReply(f), uint16(3), uint16(1), uint16(500))
	for _, msg := range hugeRecordReplies(f) {
		f.Add(msg, uint16(3), uint16(112), uint16(1220))
	}
	f.Fuzz(func(t *testing.T, msg []byte, id, n, room uint16) {
		whole := new(dns.Msg).Unpack(msg) == nil
		if first, err := FirstAnswers(msg, int(n)); err == nil {
			if h, _ := ReadHeader(first); int(h.ANCount)+int(h.NSCount) > int(n) || h.ARCount > 1 {
				t.Fatalf("FirstAnswers(%x, %d) = %x: %d answer and authority records, %d additional", msg, n, first, int(h.ANCount)+int(h.NSCount), h.ARCount)
			}
			if err := new(dns.Msg).Unpack(first); whole && err != nil {
				t.Fatalf("FirstAnswers(%x, %d) = %x, which miekg/dns does not read: %v", msg, n, first, err)
			}
		}
		s, err := ScanReply(msg)
		if err != nil {
			return
		}
		out, ok := AppendFirst(nil, msg, PlanRotation(msg), id, int(n), int(room), s.TTLOffsets, 7)
		if !ok {
			return
		}
		// No record larger than the room is copied (but the OPT record):
		// only records that fit in it, packed as small as they can be, an
		// owner and two names of their data that packing may compress
		// aside, and the one past the room, or its stand-in, no larger
		// than the room and an octet.
		h, _ := ReadHeader(out)
		off, _ := skipQuestions(out, HeaderLen, int(h.QDCount))
		for range int(h.ANCount) + int(h.NSCount) + int(h.ARCount) {
			fixed, end, err := skipRR(out, off)
			if err != nil {
				t.Fatalf("AppendFirst(%x, %d, %d) = %x: %v", msg, n, room, out, err)
			}
			if !isOPT(out, off, fixed) && end-off > int(room)+1+3*maxNameLen {
				t.Fatalf("AppendFirst(%x, %d, %d) = %x: a record of %d octets", msg, n, room, out, end-off)
			}
			off = end
		}
		if h, _ := ReadHeader(out); int(h.ANCount)+int(h.NSCount)+int(h.ARCount) > int(n)+1 {
			t.Fatalf("AppendFirst(%x, %d) = %x: %d records", msg, n, out, int(h.ANCount)+int(h.NSCount)+int(h.ARCount))
		}
		if _, err := ScanReply(out); err != nil {
			t.Fatalf("AppendFirst(%x, %d) = %x, which does not walk: %v", msg, n, out, err)
		}
		m := new(dns.Msg)
		unpacked := m.Unpack(out)
		if whole && unpacked != nil {
			t.Fatalf("AppendFirst(%x, %d) = %x, which miekg/dns does not read: %v", msg, n, out, unpacked)
		}
		// Cut to the room as the resolver cuts a decoded reply (its room
		// is what a buffer of 512 octets or more leaves), no stand-in
		// stays, however the records before it pack again.
		if wm := new(dns.Msg); unpacked == nil && room >= 512-HeaderLen && wm.Unpack(msg) == nil && !hasStandIn(wm) {
			if m.Truncate(HeaderLen + int(room)); hasStandIn(m) {
				t.Fatalf("AppendFirst(%x, %d, %d) = %x, which cut to the room keeps a stand-in: %v", msg, n, room, out, m)
			}
		}
	})
}

// TestAppendFirstLeavesAReplyThatFitsUnwalked: a reply larger than the
// room whose records all fit in it packed as small as they can be (30
// addresses under an uncompressed owner, 0.9 KB, for a buffer of 512
// octets) is left to the caller, which copies it whole, without being
// copied first: its plan knows what its records take (before: copied
// record by record, then thrown away, each query).
func TestAppendFirstLeavesAReplyThatFitsUnwalked(t *testing.T) {
	var an []string
	for i := range 30 {
		an = append(an, fmt.Sprintf("medium.example. 60 IN A 10.0.0.%d", i))
	}
	msg := pack(t, newMsg("medium.example.", dns.TypeA, records(t, answer, an...)))
	n, room := firstReadOf(512)
	if len(msg) <= HeaderLen+room {
		t.Fatalf("%d octets: fits the room as it is", len(msg))
	}
	s, err := ScanReply(msg)
	if err != nil {
		t.Fatal(err)
	}
	p := PlanRotation(msg)
	if allocs := testing.AllocsPerRun(100, func() {
		if _, ok := AppendFirst(nil, msg, p, 7, n, room, s.TTLOffsets, 9); ok {
			t.Fatal("a record left out")
		}
	}); allocs != 0 {
		t.Errorf("%.1f allocations, want none: the reply copied to be thrown away", allocs)
	}
}
