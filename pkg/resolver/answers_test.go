package resolver

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// TestAnswerOverAMessage asks, over TCP and UDP, for answers of a headless
// Service of 5,000 endpoints behind a named port: its A and SRV answers
// are more than a TCP message holds. Over TCP the client gets as many
// records as fit in 65,535 bytes, with TC, as from CoreDNS (which
// truncates every reply to its transport's size); over UDP as many as fit
// in its buffer, with TC, as from CoreDNS and Istio's proxy (before: none,
// and a client that does not retry over TCP, musl's before 1.2.4, got no
// address). Each counts in ztdns_resolver_truncated_total under its proto.
func TestAnswerOverAMessage(t *testing.T) {
	addr := bigHeadlessServer(t, Options{})

	for _, q := range []struct {
		name                string
		qtype               uint16
		records, udpRecords int // as many as fit
	}{
		// 12 header, 30 question, 11 OPT; 16 an A record.
		{"web.ns.svc.cluster.local.", dns.TypeA, (maxTCPMessage - 12 - 30 - 11) / 16, (4096 - 12 - 30 - 11) / 16},
		// 57 to 59 bytes an SRV record, by the digits of its target.
		{"_http._tcp.web.ns.svc.cluster.local.", dns.TypeSRV, 0, 0},
	} {
		query := new(dns.Msg)
		query.SetQuestion(q.name, q.qtype)
		query.SetEdns0(4096, false)
		wire, err := query.Pack()
		if err != nil {
			t.Fatal(err)
		}
		truncated := truncatedCounts()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := dnstest.WriteTCP(c, wire); err != nil {
			t.Fatal(err)
		}
		reply, err := dnstest.ReadTCP(c)
		c.Close()
		if err != nil {
			t.Fatalf("TCP %s %s: no reply: %v", q.name, dns.TypeToString[q.qtype], err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(reply); err != nil {
			t.Fatal(err)
		}
		switch {
		case !m.Truncated || m.Rcode != dns.RcodeSuccess:
			t.Errorf("TCP %s %s: TC %v, %s; want TC, NOERROR", q.name, dns.TypeToString[q.qtype], m.Truncated, dns.RcodeToString[m.Rcode])
		case q.records > 0 && len(m.Answer) != q.records:
			t.Errorf("TCP %s %s: %d records in %d bytes, want %d", q.name, dns.TypeToString[q.qtype], len(m.Answer), len(reply), q.records)
		case len(m.Answer) == 0 || len(reply) < maxTCPMessage-60 || m.IsEdns0() == nil:
			t.Errorf("TCP %s %s: %d records in %d bytes (OPT %v), want as many as fit in %d", q.name, dns.TypeToString[q.qtype], len(m.Answer), len(reply), m.IsEdns0() != nil, maxTCPMessage)
		}

		m, size := exchangeUDP(t, query, addr)
		switch {
		case !m.Truncated || m.Rcode != dns.RcodeSuccess || size > 4096:
			t.Errorf("UDP %s %s: TC %v, %s, %d bytes; want TC, NOERROR, within 4,096 bytes", q.name, dns.TypeToString[q.qtype], m.Truncated, dns.RcodeToString[m.Rcode], size)
		case q.udpRecords > 0 && len(m.Answer) != q.udpRecords:
			t.Errorf("UDP %s %s: %d records in %d bytes, want %d", q.name, dns.TypeToString[q.qtype], len(m.Answer), size, q.udpRecords)
		case len(m.Answer) == 0 || size < 4096-60 || m.IsEdns0() == nil:
			t.Errorf("UDP %s %s: %d records in %d bytes (OPT %v), want as many as fit in 4,096", q.name, dns.TypeToString[q.qtype], len(m.Answer), size, m.IsEdns0() != nil)
		}
		if got := truncatedCounts().minus(truncated); got != (protoCounts{udp: 1, tcp: 1}) {
			t.Errorf("%s %s: ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 1 and 1", q.name, dns.TypeToString[q.qtype], got.udp, got.tcp)
		}
	}
	// Without EDNS, 512 bytes: the 29 addresses that fit, as a stub
	// without TCP fallback reads them.
	query := new(dns.Msg)
	query.SetQuestion("web.ns.svc.cluster.local.", dns.TypeA)
	if m, size := exchangeUDP(t, query, addr); !m.Truncated || len(m.Answer) != (512-12-30)/16 || size > 512 {
		t.Errorf("UDP without EDNS: TC %v, %d records in %d bytes; want TC and %d", m.Truncated, len(m.Answer), size, (512-12-30)/16)
	}
}

// TestTruncatedAnswerRotates: a headless Service of 100 endpoints asked
// over UDP without EDNS gets the 29 addresses that fit in 512 bytes, and
// 20 queries do not all get the same 29: each starts where its ID rotates
// the set, as a whole answer does. Before: every one started at the first
// address.
func TestTruncatedAnswerRotates(t *testing.T) {
	addr := headlessServer(t, Options{}, 100)
	firsts := map[string]bool{}
	for id := range 20 {
		query := new(dns.Msg)
		query.SetQuestion("web.ns.svc.cluster.local.", dns.TypeA)
		query.Id = uint16(1000 + id)
		m, size := exchangeUDP(t, query, addr)
		if !m.Truncated || len(m.Answer) != (512-12-30)/16 || size > 512 {
			t.Fatalf("ID %d: TC %v, %d records in %d bytes; want TC and %d", query.Id, m.Truncated, len(m.Answer), size, (512-12-30)/16)
		}
		firsts[m.Answer[0].(*dns.A).A.String()] = true
	}
	if len(firsts) < 10 {
		t.Errorf("20 queries got %d distinct first addresses, want the set rotated (at least 10)", len(firsts))
	}
}

// TestSRVGlueLeftOutSetsNoTC: a headless Service of 8 endpoints asked for
// SRV over UDP without EDNS: its 8 records fit in 512 bytes, its targets'
// addresses (the additional section) do not all; the reply has them all,
// the addresses that fit, and no TC, so that the client keeps the answer
// rather than asking again over TCP (RFC 2181 9), where CoreDNS sets TC
// (miekg's Msg.Truncate, for any record left out). It is not counted
// truncated. Over TCP every address is there.
func TestSRVGlueLeftOutSetsNoTC(t *testing.T) {
	addr := headlessServer(t, Options{}, 8)
	query := new(dns.Msg)
	query.SetQuestion("_http._tcp.web.ns.svc.cluster.local.", dns.TypeSRV)
	truncated := truncatedCounts()
	m, size := exchangeUDP(t, query, addr)
	if m.Rcode != dns.RcodeSuccess || m.Truncated || len(m.Answer) != 8 || len(m.Extra) == 0 || len(m.Extra) >= 8 || size > 512 {
		t.Errorf("UDP: %s, TC %v, %d answers, %d additional in %d bytes; want NOERROR, no TC, all 8 answers and the addresses that fit in 512",
			dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), len(m.Extra), size)
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0", got.udp, got.tcp)
	}
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	m, _, err := c.Exchange(query, addr)
	if err != nil {
		t.Fatal(err)
	}
	if m.Truncated || len(m.Answer) != 8 || len(m.Extra) != 8 {
		t.Errorf("TCP: TC %v, %d answers, %d additional; want all 8 of each", m.Truncated, len(m.Answer), len(m.Extra))
	}
}

// exchangeUDP sends query to addr over UDP and returns the reply and its
// size.
func exchangeUDP(t *testing.T, query *dns.Msg, addr string) (*dns.Msg, int) {
	t.Helper()
	wire, err := query.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("UDP %s: no reply: %v", query.Question[0].Name, err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return m, n
}

// protoCounts are a counter's values over UDP and TCP.
type protoCounts struct{ udp, tcp float64 }

func (a protoCounts) minus(b protoCounts) protoCounts {
	return protoCounts{a.udp - b.udp, a.tcp - b.tcp}
}

// truncatedCounts reads ztdns_resolver_truncated_total.
func truncatedCounts() protoCounts {
	return protoCounts{testutil.ToFloat64(metricTruncated[0]), testutil.ToFloat64(metricTruncated[1])}
}

// bigHeadlessServer serves, on a loopback port, a table with a headless
// Service web.ns of 5,000 ready endpoints behind the named port http.
func bigHeadlessServer(t *testing.T, opts Options) string {
	t.Helper()
	return headlessServer(t, opts, 5000)
}

// headlessServer is bigHeadlessServer with n endpoints.
func headlessServer(t *testing.T, opts Options, n int) string {
	t.Helper()
	s := New(opts)
	t.Cleanup(func() { s.Close() })
	s.SetTable(headlessTable(t, n))
	udp, tcp := listenPair(t, "127.0.0.1:0")
	go s.ServeUDP(udp)
	go s.ServeTCP(tcp)
	return udp.LocalAddr().String()
}

// headlessTable is a table with a headless Service web.ns of n ready
// endpoints behind the named port http.
func headlessTable(t *testing.T, n int) *table.Table {
	t.Helper()
	es := model.EndpointSlice{Namespace: "ns", Name: "web-a", ServiceName: "web",
		Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 8080}}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)})
		es.Endpoints = append(es.Endpoints, model.Endpoint{Addresses: []netip.Addr{a}, Ready: true})
	}
	tbl, warnings := table.Build(&model.Snapshot{
		Services:       []model.Service{{Namespace: "ns", Name: "web", Headless: true}},
		EndpointSlices: []model.EndpointSlice{es},
	}, table.Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	return tbl
}

// TestSlowAnswerOverAMessage asks over TCP for a search-list expansion of
// the same Service, which the slow path answers (a CNAME, then the
// Service's addresses): the records that fit, with TC, as the fast path.
// The pod may hold MinPodInflightBytes of replies, the least
// --pod-inflight-bytes takes: room for the reply the client gets, not for
// the answer before it is cut. Before: the reply was cut as it was
// written, after its bytes were taken whole, and the client got SERVFAIL.
// It counts in ztdns_resolver_truncated_total{proto="tcp"} (before: not
// at all).
func TestSlowAnswerOverAMessage(t *testing.T) {
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "client", IPs: []netip.Addr{victimIP}}})
	b := quota.NewBudget(DefaultInflightBytes, MinPodInflightBytes)
	addr := bigHeadlessServer(t, Options{Pods: pods, Budget: b})
	query := new(dns.Msg)
	query.SetQuestion("web.ns.default.svc.cluster.local.", dns.TypeA)
	c := dnsClientFrom(victimIP, "tcp")
	truncated := truncatedCounts()
	m, _, err := c.Exchange(query, addr)
	if err != nil {
		t.Fatal(err)
	}
	m.Compress = true
	wire, _ := m.Pack()
	// 16 bytes an A record (its owner compressed): some 4,090 fit.
	if m.Rcode != dns.RcodeSuccess || !m.Truncated || len(m.Answer) < 4000 || m.Answer[0].Header().Rrtype != dns.TypeCNAME || len(wire) > maxTCPMessage {
		t.Errorf("%s, TC %v, %d records in %d bytes; want NOERROR, TC, a CNAME and as many addresses as fit", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), len(wire))
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{tcp: 1}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0 and 1", got.udp, got.tcp)
	}
	// Over UDP without EDNS: the CNAME and the addresses that fit in 512
	// bytes, with TC (before: an empty reply).
	uc := dnsClientFrom(victimIP, "udp")
	m, _, err = uc.Exchange(query, addr)
	if err != nil {
		t.Fatal(err)
	}
	m.Compress = true
	wire, _ = m.Pack()
	if m.Rcode != dns.RcodeSuccess || !m.Truncated || len(m.Answer) < 20 || m.Answer[0].Header().Rrtype != dns.TypeCNAME || len(wire) > 512 {
		t.Errorf("UDP: %s, TC %v, %d records in %d bytes; want NOERROR, TC, a CNAME and as many addresses as fit in 512", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), len(wire))
	}
}

// TestSlowAnswerCompressed: a slow-path answer that fits a TCP message
// uncompressed (a search-list expansion: a CNAME and 1,000 addresses) goes
// out compressed, each address's owner a pointer: some 16 bytes an
// address, not 40 (before: miekg's Truncate, finding it fits, turned
// compression off).
func TestSlowAnswerCompressed(t *testing.T) {
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "client", IPs: []netip.Addr{victimIP}}})
	addr := headlessServer(t, Options{Pods: pods}, 1000)
	query := new(dns.Msg)
	query.SetQuestion("web.ns.default.svc.cluster.local.", dns.TypeA)
	wire, err := query.Pack()
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: victimIP.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := dnstest.WriteTCP(c, wire); err != nil {
		t.Fatal(err)
	}
	reply, err := dnstest.ReadTCP(c)
	if err != nil {
		t.Fatal(err)
	}
	m := dnstest.Unpack(t, reply)
	if m.Rcode != dns.RcodeSuccess || m.Truncated || len(m.Answer) != 1001 {
		t.Fatalf("%s, TC %v, %d records; want NOERROR, no TC, a CNAME and 1,000 addresses", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer))
	}
	// 12 header, 39 question, some 60 the CNAME, 16 an address.
	if want := 12 + 39 + 60 + 1000*16; len(reply) > want {
		t.Errorf("%d bytes, want at most %d: the reply compressed", len(reply), want)
	}
}

// TestForwardedReplyOverTheClientsBuffer: a forwarded reply larger than
// the client's UDP buffer (60 addresses, asked without EDNS: 512 bytes)
// keeps the whole records that fit, with TC, as CoreDNS's forward plugin
// cuts it (before: an empty reply with TC). This upstream does not
// compress; the cut does, as miekg's Msg.Truncate (CoreDNS's): 30
// records, not the 17 that fit as the upstream wrote them (before).
func TestForwardedReplyOverTheClientsBuffer(t *testing.T) {
	var zone []string
	for i := range 60 {
		zone = append(zone, fmt.Sprintf("big.example. 60 IN A 203.0.113.%d", i+1))
	}
	ss := startSlowServer(t, Options{}, &model.Snapshot{}, zone...)
	query := new(dns.Msg)
	query.SetQuestion("big.example.", dns.TypeA)
	m, size := exchangeUDP(t, query, ss.addr.String())
	// 12 header, 17 question, 16 an address compressed.
	if m.Rcode != dns.RcodeSuccess || !m.Truncated || len(m.Answer) != (512-12-17)/16 || size > 512 {
		t.Errorf("%s, TC %v, %d records in %d bytes; want NOERROR, TC and the %d that fit in 512", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), size, (512-12-17)/16)
	}
}

// compressing answers as r does, its replies compressed, as every common
// server sends them.
type compressing struct{ r dnstest.Responder }

func (c compressing) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := c.r.Reply(req, local)
	if m != nil {
		m.Compress = true
	}
	return m
}

// TestForwardedReplyCutOnTheWire: a compressed forwarded reply over the
// client's UDP buffer (250 addresses, 4,040 bytes, to a client of 1,232)
// is cut as it came: it parses, keeps the client's ID, the upstream's
// flags, the addresses that fit and the OPT record, with TC, counted
// truncated once.
func TestForwardedReplyCutOnTheWire(t *testing.T) {
	var zone []string
	for i := range 250 {
		zone = append(zone, fmt.Sprintf("big.example. 60 IN A 203.0.113.%d", i+1))
	}
	ss := startSlowServerWith(t, Options{}, &model.Snapshot{}, compressing{dnstest.ZoneOf(t, zone...)})
	query := new(dns.Msg)
	query.SetQuestion("big.example.", dns.TypeA)
	query.Id = 0xBEEF
	query.SetEdns0(1232, true)
	truncated := truncatedCounts()
	m, size := exchangeUDP(t, query, ss.addr.String())
	// 12 header, 17 question, 11 OPT, 16 an address.
	if m.Id != 0xBEEF || m.Rcode != dns.RcodeSuccess || !m.Truncated || !m.Authoritative || !m.RecursionDesired ||
		len(m.Answer) != (1232-12-17-11)/16 || size > 1232 {
		t.Errorf("ID %#x, %s, TC %v, AA %v, RD %v, %d records in %d bytes; want ID 0xbeef, NOERROR, TC, AA, RD and the %d that fit in 1,232",
			m.Id, dns.RcodeToString[m.Rcode], m.Truncated, m.Authoritative, m.RecursionDesired, len(m.Answer), size, (1232-12-17-11)/16)
	}
	if opt := m.IsEdns0(); opt == nil || !opt.Do() {
		t.Errorf("OPT %v, want the upstream's, DO set", opt)
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{udp: 1}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 1 and 0", got.udp, got.tcp)
	}
}

// withGlue answers as z does, adding to an SRV answer its targets'
// addresses from z in the additional section, all of them, as BIND and
// unbound answer ztdns's 1,232 bytes; compressed, or, with onlyWhenItMust,
// as CoreDNS writes every reply (compressingWhenItMust).
type withGlue struct {
	z              dnstest.Zone
	onlyWhenItMust bool
}

func (g withGlue) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := g.z.Reply(req, local)
	var glue []dns.RR
	for _, rr := range m.Answer {
		if srv, ok := rr.(*dns.SRV); ok {
			glue = append(glue, g.z[srv.Target]...)
		}
	}
	m.Extra = append(glue, m.Extra...) // before the OPT record
	if g.onlyWhenItMust {
		m.Truncate(dns.MaxMsgSize)
	} else {
		m.Compress = true
	}
	return m
}

// srvZone is n SRV records at _http._tcp.db.example., each target with two
// IPv6 addresses.
func srvZone(t *testing.T, n int) dnstest.Zone {
	var zone []string
	for i := range n {
		zone = append(zone, fmt.Sprintf("_http._tcp.db.example. 60 IN SRV 0 100 80 db-%d.example.", i),
			fmt.Sprintf("db-%d.example. 60 IN AAAA 2001:db8::%d:1", i, i),
			fmt.Sprintf("db-%d.example. 60 IN AAAA 2001:db8::%d:2", i, i))
	}
	return dnstest.ZoneOf(t, zone...)
}

// TestForwardedGlueLeftOutSetsNoTC: a forwarded SRV answer of 8 records
// with their targets' 16 addresses in the additional section (some 700
// bytes, as BIND and unbound send it to ztdns's 1,232), asked by a client
// whose EDNS buffer is 512 bytes, keeps all 8 SRV records, the OPT record
// and whole sets of the addresses that fit, without TC, as BIND and
// unbound answer the client: additional records left out set no TC
// (RFC 2181 9), and a set cut in two without TC would pass for whole. Not
// counted truncated. So asked fresh, and from the cache after a TCP query
// took the whole reply, from an upstream that compresses (the cut on the
// wire) and one that compresses only when it must (the compressed cut).
// Before: TC set, and glibc, Go and c-ares threw the answer away and
// asked again over TCP.
func TestForwardedGlueLeftOutSetsNoTC(t *testing.T) {
	for _, onlyWhenItMust := range []bool{false, true} {
		for _, first := range []string{"udp", "tcp"} {
			t.Run(fmt.Sprintf("compressing only when it must %v, %s first", onlyWhenItMust, first), func(t *testing.T) {
				ss := startSlowServerWith(t, Options{}, &model.Snapshot{}, withGlue{srvZone(t, 8), onlyWhenItMust})
				query := new(dns.Msg)
				query.SetQuestion("_http._tcp.db.example.", dns.TypeSRV)
				query.SetEdns0(512, false)
				if first == "tcp" {
					m, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(query, ss.addr.String())
					if err != nil {
						t.Fatal(err)
					}
					if m.Truncated || len(m.Answer) != 8 || len(m.Extra) != 16+1 {
						t.Fatalf("TCP: TC %v, %d answers, %d additional; want all 8 and 16 with the OPT record", m.Truncated, len(m.Answer), len(m.Extra))
					}
				}
				truncated := truncatedCounts()
				m, size := exchangeUDP(t, query, ss.addr.String())
				addrs := map[string]int{}
				for _, rr := range m.Extra {
					if rr.Header().Rrtype == dns.TypeAAAA {
						addrs[rr.Header().Name]++
					}
				}
				n := 0
				for name, k := range addrs {
					if n += k; k != 2 {
						t.Errorf("%d of %s's 2 addresses: a set cut in two", k, name)
					}
				}
				t.Logf("%d answers, %d addresses in %d bytes", len(m.Answer), n, size)
				if m.Rcode != dns.RcodeSuccess || m.Truncated || len(m.Answer) != 8 || n == 0 || n == 16 || m.IsEdns0() == nil || size > 512 {
					t.Errorf("%s, TC %v, %d answers, %d addresses, OPT %v in %d bytes; want NOERROR, no TC, all 8 answers, the addresses that fit and the OPT record in 512",
						dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), n, m.IsEdns0() != nil, size)
				}
				if got := truncatedCounts().minus(truncated); got != (protoCounts{}) {
					t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0", got.udp, got.tcp)
				}
			})
		}
	}
}

// TestForwardedAnswersLeftOutSetTC: a forwarded SRV answer whose records
// do not all fit the client's 512 bytes keeps those that fit and the OPT
// record, with TC, counted truncated, fresh and from the cache alike.
func TestForwardedAnswersLeftOutSetTC(t *testing.T) {
	for _, onlyWhenItMust := range []bool{false, true} {
		t.Run(fmt.Sprintf("compressing only when it must %v", onlyWhenItMust), func(t *testing.T) {
			ss := startSlowServerWith(t, Options{}, &model.Snapshot{}, withGlue{srvZone(t, 30), onlyWhenItMust})
			query := new(dns.Msg)
			query.SetQuestion("_http._tcp.db.example.", dns.TypeSRV)
			query.SetEdns0(512, false)
			for _, from := range []string{"upstream", "cache"} {
				truncated := truncatedCounts()
				m, size := exchangeUDP(t, query, ss.addr.String())
				if m.Rcode != dns.RcodeSuccess || !m.Truncated || len(m.Answer) == 0 || len(m.Answer) >= 30 || m.IsEdns0() == nil || size > 512 {
					t.Errorf("%s: %s, TC %v, %d answers, OPT %v in %d bytes; want NOERROR, TC, the answers that fit and the OPT record in 512",
						from, dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer), m.IsEdns0() != nil, size)
				}
				if got := truncatedCounts().minus(truncated); got != (protoCounts{udp: 1}) {
					t.Errorf("%s: ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 1 and 0", from, got.udp, got.tcp)
				}
			}
		})
	}
}

// compressingWhenItMust answers as r does, compressing only a reply that
// does not fit a TCP message otherwise: as CoreDNS writes every reply
// (miekg's Msg.Truncate turns compression off for one that fits).
type compressingWhenItMust struct{ r dnstest.Responder }

func (c compressingWhenItMust) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := c.r.Reply(req, local)
	if m != nil {
		m.Truncate(dns.MaxMsgSize)
	}
	return m
}

// TestForwardedReplyCompressedForTheClient: a forwarded reply from an
// upstream that compresses only when it must (CoreDNS), asked over TCP
// (300 addresses, some 8 KB uncompressed) and so cached, then asked from
// the cache over UDP without EDNS and with 1,232 bytes, keeps as many
// records as fit compressed, with TC, the client's ID and spelling of the
// question, the upstream's flags and the OPT record: nearly twice as many
// as the upstream's bytes cut as they came (before: 17 in 512 bytes, 44
// in 1,232, where CoreDNS's cut, miekg's Msg.Truncate, keeps 29 and 73).
func TestForwardedReplyCompressedForTheClient(t *testing.T) {
	var zone []string
	for i := range 300 {
		zone = append(zone, fmt.Sprintf("big.example. 60 IN A 203.0.%d.%d", 113+i/250, i%250+1))
	}
	up := dnstest.Start(t, "127.0.0.1:0", compressingWhenItMust{dnstest.ZoneOf(t, zone...)})
	ls := startLimitsServer(t, Options{}, up.Addr, up.Addr)
	for _, c := range []struct {
		name string
		edns uint16 // 0: none
		want int
	}{
		// 12 header, 17 question, 11 OPT, 16 an address compressed, and
		// 11 more for the first, whose owner is written out: spelled as
		// the upstream wrote it (big.example.), it is no repeat of the
		// question (BIG.Example.).
		{"without EDNS", 0, (512 - 12 - 17 - 11) / 16},
		{"EDNS 1232", 1232, (1232 - 12 - 17 - 11 - 11) / 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			query := new(dns.Msg)
			query.SetQuestion("BIG.Example.", dns.TypeA)
			query.Id = 0xBEEF
			limit := 512
			if c.edns > 0 {
				query.SetEdns0(c.edns, false)
				limit = int(c.edns)
			}
			// Over TCP first, with another ID and spelling: the whole
			// reply, cached as it came.
			tcpQuery := query.Copy()
			tcpQuery.Id, tcpQuery.Question[0].Name = 0x1234, "big.example."
			m, err := ls.tryExchange(victimIP, "tcp", tcpQuery)
			if err != nil {
				t.Fatal(err)
			}
			if m.Truncated || len(m.Answer) != 300 {
				t.Fatalf("TCP: TC %v, %d records; want all 300", m.Truncated, len(m.Answer))
			}
			m, size := exchangeUDP(t, query, ls.addr.String())
			if m.Id != 0xBEEF || m.Rcode != dns.RcodeSuccess || !m.Truncated || !m.Authoritative || !m.RecursionDesired ||
				len(m.Answer) < c.want || size > limit {
				t.Errorf("ID %#x, %s, TC %v, AA %v, RD %v, %d records in %d bytes; want ID 0xbeef, NOERROR, TC, AA, RD and the %d that fit in %d compressed",
					m.Id, dns.RcodeToString[m.Rcode], m.Truncated, m.Authoritative, m.RecursionDesired, len(m.Answer), size, c.want, limit)
			}
			if len(m.Question) != 1 || m.Question[0].Name != "BIG.Example." {
				t.Errorf("question %v, want the client's BIG.Example.", m.Question)
			}
			if opt := m.IsEdns0(); (c.edns > 0) != (opt != nil) {
				t.Errorf("OPT %v, want one for a client with EDNS, none otherwise", opt)
			}
		})
	}
	for _, q := range up.Received() {
		if q.Net != "tcp" {
			t.Errorf("the upstream was asked %v, want only the TCP queries: the UDP replies from the cache", q)
		}
	}
}

// TestCompressedFitKeepsTheReplysHeader: the compressed cut of an
// uncompressed reply keeps what the cut on the wire keeps, ID, flags
// (AD, CD, the Z bit, an RA the client never set), the question as
// spelled, the OPT record with DO and an extended error, and more records;
// one already compressed is left to the wire cut (nil).
func TestCompressedFitKeepsTheReplysHeader(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("Big.EXAMPLE.", dns.TypeA)
	m.Id = 0xBEEF
	m.Response, m.Authoritative, m.RecursionAvailable, m.AuthenticatedData, m.CheckingDisabled, m.Zero = true, true, true, true, true, true
	for i := range 100 {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: net.IPv4(203, 0, 113, byte(i+1))})
	}
	m.SetEdns0(1232, true)
	opt := m.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeStaleAnswer, ExtraText: "stale"})
	uncompressed, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	m.Compress = true
	compressed, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	const limit = 512
	f, err := dnswire.PlanFit(slices.Clone(uncompressed), limit)
	if err != nil || !f.Dropped {
		t.Fatalf("the wire cut: dropped %v, %v", f.Dropped, err)
	}
	onTheWire := dnstest.Unpack(t, f.Apply(slices.Clone(uncompressed)))
	out, tc := compressedFit(uncompressed, limit, f.Kept())
	if out == nil || len(out) > limit || !tc {
		t.Fatalf("compressed cut of %d bytes, want one within %d", len(out), limit)
	}
	got := dnstest.Unpack(t, out)
	if got.MsgHdr != onTheWire.MsgHdr || !got.Truncated || !slices.Equal(got.Question, onTheWire.Question) ||
		got.IsEdns0().String() != onTheWire.IsEdns0().String() {
		t.Errorf("compressed: %v %v %v\nwant as on the wire: %v %v %v",
			got.MsgHdr, got.Question, got.IsEdns0(), onTheWire.MsgHdr, onTheWire.Question, onTheWire.IsEdns0())
	}
	if len(got.Answer) <= len(onTheWire.Answer) || len(got.Ns) != 0 || len(got.Extra) != 1 {
		t.Errorf("%d/%d/%d records, want more answers than the %d on the wire and the OPT record alone", len(got.Answer), len(got.Ns), len(got.Extra), len(onTheWire.Answer))
	}
	for i, rr := range got.Answer {
		if rr.String() != m.Answer[i].String() {
			t.Fatalf("answer %d: %v, want %v", i, rr, m.Answer[i])
		}
	}
	f, err = dnswire.PlanFit(slices.Clone(compressed), limit)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := compressedFit(compressed, limit, f.Kept()); out != nil {
		t.Errorf("a compressed reply decoded and cut again (%d bytes): the wire cut keeps as much", len(out))
	}
	// 25 addresses: over 700 bytes uncompressed, under 512 compressed:
	// whole, without TC.
	m.Answer, m.Compress = m.Answer[:25], false
	uncompressed, err = m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if f, err = dnswire.PlanFit(slices.Clone(uncompressed), limit); err != nil || !f.Dropped {
		t.Fatalf("25 addresses uncompressed: dropped %v, %v; want records dropped", f.Dropped, err)
	}
	out, tc = compressedFit(uncompressed, limit, f.Kept())
	if got := dnstest.Unpack(t, out); tc || got.Truncated || len(got.Answer) != 25 {
		t.Errorf("25 addresses: TC %v (reported %v), %d records; want all, no TC", got.Truncated, tc, len(got.Answer))
	}
}

// TestCompressedFitDecodesWhatFits: a cached reply of 64 KB (2,400
// addresses, as an upstream that compresses only when it must answers over
// TCP) cut for a client without EDNS is cut as when every record is
// decoded, but decodes only the records that can fit: a bounded number of
// allocations whatever the reply's size. (Before: every record was decoded
// and 9,618 allocations made a cut; a pod asking it again and again over
// UDP spent over a millisecond of CPU a query.)
func TestCompressedFitDecodesWhatFits(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeA)
	m.Response = true
	for i := range 2400 {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: net.IPv4(203, 0, byte(i/250), byte(i%250+1))})
	}
	for _, edns := range []bool{false, true} {
		if edns {
			m.SetEdns0(1232, false)
		}
		reply, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if len(reply) < 60000 {
			t.Fatalf("a reply of %d bytes, want some 64 KB", len(reply))
		}
		const limit = 512
		f, err := dnswire.PlanFit(slices.Clone(reply), limit)
		if err != nil || !f.Dropped {
			t.Fatalf("the wire cut: dropped %v, %v", f.Dropped, err)
		}
		out, _ := compressedFit(reply, limit, f.Kept())
		if want := decodedFit(reply, limit, f.Kept()); out == nil || !bytes.Equal(out, want) {
			t.Errorf("EDNS %v: cut to %x\nwant, as when every record is decoded, %x", edns, out, want)
		}
		// 45 records at most fit in 512 bytes: some 190 allocations to
		// decode, cut and pack them.
		const most = 300
		if n := testing.AllocsPerRun(10, func() { compressedFit(reply, limit, f.Kept()) }); n > most {
			t.Errorf("EDNS %v: %v allocations to cut a reply of %d records to %d bytes, want at most %d", edns, n, len(m.Answer), limit, most)
		}
	}
}

// decodedFit is compressedFit as it was, decoding every record: what its
// cut must be.
func decodedFit(reply []byte, limit, kept int) []byte {
	m := new(dns.Msg)
	if m.Unpack(reply) != nil {
		return nil
	}
	out, err := truncateAndPack(m, limit, kept)
	if err != nil {
		return nil
	}
	return out
}

// TestLargeTableAnswerHoldsThePodsBytes: a table answer over TCP larger
// than a connection keeps (the fast path's, here a Service's 65,535 bytes
// of addresses) holds its bytes of the pod's replies in flight while it is
// written, as a slow-path reply does: given back once written, and with
// the pod's bytes held elsewhere, refused: SERVFAIL without TC, counted
// forward_limited and in the pod's bytesRefused, and logged as a SERVFAIL
// the pod's limit made (answered=none, limit=pod; before: no limit).
// Before: it was held outside every bound (a client that reads nothing
// kept it up to tcpWriteTimeout), and answered whatever the pod held.
func TestLargeTableAnswerHoldsThePodsBytes(t *testing.T) {
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "client", IPs: []netip.Addr{victimIP}}})
	b := quota.NewBudget(DefaultInflightBytes, MinPodInflightBytes)
	al, log := startAccessLog(t)
	addr := bigHeadlessServer(t, Options{Pods: pods, Budget: b, AccessLog: al})
	pod := pods.Lookup(victimIP).Quota
	query := new(dns.Msg)
	query.SetQuestion("web.ns.svc.cluster.local.", dns.TypeA)
	c := dnsClientFrom(victimIP, "tcp")
	m, _, err := c.Exchange(query, addr)
	if err != nil {
		t.Fatal(err)
	}
	if m.Rcode != dns.RcodeSuccess || !m.Truncated || len(m.Answer) < 4000 {
		t.Fatalf("%s, TC %v, %d records; want NOERROR, TC and as many addresses as fit", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer))
	}
	testenv.Eventually(t, 30*time.Second, "the answer's bytes given back once written", func() bool { return b.Used() == 0 })

	useUpBytes(t, b, pod, MinPodInflightBytes) // no reply of the pod's fits now
	truncated, limited := truncatedCounts(), testutil.ToFloat64(metricQueries.forwardLimited)
	if m, _, err = c.Exchange(query, addr); err != nil {
		t.Fatal(err)
	}
	if m.Rcode != dns.RcodeServerFailure || m.Truncated || len(m.Answer) != 0 {
		t.Errorf("with the pod's bytes held: %s, TC %v, %d records; want SERVFAIL without TC", dns.RcodeToString[m.Rcode], m.Truncated, len(m.Answer))
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0 and 0", got.udp, got.tcp)
	}
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 1 || pod.Usage().BytesRefused != 1 {
		t.Errorf("forward_limited rose by %v and the pod's bytesRefused is %d, want 1 and 1", got, pod.Usage().BytesRefused)
	}
	got := accessLines(t, log, 2)[1]
	want := accessLine{Msg: "dns query", Client: got.Client, Namespace: "default", Pod: "client", Name: "web.ns.svc.cluster.local.",
		Type: "A", Proto: "tcp", Rcode: "SERVFAIL", Answered: "none", Limit: "pod", Latency: got.Latency}
	if got != want {
		t.Errorf("access log: %+v\nwant %+v", got, want)
	}
	// A small answer is the connection's own, held by no budget.
	query.SetQuestion("web.ns.svc.cluster.local.", dns.TypeSOA)
	if m, _, err = c.Exchange(query, addr); err != nil || m.Rcode != dns.RcodeSuccess {
		t.Errorf("a small answer with the pod's bytes held: %v %v, want NOERROR", m, err)
	}
}

// TestTruncatedReplyRefusedNotCounted: a slow-path TCP answer cut to fit a
// message whose hold is refused (the pod's bytes taken) goes out as
// SERVFAIL, without TC: ztdns_resolver_truncated_total, replies sent with
// TC, does not count it. Before: it counted every cut answer, sent or not.
func TestTruncatedReplyRefusedNotCounted(t *testing.T) {
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "client", IPs: []netip.Addr{victimIP}}})
	b := quota.NewBudget(DefaultInflightBytes, MinPodInflightBytes)
	addr := bigHeadlessServer(t, Options{Pods: pods, Budget: b})
	pod := pods.Lookup(victimIP).Quota
	useUpBytes(t, b, pod, MinPodInflightBytes) // no reply of the pod's fits now
	query := new(dns.Msg)
	query.SetQuestion("web.ns.default.svc.cluster.local.", dns.TypeA)
	c := dnsClientFrom(victimIP, "tcp")
	truncated, limited := truncatedCounts(), testutil.ToFloat64(metricQueries.forwardLimited)
	m, _, err := c.Exchange(query, addr)
	if err != nil {
		t.Fatal(err)
	}
	if m.Rcode != dns.RcodeServerFailure || m.Truncated {
		t.Fatalf("%s, TC %v; want SERVFAIL without TC", dns.RcodeToString[m.Rcode], m.Truncated)
	}
	if got := truncatedCounts().minus(truncated); got != (protoCounts{}) {
		t.Errorf("ztdns_resolver_truncated_total rose by %v over UDP and %v over TCP, want 0 and 0", got.udp, got.tcp)
	}
	// The table's answer, refused for the pod's bytes, is the pod's.
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 1 || pod.Usage().BytesRefused != 1 {
		t.Errorf("forward_limited rose by %v and the pod's bytesRefused is %d, want 1 and 1", got, pod.Usage().BytesRefused)
	}
}
