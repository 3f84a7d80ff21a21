package resolver

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestFloodOfUniqueNamesLeavesOthersCached: the resolver tells the
// forwarder's cache which pod asks, so a pod asking more unique names than
// the cache holds, between two rounds of another pod's names, takes only its
// share: the other pod's names keep being answered from the cache.
func TestFloodOfUniqueNamesLeavesOthersCached(t *testing.T) {
	const capacity, working, rounds = 64, 8, 4
	const flood = 4 * capacity
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Answerer(func(q dns.Question, _ netip.AddrPort) []dns.RR {
		return []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: []byte{203, 0, 113, 7}}}
	}))
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}}, up.Addr, up.Addr, forward.WithCacheSize(capacity))
	asked := 0
	for range rounds {
		for i := range working {
			ls.ask(t, victimIP, "udp", fmt.Sprintf("v%d.example.", i))
		}
		for range flood {
			ls.ask(t, flooderIP, "udp", fmt.Sprintf("f%d.example.", asked))
			asked++
		}
	}
	for i := range working {
		if n := up.Queries(fmt.Sprintf("v%d.example.", i)); n != 1 {
			t.Errorf("the victim's v%d.example. went upstream %d times in %d rounds, want once", i, n, rounds)
		}
	}
	if entries, _ := ls.fwd.CacheUsage(); entries > capacity {
		t.Errorf("the cache holds %d entries, over its %d", entries, capacity)
	}
}
