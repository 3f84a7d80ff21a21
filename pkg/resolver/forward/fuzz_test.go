package forward

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzScanReply feeds arbitrary upstream replies to the scanner the cache
// relies on: it must never panic, and every TTL offset it returns must lie
// inside the message and past the header, so that ageing a cached copy can
// neither over-read nor touch anything but TTL fields.
// Seeds: testdata/fuzz/FuzzScanReply.
func FuzzScanReply(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, err := scanReply(msg)
		if err != nil {
			return
		}
		for _, o := range s.ttlOffsets {
			if int(o) < headerLen || int(o)+4 > len(msg) {
				t.Fatalf("TTL offset %d outside a %d-octet message", o, len(msg))
			}
		}
		_, _ = cacheLifetime(s, time.Hour)
		aged := slices.Clone(msg)
		ageTTLs(aged, s.ttlOffsets, 7)
		if len(aged) != len(msg) {
			t.Fatal("ageing changed the length")
		}
		for _, o := range s.ttlOffsets {
			copy(aged[o:o+4], msg[o:o+4])
		}
		if !bytes.Equal(aged, msg) {
			t.Fatal("ageing changed bytes outside the TTL fields")
		}
	})
}

// FuzzParseRequest feeds arbitrary client queries to the request parser and
// the code that builds a key and a SERVFAIL from what it found.
// Seeds: testdata/fuzz/FuzzParseRequest.
func FuzzParseRequest(f *testing.F) {
	f.Add(query(f, "www.example.com.", dns.TypeA))
	f.Add(query(f, "WwW.ExAmple.COM.", dns.TypeAAAA, withEDNS(true), withCD))
	f.Add(query(f, "example.", dns.TypeSOA, withOpcode(dns.OpcodeNotify)))
	ups := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("[::1]:53")}
	f.Fuzz(func(t *testing.T, req []byte) {
		r, err := parseRequest(req)
		if err != nil {
			return
		}
		if r.q.end > len(req) || r.q.nameEnd-headerLen > maxNameLen {
			t.Fatalf("question ends at %d (name %d octets) in a %d-octet message", r.q.end, r.q.nameEnd-headerLen, len(req))
		}
		_ = appendKey(nil, req, r, ups)
		sf := servfail(req, r)
		rs, err := scanReply(sf)
		if err != nil {
			t.Fatalf("our SERVFAIL does not scan: %v", err)
		}
		if rs.hdr.rcode() != rcodeServFail || rs.hdr.id != r.hdr.id || !bytes.Equal(sf[headerLen:r.q.end], req[headerLen:r.q.end]) {
			t.Fatalf("SERVFAIL %x does not answer request %x", sf, req)
		}
	})
}
