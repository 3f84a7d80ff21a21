package resolver

import (
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// startTransferUpstream serves zone.example. transfers over TCP as an
// authoritative server does: two messages, the SOA opening the first and
// closing the second. It counts the queries it gets.
func startTransferUpstream(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	pc, ln := testenv.ListenPair(t)
	var asked atomic.Int64
	rrs := dnstest.RRs(t,
		"zone.example. 300 IN SOA ns.zone.example. hostmaster.zone.example. 7 7200 1800 86400 300",
		"a.zone.example. 300 IN A 198.51.100.1",
		"b.zone.example. 300 IN A 198.51.100.2",
	)
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		asked.Add(1)
		ch := make(chan *dns.Envelope, 2)
		ch <- &dns.Envelope{RR: rrs[:2]}
		ch <- &dns.Envelope{RR: []dns.RR{rrs[2], rrs[0]}}
		close(ch)
		_ = new(dns.Transfer).Out(w, req, ch)
		w.Hijack() // Out closes nothing: the server must not reply again
		_ = w.Close()
	})
	dnstest.StartServers(t, &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: ln, Handler: handler})
	return netip.MustParseAddrPort(pc.LocalAddr().String()), &asked
}

// TestZoneTransfersOfForwardedNamesRefused: ztdns relays one message per
// query, and a transfer (AXFR, IXFR) is many: a pod asking one of a
// forwarded name got the first message only and waited for the closing SOA,
// and that message was cached and served to the next pod that asked (an
// IXFR with another serial too). Transfers of forwarded names are refused,
// as those of the table's names are, and never reach the upstream.
func TestZoneTransfersOfForwardedNamesRefused(t *testing.T) {
	up, asked := startTransferUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}}, up, up)
	for _, proto := range []string{"tcp", "udp"} {
		for _, qtype := range []uint16{dns.TypeAXFR, dns.TypeIXFR} {
			if proto == "udp" && qtype == dns.TypeAXFR {
				continue // TCP only (RFC 5936 4.2)
			}
			for i, pod := range []netip.Addr{flooderIP, victimIP} {
				m := new(dns.Msg)
				switch qtype {
				case dns.TypeAXFR:
					m.SetAxfr("zone.example.")
				case dns.TypeIXFR:
					m.SetIxfr("zone.example.", uint32(3+i), "ns.zone.example.", "hostmaster.zone.example.")
				}
				r, err := ls.tryExchange(pod, proto, m)
				if err != nil {
					t.Fatalf("%s %s from pod %d: %v", proto, dns.TypeToString[qtype], i, err)
				}
				if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 || len(r.Question) != 1 || r.Question[0] != m.Question[0] {
					t.Errorf("%s %s from pod %d: %s with %d records, question %v; want REFUSED, no records, the question",
						proto, dns.TypeToString[qtype], i, dns.RcodeToString[r.Rcode], len(r.Answer), r.Question)
				}
			}
		}
	}
	// The table's names are refused the same way.
	m := new(dns.Msg)
	m.SetAxfr(tableName)
	if r, err := ls.tryExchange(victimIP, "tcp", m); err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR of a table name: %v %v, want REFUSED", r, err)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the upstream was asked %d transfers, want none", n)
	}
}
