//go:build linux

package dnstest

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// exchange asks q over network from a fresh socket and returns the reply
// and the socket's own address.
func exchange(t *testing.T, network string, server netip.AddrPort, q *dns.Msg) (*dns.Msg, netip.AddrPort) {
	t.Helper()
	co, err := dns.DialTimeout(network, server.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := co.WriteMsg(q); err != nil {
		t.Fatal(err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	return r, netip.MustParseAddrPort(co.LocalAddr().String())
}

func TestZoneAndMarkerReplies(t *testing.T) {
	t.Parallel()
	zone := Start(t, "127.0.0.1:0", ZoneOf(t, "known.test. 300 IN A 198.51.100.7"))
	marker := Start(t, "127.0.0.1:0", Marker(netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8::9")))

	tests := []struct {
		name       string
		srv        *Server
		qname      string
		qtype      uint16
		edns       bool
		wantRcode  int
		wantAnswer []string // RR strings
		wantSOA    bool
		wantEDNS   bool
	}{
		{name: "zone: known name", srv: zone, qname: "Known.Test.", qtype: dns.TypeA,
			wantRcode: dns.RcodeSuccess, wantAnswer: []string{"Known.Test.\t300\tIN\tA\t198.51.100.7"}},
		{name: "zone: known name, other type (NODATA)", srv: zone, qname: "known.test.", qtype: dns.TypeAAAA,
			wantRcode: dns.RcodeSuccess, wantSOA: true},
		{name: "zone: unknown name (NXDOMAIN)", srv: zone, qname: "unknown.test.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantSOA: true},
		{name: "zone: EDNS mirrored", srv: zone, qname: "known.test.", qtype: dns.TypeA, edns: true,
			wantRcode: dns.RcodeSuccess, wantAnswer: []string{"known.test.\t300\tIN\tA\t198.51.100.7"}, wantEDNS: true},
		{name: "marker: A of any name", srv: marker, qname: "any.example.", qtype: dns.TypeA,
			wantRcode: dns.RcodeSuccess, wantAnswer: []string{"any.example.\t0\tIN\tA\t203.0.113.9"}},
		{name: "marker: AAAA", srv: marker, qname: "any.example.", qtype: dns.TypeAAAA,
			wantRcode: dns.RcodeSuccess, wantAnswer: []string{"any.example.\t0\tIN\tAAAA\t2001:db8::9"}},
		{name: "marker: other types empty", srv: marker, qname: "any.example.", qtype: dns.TypeTXT,
			wantRcode: dns.RcodeSuccess},
	}
	for _, tc := range tests {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tc.name+" over "+network, func(t *testing.T) {
				q := new(dns.Msg).SetQuestion(tc.qname, tc.qtype)
				if tc.edns {
					q.SetEdns0(1232, false)
				}
				r, _ := exchange(t, network, tc.srv.Addr, q)
				var answer []string
				for _, rr := range r.Answer {
					answer = append(answer, rr.String())
				}
				if r.Rcode != tc.wantRcode || !r.Authoritative || !slices.Equal(answer, tc.wantAnswer) {
					t.Errorf("reply rcode %s, authoritative %v, answer %q; want %s, true, %q",
						dns.RcodeToString[r.Rcode], r.Authoritative, answer, dns.RcodeToString[tc.wantRcode], tc.wantAnswer)
				}
				if gotSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA; gotSOA != tc.wantSOA || (!tc.wantSOA && len(r.Ns) > 0) {
					t.Errorf("authority %v, want an SOA: %v", r.Ns, tc.wantSOA)
				}
				if gotEDNS := r.IsEdns0() != nil; gotEDNS != tc.wantEDNS {
					t.Errorf("EDNS in the reply: %v, want %v", gotEDNS, tc.wantEDNS)
				}
			})
		}
	}
}

// TestRecordsQueries: a server on several addresses records each question
// with the protocol, the address it arrived on, who sent it and whether it
// came with an OPT record.
func TestRecordsQueries(t *testing.T) {
	t.Parallel()
	srv := StartAt(t, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("127.0.0.2:0")}, Zone{})
	if len(srv.Addrs) != 2 || srv.Addr != srv.Addrs[0] {
		t.Fatalf("Addr %s, Addrs %v; want two addresses, the first as Addr", srv.Addr, srv.Addrs)
	}
	var want []Query
	for _, tc := range []struct {
		network string
		server  netip.AddrPort
		name    string
		edns    bool
	}{
		{"udp", srv.Addrs[0], "One.Test.", false},
		{"tcp", srv.Addrs[0], "two.test.", true},
		{"udp", srv.Addrs[1], "two.test.", true},
		{"tcp", srv.Addrs[1], "one.test", false},
	} {
		q := new(dns.Msg).SetQuestion(dns.Fqdn(tc.name), dns.TypeAAAA)
		if tc.edns {
			q.SetEdns0(1232, false)
		}
		_, from := exchange(t, tc.network, tc.server, q)
		want = append(want, Query{Net: tc.network, Local: tc.server, Remote: from, Name: dns.CanonicalName(tc.name), Type: dns.TypeAAAA, EDNS: tc.edns})
	}
	if got := srv.Received(); !slices.Equal(got, want) {
		t.Errorf("Received() = %+v\nwant %+v", got, want)
	}
	if got, want := srv.ReceivedFor("ONE.test"), []Query{want[0], want[3]}; !slices.Equal(got, want) {
		t.Errorf("ReceivedFor(ONE.test) = %+v, want %+v", got, want)
	}
	for name, n := range map[string]int{"one.test": 2, "two.test.": 2, "three.test": 0} {
		if got := srv.Queries(name); got != n {
			t.Errorf("Queries(%s) = %d, want %d", name, got, n)
		}
	}
}
