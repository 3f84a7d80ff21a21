package resolver

import (
	"fmt"
	"net/netip"
	"strings"
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

// TestOnePodsEDNSOptionsReachNoOther: two pods with the same nameserver
// share the forward cache. One asks with a client subnet and a cookie of
// its own; the other then asks the same name plainly: it gets the answer
// for no subnet, and an OPT record with neither the first pod's subnet
// nor its cookie. The upstream never sees either: what may be shared is
// asked as its cache key says.
func TestOnePodsEDNSOptionsReachNoOther(t *testing.T) {
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ClientSubnet{})
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}}, up.Addr, up.Addr)
	for _, proto := range []string{"udp", "tcp"} {
		name := proto + ".geo.example."
		a := new(dns.Msg)
		a.SetQuestion(name, dns.TypeA)
		a.SetEdns0(4096, false)
		a.IsEdns0().Option = []dns.EDNS0{
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{203, 0, 113, 0}},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "a1a1a1a1a1a1a1a1"},
		}
		if _, err := ls.tryExchange(flooderIP, proto, a); err != nil {
			t.Fatal(err)
		}
		b := new(dns.Msg)
		b.SetQuestion(name, dns.TypeA)
		b.SetEdns0(1232, false)
		r, err := ls.tryExchange(victimIP, proto, b)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), "198.51.100.1") {
			t.Errorf("%s: the second pod got %s %v, want the answer for no subnet, 198.51.100.1", proto, dns.RcodeToString[r.Rcode], r.Answer)
		}
		if o := r.IsEdns0(); o == nil || len(o.Option) != 0 {
			t.Errorf("%s: the second pod, which sent no options, got OPT %v", proto, o)
		}
		if n := up.Queries(name); n != 1 {
			t.Errorf("%s: the upstream was asked %d times, want once: the second pod's answer is cached", proto, n)
		}
	}
}
