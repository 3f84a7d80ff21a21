package dnstest

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// Zone is what an authoritative server knows: records by lower-case owner
// name. Names not in it get NXDOMAIN with the zone's SOA, as a real
// authoritative server answers, so negative answers can be cached.
type Zone map[string][]dns.RR

// RRs parses records in zone-file syntax, failing the test on a typo.
func RRs(tb testing.TB, lines ...string) []dns.RR {
	tb.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			tb.Fatalf("bad test record %q: %v", l, err)
		}
		out = append(out, rr)
	}
	return out
}

// ZoneOf builds a Zone from records in zone-file syntax.
func ZoneOf(tb testing.TB, lines ...string) Zone {
	tb.Helper()
	z := Zone{}
	for _, rr := range RRs(tb, lines...) {
		name := strings.ToLower(rr.Header().Name)
		z[name] = append(z[name], rr)
	}
	return z
}

// SOA is the authority record negative answers carry (minimum 60 s).
var SOA = func() dns.RR {
	rr, _ := dns.NewRR("test. 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60")
	return rr
}()

// Reply is the zone's reply to req, wherever it arrived: the records of
// the asked type, NODATA for a known name without them, NXDOMAIN otherwise.
func (z Zone) Reply(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	rrs, ok := z[strings.ToLower(q.Name)]
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{SOA}
		return m
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer = append(m.Answer, c)
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{SOA}
	}
	return m
}

// Reverse returns the in-addr.arpa or ip6.arpa name of an address, which
// must parse.
func Reverse(addr string) string {
	name, err := dns.ReverseAddr(addr)
	if err != nil {
		panic(err)
	}
	return name
}
