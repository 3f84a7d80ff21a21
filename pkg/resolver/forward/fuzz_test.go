package forward

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/dnswire"
)

// FuzzKeyAndServfail feeds arbitrary client queries to what Forward builds
// from a parsed one before asking anybody: the cache key, the query a
// shared exchange asks, and the SERVFAIL.
// The parser itself is fuzzed in pkg/dnswire.
func FuzzKeyAndServfail(f *testing.F) {
	f.Add(query(f, "www.example.com.", dns.TypeA))
	f.Add(query(f, "WwW.ExAmple.COM.", dns.TypeAAAA, withEDNS(true), withCD))
	f.Add(query(f, "example.", dns.TypeSOA, withOpcode(dns.OpcodeNotify)))
	ups := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("[::1]:53")}
	f.Fuzz(func(t *testing.T, req []byte) {
		var r dnswire.Query
		if err := dnswire.ParseQuery(req, &r, nil); err != nil {
			return
		}
		key := appendKey(nil, req, r, ups)
		if r.Opcode() == dnswire.OpcodeQuery && shareable(&r) {
			// What a shared exchange asks is a query of the same key.
			sent := appendUpstreamQuery(nil, req, &r)
			var s dnswire.Query
			if err := dnswire.ParseQuery(sent, &s, nil); err != nil {
				t.Fatalf("the query for the key of %x does not parse: %v", req, err)
			}
			if !shareable(&s) || s.End != r.End || s.Len != len(sent) || !bytes.Equal(appendKey(nil, sent, s, ups), key) {
				t.Fatalf("the query %x for the key of %x has another key", sent, req)
			}
		}
		sf := servfail(req, r)
		rs, err := dnswire.ScanReply(sf)
		if err != nil {
			t.Fatalf("our SERVFAIL does not scan: %v", err)
		}
		if rs.Rcode() != dnswire.RcodeServFail || rs.ID != r.ID || !bytes.Equal(sf[dnswire.HeaderLen:r.End], req[dnswire.HeaderLen:r.End]) {
			t.Fatalf("SERVFAIL %x does not answer request %x", sf, req)
		}
		if m := dnstest.Unpack(t, sf); m.Rcode != dns.RcodeServerFailure || (m.IsEdns0() != nil) != r.EDNS {
			t.Fatalf("SERVFAIL %v for request %x", m, req)
		}
	})
}
