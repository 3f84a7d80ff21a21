package forward

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// answerMany answers every A query with n records, TTL 3700 (0x0E74: aged
// by less than 64 s, no octet of it reads as a pointer), addresses whose
// octets are all below 192 (none does either), so that whether the set
// moves is up to the rest (the ID the query went out with, the OPT
// record's UDP size), as the whole reply's; over UDP, an empty reply with
// TC, as a nameserver does when the answer does not fit.
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
		if o := req.IsEdns0(); o != nil {
			m.SetEdns0(1232, o.Do())
		}
		_ = w.WriteMsg(m)
	}
}

// TestAppendCachedFirstIsTheFirstRecordsOfAppendCached: of a cached reply
// of 2,000 records (54 KB, from TCP), AppendCachedFirst appends what
// FirstRecords reads of AppendCached's, byte for byte, for every ID and
// age: only the records a client's buffer can take are copied and aged.
// A hit allocates under 8 KiB (before, each copied the whole reply).
func TestAppendCachedFirstIsTheFirstRecordsOfAppendCached(t *testing.T) {
	clock := newFakeClock()
	u := startUpstream(t, answerMany(2000))
	f := newForwarder(t, WithNow(clock.Now))
	ups := []netip.AddrPort{u.addr}
	src := new(quota.Source)
	ctx := quota.WithSource(context.Background(), src)
	const n = 111 // a cut to 1,232 octets keeps at most 110 (the resolver's mostFit)
	for _, edns := range []bool{false, true} {
		var opts []func(*dns.Msg)
		if edns {
			opts = append(opts, withEDNS(false))
		}
		name := fmt.Sprintf("big%d.example.", len(opts)) // short: 2,000 records fit in 64 KiB
		if _, from, err := f.ForwardFrom(ctx, query(t, name, dns.TypeA, opts...), true, ups); err != nil || from.Cached || from.Failure != "" {
			t.Fatalf("filling the cache over TCP: %v, %+v", err, from)
		}
		for _, advance := range []time.Duration{0, 50 * time.Second} {
			clock.Advance(advance)
			for id := range uint16(6) {
				req := query(t, name, dns.TypeA, append(slices.Clone(opts), withID(id*1000+1))...)
				whole, _, ok := f.AppendCached(nil, req, ups, src)
				if !ok || len(whole) < 50<<10 {
					t.Fatalf("AppendCached: %v, %d bytes; want the whole reply", ok, len(whole))
				}
				want, _, err := dnswire.FirstRecords(whole, n)
				if err != nil {
					t.Fatal(err)
				}
				prefix := []byte("batch")
				got, from, ok := f.AppendCachedFirst(slices.Clone(prefix), req, ups, src, n)
				if !ok || !from.Cached || !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
					t.Fatalf("EDNS %v, ID %d, %v later: AppendCachedFirst gave %v, %+v,\n%x\nwant\n%x", edns, id*1000+1, advance, ok, from, got, want)
				}
			}
		}
	}

	req := query(t, "big0.example.", dns.TypeA)
	dst := make([]byte, 0, 4096+512) // as the UDP loop's batch buffer
	// The fewest of three rounds: the counts are the process's, and
	// another test's goroutines may still be ending.
	const hits = 200
	least := uint64(1 << 62)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range hits {
			if _, _, ok := f.AppendCachedFirst(dst, req, ups, src, n); !ok {
				t.Fatal("not a hit")
			}
		}
		runtime.ReadMemStats(&after)
		least = min(least, (after.TotalAlloc-before.TotalAlloc)/hits)
	}
	if least > 8<<10 {
		t.Errorf("%d bytes allocated a hit on a reply of 54 KB, want under 8 KiB", least)
	}
}
