package forward

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// answerMany answers every A query with n records, TTL 3700 (0x0E74: aged
// by less than 64 s, no octet of it reads as a pointer), addresses whose
// octets are all below 192 (none does either), so that whether the set
// moves is up to the rest (the ID the query went out with, the OPT
// record's UDP size), as the whole reply's; every TXT query with 100
// records of 600 octets of letters and digits (62 KB); over UDP, an empty
// reply with TC, as a nameserver does when the answer does not fit.
func answerMany(n int) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		if w.LocalAddr().Network() == "udp" {
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
		for i := range n {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3700},
				A:   net.IPv4(10, byte(i/150), byte(i%150), 1),
			})
		}
		if req.Question[0].Qtype == dns.TypeTXT {
			m.Answer = hugeTXT(req.Question[0].Name, 3700)
		}
		if o := req.IsEdns0(); o != nil {
			m.SetEdns0(1232, o.Do())
		}
		_ = w.WriteMsg(m)
	}
}

// hugeTXT is 100 TXT records of owner, of 600 octets of data each (three
// strings), in letters and digits: no two octets read as a pointer.
func hugeTXT(owner string, ttl uint32) []dns.RR {
	rrs := make([]dns.RR, 100)
	for i := range rrs {
		rrs[i] = &dns.TXT{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
			Txt: []string{strings.Repeat("a", 255), strings.Repeat("b", 255), fmt.Sprintf("%087d", i)}}
	}
	return rrs
}

// TestAppendCachedFirstIsTheFirstRecordsOfAppendCached: of a cached reply
// of 2,000 addresses (54 KB, from TCP), or of 100 TXT records of 600
// octets (62 KB), AppendCachedFirst appends what FirstRecordsIn reads of
// AppendCached's, byte for byte, for every ID and age: only the records a
// client's buffer can take, by their number and their octets, are copied
// and aged. A hit allocates under 8 KiB (before, each copied the whole
// reply; and for the TXT records, before they were bounded in octets, the
// first 111: all 100).
func TestAppendCachedFirstIsTheFirstRecordsOfAppendCached(t *testing.T) {
	clock := newFakeClock()
	u := startUpstream(t, answerMany(2000))
	f := newForwarder(t, WithNow(clock.Now))
	ups := []netip.AddrPort{u.addr}
	src := new(quota.Source)
	ctx := quota.WithSource(context.Background(), src)
	// A cut to 1,232 octets keeps at most 110 records, of 1,220 octets
	// (the resolver's firstRead).
	const n, room = 111, 1232 - dnswire.HeaderLen
	for _, qtype := range []uint16{dns.TypeA, dns.TypeTXT} {
		for _, edns := range []bool{false, true} {
			var opts []func(*dns.Msg)
			if edns {
				opts = append(opts, withEDNS(false))
			}
			name := fmt.Sprintf("big%d.example.", len(opts)) // short: 2,000 records fit in 64 KiB
			if _, from, err := f.ForwardFrom(ctx, query(t, name, qtype, opts...), true, ups); err != nil || from.Cached || from.Failure != "" {
				t.Fatalf("filling the cache over TCP: %v, %+v", err, from)
			}
			for _, advance := range []time.Duration{0, 50 * time.Second} {
				clock.Advance(advance)
				for id := range uint16(6) {
					req := query(t, name, qtype, append(slices.Clone(opts), withID(id*1000+1))...)
					whole, _, ok := f.AppendCached(nil, req, ups, src)
					if !ok || len(whole) < 50<<10 {
						t.Fatalf("AppendCached: %v, %d bytes; want the whole reply", ok, len(whole))
					}
					want, _, err := dnswire.FirstRecordsIn(whole, n, room)
					if err != nil {
						t.Fatal(err)
					}
					prefix := []byte("batch")
					got, from, ok := f.AppendCachedFirst(slices.Clone(prefix), req, ups, src, n, room)
					if !ok || !from.Cached || !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
						t.Fatalf("%s, EDNS %v, ID %d, %v later: AppendCachedFirst gave %v, %+v,\n%x\nwant\n%x", dns.TypeToString[qtype], edns, id*1000+1, advance, ok, from, got, want)
					}
				}
			}
		}
	}

	dst := make([]byte, 0, 4096+512) // as the UDP loop's batch buffer
	for _, qtype := range []uint16{dns.TypeA, dns.TypeTXT} {
		req := query(t, "big0.example.", qtype)
		per := testenv.BytesPerCall(200, func() {
			if _, _, ok := f.AppendCachedFirst(dst, req, ups, src, n, room); !ok {
				t.Fatal("not a hit")
			}
		})
		if per > 8<<10 {
			t.Errorf("%s: %d bytes allocated a hit on a reply of over 50 KB, want under 8 KiB", dns.TypeToString[qtype], per)
		}
	}
}
