package dnswire

import (
	"bytes"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// FuzzParseQuery feeds arbitrary queries to the parser both the resolver
// and the forwarder read clients with, and to the replies built from what
// it found: it must never panic, what it reports must lie inside the
// message and agree with miekg/dns, and every reply must parse.
// Seeds: testdata/fuzz/FuzzParseQuery.
func FuzzParseQuery(f *testing.F) {
	for _, m := range []*dns.Msg{
		newMsg("www.example.com.", dns.TypeA),
		newMsg("WwW.ExAmple.COM.", dns.TypeAAAA, withEDNS(true)),
		newMsg(`a\.b\000.example.`, dns.TypeTXT),
		newMsg(longName(maxNameLen), dns.TypeA, withEDNS(false)),
		newMsg(".", dns.TypeNS, withEDNS(false), withEDNS(true)), // two OPT records
		newMsg(".", dns.TypeNS, withEDNS(true), func(m *dns.Msg) { m.Question = nil }),
	} {
		f.Add(pack(f, m))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var q Query
		var buf NameBuf
		err := ParseQuery(msg, &q, &buf)
		var bare Query
		if errBare := ParseQuery(msg, &bare, nil); (errBare == nil) != (err == nil) || bare.Header != q.Header || bare.End != q.End || bare.EDNS != q.EDNS || bare.Len != q.Len {
			t.Fatalf("with a name buffer: %+v, %v; without: %+v, %v", q, err, bare, errBare)
		}
		if len(msg) >= HeaderLen {
			reply := AppendErrorReply(nil, msg, &q, RcodeFormErr)
			if m := dnstest.Unpack(t, reply); m.Id != q.ID || !m.Response || (m.IsEdns0() != nil) != q.EDNS {
				t.Fatalf("error reply %x does not answer %x (EDNS %v)", reply, msg, q.EDNS)
			}
			if err == nil && q.QDCount != 1 {
				t.Fatalf("%x has %d questions and parsed", msg, q.QDCount)
			}
		}
		if err != nil {
			return
		}
		if q.End != q.NameEnd+4 || q.End > len(msg) || q.NameEnd-HeaderLen > maxNameLen {
			t.Fatalf("question ends at %d (name at %d) in a %d-octet message", q.End, q.NameEnd, len(msg))
		}
		if q.Len < q.End || q.Len > len(msg) {
			t.Fatalf("message ends at %d (question at %d) in %d octets", q.Len, q.End, len(msg))
		}
		var trimmed Query
		if err := ParseQuery(msg[:q.Len], &trimmed, &buf); err != nil || trimmed.Header != q.Header || trimmed.End != q.End || trimmed.EDNS != q.EDNS || trimmed.Len != q.Len {
			t.Fatalf("the message without what follows it (%d of %d octets) reads %+v, %v; want %+v", q.Len, len(msg), trimmed, err, q)
		}
		if len(q.Name) == 0 || q.Name[len(q.Name)-1] != '.' || bytes.ContainsFunc(q.Name, func(r rune) bool { return 'A' <= r && r <= 'Z' }) {
			t.Fatalf("name %q is not lower-case presentation form", q.Name)
		}
		if q.Plain && !bytes.Equal(AppendName(nil, string(q.Name)), AppendLower(nil, msg[HeaderLen:q.NameEnd])) {
			t.Fatalf("name %q does not spell % x", q.Name, msg[HeaderLen:q.NameEnd])
		}
		// Escaped or not, the name reads back (as miekg/dns reads
		// presentation form) as the one asked, and holds nothing but
		// printable ASCII.
		wire := make([]byte, maxNameLen)
		if n, err := dns.PackDomainName(string(q.Name), wire, 0, nil, false); err != nil || !bytes.Equal(wire[:n], AppendLower(nil, msg[HeaderLen:q.NameEnd])) {
			t.Fatalf("name %q reads back as % x (%v); want % x", q.Name, wire[:n], err, msg[HeaderLen:q.NameEnd])
		}
		if i := bytes.IndexFunc(q.Name, func(r rune) bool { return r <= ' ' || r >= 0x7f }); i >= 0 {
			t.Fatalf("name %q holds %#x", q.Name, q.Name[i])
		}
		if m := new(dns.Msg); m.Unpack(msg) == nil {
			if m.Id != q.ID || m.Opcode != q.Opcode() || m.Question[0].Qtype != q.Type || m.Question[0].Qclass != q.Class {
				t.Fatalf("miekg/dns reads %v; we read %+v", m, q)
			}
		}
		// A reply may spell the name in other cases (0x20): the same
		// question all the same.
		flipped := bytes.Clone(msg)
		for i := HeaderLen; i < q.NameEnd; i++ {
			if c := flipped[i] | 0x20; c >= 'a' && c <= 'z' {
				flipped[i] ^= 0x20
			}
		}
		if !SameQuestion(flipped, msg, q.Question) {
			t.Fatalf("%x with the name's case flipped is not the same question as %x", flipped, msg)
		}
		out := AppendTruncated(nil, msg, &q)
		if m := dnstest.Unpack(t, out); !m.Truncated || m.Id != q.ID || len(m.Question) != 1 || (m.IsEdns0() != nil) != q.EDNS {
			t.Fatalf("truncated reply %x does not answer %x", out, msg)
		}
	})
}

// FuzzScanReply feeds arbitrary upstream replies to the scanner a cache
// relies on: it must never panic, every TTL offset it returns must lie
// inside the message and past the header, so that ageing a cached copy can
// neither over-read nor touch anything but TTL fields, and whether the
// answer answers the question (the end of its CNAME chain holds the asked
// type: a cache keeps the reply for its TTLs or as no data) must agree
// with the same walk over what miekg/dns reads (answeredMiekg).
// Seeds: testdata/fuzz/FuzzScanReply.
func FuzzScanReply(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg)
	}
	f.Add(twoOPTReply(f))
	for _, msg := range hugeRecordReplies(f) {
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, err := ScanReply(msg)
		if err != nil {
			return
		}
		if m := new(dns.Msg); m.Unpack(msg) == nil && len(m.Question) == int(s.QDCount) && len(m.Answer) == int(s.ANCount) {
			if want := answeredMiekg(m); s.Answered != want {
				t.Fatalf("%x: Answered = %v, but miekg/dns reads %v, answered %v", msg, s.Answered, m, want)
			}
		}
		for _, o := range s.TTLOffsets {
			if int(o) < HeaderLen || int(o)+4 > len(msg) {
				t.Fatalf("TTL offset %d outside a %d-octet message", o, len(msg))
			}
		}
		aged := slices.Clone(msg)
		AgeTTLs(aged, s.TTLOffsets, 7)
		for _, o := range s.TTLOffsets {
			if readTTL(aged, int(o)) != readTTL(msg, int(o))-min(readTTL(msg, int(o)), 7) {
				t.Fatalf("TTL at %d aged from %d to %d", o, readTTL(msg, int(o)), readTTL(aged, int(o)))
			}
		}
		for _, o := range s.TTLOffsets {
			copy(aged[o:o+4], msg[o:o+4])
		}
		if !bytes.Equal(aged, msg) {
			t.Fatal("ageing changed bytes outside the TTL fields")
		}
	})
}

// FuzzPlanFit checks the cut the resolver applies to forwarded replies
// over a client's UDP buffer: it never panics, a reply it cuts is within
// the limit, with TC when it left out an answer or authority record and
// only then (or when the reply had it), and reads in miekg/dns when the
// whole did. Seeds: the replies FuzzScanReply
// starts from, and SRV replies with glue (srvReply).
func FuzzPlanFit(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg, uint16(512))
	}
	for _, signed := range []bool{false, true} {
		f.Add(srvReply(f, true, signed), uint16(512))
	}
	f.Add(twoOPTReply(f), uint16(512))
	for _, msg := range hugeRecordReplies(f) {
		f.Add(msg, uint16(1232))
	}
	f.Fuzz(func(t *testing.T, msg []byte, limit uint16) {
		fit, err := PlanFit(msg, int(limit))
		if err != nil {
			return
		}
		out := fit.Apply(slices.Clone(msg))
		if len(out) > int(limit) || len(out) < HeaderLen {
			t.Fatalf("cut to %d octets, limit %d", len(out), limit)
		}
		if err := new(dns.Msg).Unpack(out); err != nil && new(dns.Msg).Unpack(msg) == nil {
			t.Fatalf("%x cut to %d: %x, which miekg/dns does not read: %v", msg, limit, out, err)
		}
		was, cut := mustHeader(t, msg), mustHeader(t, out)
		answersCut := cut.ANCount < was.ANCount || cut.NSCount < was.NSCount
		if fit.Truncated != answersCut || cut.Flags&FlagTC != 0 != (answersCut || was.Flags&FlagTC != 0) {
			t.Fatalf("TC %v (planned %v), %d/%d of %d/%d answers and authority kept, TC before %v",
				cut.Flags&FlagTC != 0, fit.Truncated, cut.ANCount, cut.NSCount, was.ANCount, was.NSCount, was.Flags&FlagTC != 0)
		}
	})
}

func mustHeader(t *testing.T, msg []byte) Header {
	t.Helper()
	h, err := ReadHeader(msg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// FuzzRotateAnswers checks the rotation of forwarded answers served again:
// it never panics, keeps the length, and a reply miekg/dns reads reads the
// same after it, header and records, whatever compression pointers it holds.
// Seeds: the replies FuzzScanReply starts from and rotationSamples.
func FuzzRotateAnswers(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg, uint16(1))
	}
	for _, msg := range rotationSamples(f) {
		f.Add(msg, uint16(3))
	}
	f.Fuzz(func(t *testing.T, msg []byte, id uint16) {
		out := slices.Clone(msg)
		RotateAnswers(out, id)
		if len(out) != len(msg) {
			t.Fatalf("rotation changed the length from %d to %d", len(msg), len(out))
		}
		before := new(dns.Msg)
		if before.Unpack(msg) != nil {
			return
		}
		after := new(dns.Msg)
		if err := after.Unpack(out); err != nil {
			t.Fatalf("%x rotated by %d to %x, which does not parse: %v", msg, id, out, err)
		}
		if got, want := sections(after), sections(before); !slices.EqualFunc(got[:], want[:], slices.Equal) {
			t.Fatalf("%x rotated by %d reads\n%v\nwant\n%v", msg, id, after, before)
		}
	})
}
