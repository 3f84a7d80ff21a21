package dnswire

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// hostileChain is a 64 KB reply to a.example. A whose answer is records
// of type A owned by names behind 126 pointers each (as hostileNames's
// "deepest"), then an A owned by the end of a CNAME chain of
// maxCNAMEChain links, and the chain in reverse order: the most passes
// answersType makes, each over every owner. miekg/dns reads it answered.
func hostileChain(tb testing.TB) []byte {
	tb.Helper()
	msg := pack(tb, newMsg("a.example.", dns.TypeA, func(m *dns.Msg) { m.Response = true }))
	at := len(msg) + 2 + rrFixedLen
	chain, last := chainedLabels(at, maxPointers-1, 1)
	msg = appendRR(msg, Pointer(HeaderLen), 65400, dns.ClassINET, 60, chain)
	// link i's name: c<i>.a.example. (0: the question's).
	name := func(i int) []byte {
		if i == 0 {
			return binary.BigEndian.AppendUint16(nil, Pointer(HeaderLen))
		}
		return binary.BigEndian.AppendUint16([]byte{2, 'c', byte('a' + i)}, Pointer(HeaderLen))
	}
	appendNamed := func(msg, owner []byte, rrtype uint16, rdata []byte) []byte {
		msg = append(msg, owner...)
		msg = binary.BigEndian.AppendUint16(msg, rrtype)
		msg = binary.BigEndian.AppendUint16(msg, dns.ClassINET)
		msg = binary.BigEndian.AppendUint32(msg, 60)
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(rdata)))
		return append(msg, rdata...)
	}
	var tail []byte
	tail = appendNamed(tail, name(maxCNAMEChain), dns.TypeA, []byte{192, 0, 2, 1})
	for i := maxCNAMEChain; i > 0; i-- {
		tail = appendNamed(tail, name(i-1), dns.TypeCNAME, name(i))
	}
	records := 1
	for len(msg)+2+rrFixedLen+4+len(tail) <= 0xFFFF {
		msg = appendRR(msg, Pointer(last), dns.TypeA, dns.ClassINET, 60, []byte{192, 0, 2, 2})
		records++
	}
	msg = append(msg, tail...)
	SetANCount(msg, uint16(records+1+maxCNAMEChain))
	return msg
}

// TestAnswersTypeWorkIsLinear: whether a 64 KB answer of owners behind
// 126 pointers each answers the question, through a CNAME chain as long
// as is followed and in reverse order, takes a few steps per octet, and
// reads no owner but those of the chain's records and the answer's:
// a hostile upstream buys little CPU with it. (Before, every owner was
// read on each of 17 passes: some 69,000 owners, 58-217 ms for ScanReply,
// BenchmarkHostileAnswer.) The reply reads answered, as miekg/dns reads it.
func TestAnswersTypeWorkIsLinear(t *testing.T) {
	const perOctet = 3
	msg := hostileChain(t)
	m := new(dns.Msg)
	if err := m.Unpack(msg); err != nil {
		t.Fatalf("miekg/dns does not read it: %v", err)
	}
	if !answeredMiekg(m) {
		t.Fatal("miekg/dns reads it not answered")
	}
	s, err := ScanReply(msg)
	if err != nil {
		t.Fatalf("ScanReply: %v", err)
	}
	if !s.Answered {
		t.Error("ScanReply: not answered")
	}
	answerOff := HeaderLen + 11 + 4
	w := answerWork{readLimit: answerOwnersRead}
	if ok, err := answersTypeWork(msg, answerOff, int(s.ANCount), dns.TypeA, &w); !ok || err != nil {
		t.Fatalf("answersType: %v, %v", ok, err)
	}
	if w.hashes == nil {
		t.Fatal("no owner compared by hashes")
	}
	t.Logf("%d octets, %d records: %d owners read, %d hash steps", len(msg), s.ANCount, w.ownersRead, w.hashes.steps)
	if w.hashes.steps > perOctet*len(msg) {
		t.Errorf("%d hash steps for %d octets, more than %d per octet", w.hashes.steps, len(msg), perOctet)
	}
	// What is remembered, on top of the names check's table: 4 octets
	// per octet of the reply.
	if size := int(unsafe.Sizeof(w.hashes.all[0])) * cap(w.hashes.all); size > 4*len(msg) {
		t.Errorf("%d octets of hashes for a %d-octet reply, more than 4 per octet", size, len(msg))
	}
	// Those read before comparing hashes, the chain's links and the
	// answer; a collision of keyed 32-bit hashes would add one, once in
	// some 10^7 runs (the filler's one name and the chain's 17, against
	// 17 names).
	if limit := answerOwnersRead + maxCNAMEChain + 1; w.ownersRead > limit {
		t.Errorf("%d owners read whole, more than %d", w.ownersRead, limit)
	}
}

// TestOrdinaryAnswerAllocatesNoHashes: a reply whose answer answers in
// fewer owners read than answerOwnersRead, here 20 addresses after their
// CNAME chain in reverse order (three passes), costs ScanReply its TTL
// offsets and nothing else: the hashes are for replies past them.
func TestOrdinaryAnswerAllocatesNoHashes(t *testing.T) {
	lines := []string{"a.example. 60 IN CNAME c0.example.", "c0.example. 60 IN CNAME c1.example."}
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("c1.example. 60 IN A 192.0.2.%d", i+1))
	}
	slices.Reverse(lines)
	msg := pack(t, newMsg("a.example.", dns.TypeA, func(m *dns.Msg) { m.Response, m.Compress = true, true }, records(t, answer, lines...)))
	if allocs := testing.AllocsPerRun(100, func() {
		if s, err := ScanReply(msg); err != nil || !s.Answered {
			t.Fatal(s.Answered, err)
		}
	}); allocs != 1 {
		t.Errorf("%.1f allocations, want 1 (the TTL offsets)", allocs)
	}
}

// answersTypeBefore is answersType as it was before it compared hashes:
// every owner read on every pass. The rule answersType must keep. A copy
// on purpose, not shared with reply.go: the reference TestAnswersTypeAsBefore
// and FuzzAnswersType hold answersTypeWork to (a shared helper would
// compare the code with itself).
func answersTypeBefore(msg []byte, off, count int, qtype uint16) (bool, error) {
	var nameBuf, ownerBuf [maxNameLen]byte
	name, _, err := readName(msg, HeaderLen, &nameBuf)
	if err != nil {
		return false, err
	}
	links := 0
	for moved := true; moved; {
		moved = false
		for o, i := off, 0; i < count; i++ {
			rr, err := readRR(msg, o)
			if err != nil {
				return false, err
			}
			owner, _, err := readName(msg, o, &ownerBuf)
			if err != nil {
				return false, err
			}
			o = rr.End
			switch {
			case string(owner) != string(name):
			case rr.Type == qtype:
				return true, nil
			case rr.Type == typeCNAME:
				if links++; links > maxCNAMEChain {
					return false, nil
				}
				var end int
				if name, end, err = readName(msg[:rr.End], rr.RdataOff, &nameBuf); err != nil {
					return false, err
				}
				if end != rr.End {
					return false, errCNAME
				}
				moved = true
			}
		}
	}
	return false, nil
}

// answeredAsBefore fails tb unless ScanReply finds msg answered as the
// walk before it did, error for error, on a reply it accepts.
func answeredAsBefore(tb testing.TB, msg []byte) {
	tb.Helper()
	s, err := ScanReply(msg)
	if err != nil || s.QDCount != 1 || s.ANCount == 0 {
		return
	}
	off, err := skipQuestions(msg, HeaderLen, 1)
	if err != nil {
		tb.Fatal(err)
	}
	qtype := binary.BigEndian.Uint16(msg[off-4:])
	if qtype == typeANY || qtype == typeCNAME {
		return
	}
	want, wantErr := answersTypeBefore(msg, off, int(s.ANCount), qtype)
	// As answersType does, and comparing every owner by hashes.
	for _, limit := range []int{answerOwnersRead, 0} {
		w := answerWork{readLimit: limit}
		got, gotErr := answersTypeWork(msg, off, int(s.ANCount), qtype, &w)
		if got != want || gotErr != wantErr {
			tb.Fatalf("%x (owners read before hashes: %d): answered %v, %v; before, %v, %v", msg, limit, got, gotErr, want, wantErr)
		}
	}
}

// TestAnswersTypeAsBefore: on the hostile reply, cut short and with
// octets changed at random, and with its answer rotated, and on the
// sample replies, answersType finds what it found before.
func TestAnswersTypeAsBefore(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	msg := hostileChain(t)
	answeredAsBefore(t, msg)
	for range 40 {
		v := slices.Clone(msg)
		for range 1 + rng.IntN(3) {
			v[HeaderLen+rng.IntN(len(v)-HeaderLen)] = byte(rng.Uint32())
		}
		// Most changes past the chain's first records land in the filler:
		// change the chain's names too.
		v[len(v)-1-rng.IntN(200)] ^= byte(1 + rng.IntN(0xFF))
		answeredAsBefore(t, v)
	}
	for _, msg := range sampleReplies(t) {
		answeredAsBefore(t, msg)
	}
}

// FuzzAnswersType: whether a reply answers its question is found as
// before, error for error, on any reply ScanReply accepts, comparing
// owners by hashes or not. Seeds: the sample replies, and short ones of
// CNAME chains in reverse order whose names differ in case.
func FuzzAnswersType(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg)
	}
	for _, n := range []int{1, 3} {
		m := newMsg("A.example.", dns.TypeA, func(m *dns.Msg) { m.Response = true })
		m.Answer = append(m.Answer, dnstest.RRs(f, fmt.Sprintf("C%d.Example. 60 IN A 192.0.2.1", n), "c0.example. 60 IN TXT x")...)
		for i := n; i >= 0; i-- {
			owner := "a.EXAMPLE."
			if i > 0 {
				owner = fmt.Sprintf("c%d.example.", i-1)
			}
			m.Answer = append(m.Answer, dnstest.RRs(f, fmt.Sprintf("%s 60 IN CNAME C%d.example.", owner, i))...)
		}
		f.Add(pack(f, m))
		m.Compress = true
		f.Add(pack(f, m))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		answeredAsBefore(t, msg)
	})
}

// BenchmarkHostileAnswer is what ScanReply costs on the reply whose
// answer makes answersType work most (hostileChain), and on an ordinary
// answer through a CNAME.
func BenchmarkHostileAnswer(b *testing.B) {
	for name, msg := range map[string][]byte{
		"hostile chain": hostileChain(b),
		"cname": pack(b, newMsg("www.example.com.", dns.TypeA, func(m *dns.Msg) { m.Response, m.Compress = true, true },
			records(b, answer, "www.example.com. 300 IN CNAME web.example.com.", "web.example.com. 60 IN A 192.0.2.1", "web.example.com. 60 IN A 192.0.2.2"))),
	} {
		b.Run("msg="+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if s, err := ScanReply(msg); err != nil || !s.Answered {
					b.Fatal(s.Answered, err)
				}
			}
		})
	}
}
