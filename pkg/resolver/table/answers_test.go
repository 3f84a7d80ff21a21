package table

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// bigHeadless is a headless Service web.ns of n ready endpoints, without
// hostnames, behind the named port http.
func bigHeadless(n int) *model.Snapshot {
	es := model.EndpointSlice{Namespace: "ns", Name: "web-a", ServiceName: "web",
		Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 8080}}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)})
		es.Endpoints = append(es.Endpoints, model.Endpoint{Addresses: []netip.Addr{a}, Ready: true})
	}
	return &model.Snapshot{
		Services:       []model.Service{{Namespace: "ns", Name: "web", Headless: true}},
		EndpointSlices: []model.EndpointSlice{es},
	}
}

// answerIn is AppendAnswer's reply to qname, qtype with room bytes, as
// written and parsed.
func answerIn(t *testing.T, tbl *Table, qname string, qtype uint16, room int) (wire []byte, m *dns.Msg, truncated bool) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(qname, qtype)
	head, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	r := tbl.Resolve(qname, "ns")
	if r.Entry == nil {
		t.Fatalf("%s: not in the table", qname)
	}
	wire, truncated = r.AppendAnswer(head, 0, qtype, 0, room)
	m = new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		t.Fatalf("%s %s: the answer does not parse: %v", qname, dns.TypeToString[qtype], err)
	}
	return wire, m, truncated
}

// An answer larger than a message can hold keeps the records that fit,
// with TC, as CoreDNS's does (its server truncates every reply to the
// transport's size with miekg's Msg.Truncate): never more than room, and
// never one record fewer than fits.
func TestAnswerTruncatedToItsRoom(t *testing.T) {
	tbl, warnings := Build(bigHeadless(5000), Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	const room = dns.MaxMsgSize
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.ns.svc.cluster.local.", dns.TypeA},
		{"_http._tcp.web.ns.svc.cluster.local.", dns.TypeSRV},
		{"web.ns.svc.cluster.local.", dns.TypeANY},
	} {
		wire, m, truncated := answerIn(t, tbl, q.name, q.qtype, room)
		if !truncated || !m.Truncated {
			t.Errorf("%s %s: truncated %v, TC %v, want both", q.name, dns.TypeToString[q.qtype], truncated, m.Truncated)
		}
		if len(wire) > room {
			t.Errorf("%s %s: %d bytes, over %d", q.name, dns.TypeToString[q.qtype], len(wire), room)
		}
		next := rrFixed + 4 // the first record left out
		if r := tbl.Resolve(q.name, "ns"); r.srv != nil {
			next = srvLen(r.srv.records[len(m.Answer)])
		}
		if len(wire)+next <= room {
			t.Errorf("%s %s: %d records in %d bytes, and the next, of %d, would fit", q.name, dns.TypeToString[q.qtype], len(m.Answer), len(wire), next)
		}
		if len(m.Extra) > 0 || len(m.Ns) > 0 {
			t.Errorf("%s %s: %d authority and %d additional records in a truncated answer", q.name, dns.TypeToString[q.qtype], len(m.Ns), len(m.Extra))
		}
	}
	// One that fits is whole, without TC.
	if _, m, truncated := answerIn(t, tbl, "10-244-0-1.web.ns.svc.cluster.local.", dns.TypeA, room); truncated || m.Truncated || len(m.Answer) != 1 {
		t.Errorf("a small answer: truncated %v, TC %v, %d records", truncated, m.Truncated, len(m.Answer))
	}
}

// An SRV answer's additional section holds its targets' addresses, as
// CoreDNS's does: where they fit, and without TC when they do not (RFC
// 2181 9: they are not the answer).
func TestSRVAdditionalSection(t *testing.T) {
	tbl := build(t)
	extraOf := func(m *dns.Msg) []string {
		var out []string
		for _, rr := range m.Extra {
			out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
		}
		slices.Sort(out)
		return out
	}
	for qname, want := range map[string][]string{
		"_pg._tcp.db.default.svc.cluster.local.": {
			"10-1-0-2.db.default.svc.cluster.local. 30 IN A 10.1.0.2",
			"db-0.db.default.svc.cluster.local. 30 IN A 10.1.0.1",
		},
		"_http._tcp.web.default.svc.cluster.local.": {
			"web.default.svc.cluster.local. 30 IN A 10.96.0.10",
			"web.default.svc.cluster.local. 30 IN AAAA fd00:10:96::a",
		},
	} {
		r := tbl.Resolve(qname, "default")
		m := replyOf(t, r, qname, dns.TypeSRV)
		if got := extraOf(m); !slices.Equal(got, want) {
			t.Errorf("%s: additional %q, want %q", qname, got, want)
		}
		// Room for the answer and one additional record: the answer is
		// whole, without TC.
		q := new(dns.Msg)
		q.SetQuestion(qname, dns.TypeSRV)
		head, _ := q.Pack()
		answers := len(m.Answer)
		whole, _ := r.AppendAnswer(slices.Clone(head), 0, dns.TypeSRV, 0, dns.MaxMsgSize)
		wire, truncated := r.AppendAnswer(slices.Clone(head), 0, dns.TypeSRV, 0, len(whole)-1)
		if err := m.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		if truncated || m.Truncated || len(m.Answer) != answers || len(m.Extra) != 1 {
			t.Errorf("%s in %d bytes: truncated %v, TC %v, %d answers, %d additional; want all %d answers, one additional, no TC",
				qname, len(whole)-1, truncated, m.Truncated, len(m.Answer), len(m.Extra), answers)
		}
	}
	// Other types get none.
	if m := replyOf(t, tbl.Resolve("_pg._tcp.db.default.svc.cluster.local.", "default"), "_pg._tcp.db.default.svc.cluster.local.", dns.TypeA); len(m.Extra) != 0 {
		t.Errorf("A at an SRV name: additional %v", m.Extra)
	}
}

// An additional record's owner points at its target in the SRV record
// while a pointer reaches it (offsets up to 0x3fff), and is written out
// past that.
func TestSRVAdditionalBeyondPointers(t *testing.T) {
	tbl, _ := Build(bigHeadless(400), Options{})
	wire, m, truncated := answerIn(t, tbl, "_http._tcp.web.ns.svc.cluster.local.", dns.TypeSRV, dns.MaxMsgSize)
	if truncated || len(m.Answer) != 400 || len(wire) < 0x4000 {
		t.Fatalf("%d records in %d bytes, truncated %v; want 400 past 0x4000 bytes", len(m.Answer), len(wire), truncated)
	}
	targets := map[string]bool{}
	for _, rr := range m.Answer {
		targets[rr.(*dns.SRV).Target] = true
	}
	if len(m.Extra) != 400 {
		t.Errorf("%d additional records, want 400", len(m.Extra))
	}
	for _, rr := range m.Extra {
		a := rr.(*dns.A)
		if !targets[a.Hdr.Name] || a.Hdr.Name != strings.ReplaceAll(a.A.String(), ".", "-")+".web.ns.svc.cluster.local." {
			t.Errorf("additional %v: not its target's address", rr)
		}
		delete(targets, a.Hdr.Name)
	}
}

// Records, the slow path's answer (CNAME chains, search-list expansions),
// gives the records AppendAnswer writes, in the same order: for every kind
// of name the table answers (a Service's, its SRV names, a headless
// Service's endpoints, an ExternalName, a ServiceEntry host and wildcard,
// reverse names of one owner and of several) and every query type.
func TestRecordsAreAppendAnswers(t *testing.T) {
	port := []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}
	tbl, warnings := Build(&model.Snapshot{
		Services: []model.Service{
			{Namespace: "ns", Name: "web", ClusterIPs: addrs("10.96.0.10", "fd00:10:96::a"), Ports: port},
			{Namespace: "ns", Name: "db", Headless: true},
			{Namespace: "ns", Name: "db2", Headless: true},
			{Namespace: "ns", Name: "ext", ExternalName: "example.com"},
		},
		EndpointSlices: []model.EndpointSlice{
			{Namespace: "ns", Name: "db-v4", ServiceName: "db", Ports: port, Endpoints: []model.Endpoint{
				{Addresses: addrs("10.1.0.1"), Hostname: "db-0", Ready: true},
				{Addresses: addrs("10.1.0.2"), Hostname: "db-1", Ready: true},
				{Addresses: addrs("10.1.0.3"), Ready: true},
			}},
			{Namespace: "ns", Name: "db-v6", ServiceName: "db", Ports: port, Endpoints: []model.Endpoint{
				{Addresses: addrs("fd00::1"), Hostname: "db-0", Ready: true},
			}},
			{Namespace: "ns", Name: "db2", ServiceName: "db2", Ports: port, Endpoints: []model.Endpoint{
				{Addresses: addrs("10.1.0.1"), Hostname: "other-0", Ready: true},
			}},
		},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "ns", Name: "se", Created: t0, Hosts: []string{"api.example.net"}, Resolution: "STATIC",
				Addresses: addrs("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::1", "2001:db8::2")},
			{Namespace: "ns", Name: "wild", Created: t0, Hosts: []string{"*.example.org"}, Resolution: "STATIC",
				Addresses: addrs("203.0.113.7", "203.0.113.8")},
		},
	}, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	names := []string{
		"web.ns.svc.cluster.local.",
		"_http._tcp.web.ns.svc.cluster.local.",
		"db.ns.svc.cluster.local.",
		"db-0.db.ns.svc.cluster.local.",
		"_http._tcp.db.ns.svc.cluster.local.",
		"ext.ns.svc.cluster.local.",
		"api.example.net.",
		"a.example.org.",
		reverseName(netip.MustParseAddr("10.96.0.10")),
		reverseName(netip.MustParseAddr("fd00:10:96::a")),
		reverseName(netip.MustParseAddr("10.1.0.1")), // db-0 and other-0
		reverseName(netip.MustParseAddr("fd00::1")),
	}
	qtypes := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeCNAME, dns.TypeSRV, dns.TypePTR, dns.TypeTXT}
	for _, qname := range names {
		r := tbl.Resolve(qname, "ns")
		if r.Entry == nil {
			t.Fatalf("%s: not in the table", qname)
		}
		for _, qtype := range qtypes {
			for rot := range uint16(3) {
				q := new(dns.Msg)
				q.SetQuestion(qname, qtype)
				head, err := q.Pack()
				if err != nil {
					t.Fatal(err)
				}
				wire, _ := r.AppendAnswer(head, 0, qtype, rot, dns.MaxMsgSize)
				m := new(dns.Msg)
				if err := m.Unpack(wire); err != nil {
					t.Fatalf("%s %s: %v", qname, dns.TypeToString[qtype], err)
				}
				var fast, slow []string
				for _, rr := range m.Answer {
					fast = append(fast, rr.String())
				}
				for _, rr := range r.Records(qname, qtype, DefaultTTL, rot) {
					slow = append(slow, rr.String())
				}
				if !slices.Equal(fast, slow) {
					t.Errorf("%s %s rot %d: Records\n\t%q\nAppendAnswer\n\t%q", qname, dns.TypeToString[qtype], rot, slow, fast)
				}
			}
		}
	}
}

// SRV at a headless Service's endpoint name answers as kube-dns does: a
// record per port of the slices that list the endpoint, named or not, each
// pointing at the name, with its addresses in the additional section; a
// slice port without a number (every port) makes none. Before, NODATA.
func TestSRVAtAnEndpointsName(t *testing.T) {
	tbl, warnings := Build(&model.Snapshot{
		Services: []model.Service{{Namespace: "ns", Name: "db", Headless: true}},
		EndpointSlices: []model.EndpointSlice{
			{Namespace: "ns", Name: "db-v4", ServiceName: "db", Ports: []model.Port{
				{Name: "pg", Protocol: "TCP", Port: 5432}, {Protocol: "UDP", Port: 9000}}, Endpoints: []model.Endpoint{
				{Addresses: addrs("10.1.0.1"), Hostname: "db-0", Ready: true},
				{Addresses: addrs("10.1.0.2"), Hostname: "db-1", Ready: true},
			}},
			{Namespace: "ns", Name: "db-v6", ServiceName: "db", Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 6432}},
				Endpoints: []model.Endpoint{{Addresses: addrs("fd00::1"), Hostname: "db-0", Ready: true}}},
		},
	}, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	for qname, want := range map[string][2][]string{
		"db-0.db.ns.svc.cluster.local.": {{
			"db-0.db.ns.svc.cluster.local. 30 IN SRV 0 100 5432 db-0.db.ns.svc.cluster.local.",
			"db-0.db.ns.svc.cluster.local. 30 IN SRV 0 100 6432 db-0.db.ns.svc.cluster.local.",
			"db-0.db.ns.svc.cluster.local. 30 IN SRV 0 100 9000 db-0.db.ns.svc.cluster.local.",
		}, {
			"db-0.db.ns.svc.cluster.local. 30 IN A 10.1.0.1",
			"db-0.db.ns.svc.cluster.local. 30 IN AAAA fd00::1",
		}},
		"db-1.db.ns.svc.cluster.local.": {{
			"db-1.db.ns.svc.cluster.local. 30 IN SRV 0 100 5432 db-1.db.ns.svc.cluster.local.",
			"db-1.db.ns.svc.cluster.local. 30 IN SRV 0 100 9000 db-1.db.ns.svc.cluster.local.",
		}, {
			"db-1.db.ns.svc.cluster.local. 30 IN A 10.1.0.2",
		}},
	} {
		_, m, truncated := answerIn(t, tbl, qname, dns.TypeSRV, dns.MaxMsgSize)
		text := func(rrs []dns.RR) []string {
			var out []string
			for _, rr := range rrs {
				out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
			}
			slices.Sort(out)
			return out
		}
		if got := text(m.Answer); truncated || !slices.Equal(got, want[0]) {
			t.Errorf("%s SRV: %q (truncated %v), want %q", qname, got, truncated, want[0])
		}
		if got := text(m.Extra); !slices.Equal(got, want[1]) {
			t.Errorf("%s SRV: additional %q, want %q", qname, got, want[1])
		}
	}
	// ANY holds them too.
	if _, m, _ := answerIn(t, tbl, "db-1.db.ns.svc.cluster.local.", dns.TypeANY, dns.MaxMsgSize); len(m.Answer) != 3 {
		t.Errorf("db-1 ANY: %v, want its address and 2 SRV records", m.Answer)
	}
	// The Service's name still has none (README: SRV at a Service's bare
	// name).
	if _, m, _ := answerIn(t, tbl, "db.ns.svc.cluster.local.", dns.TypeSRV, dns.MaxMsgSize); len(m.Answer) != 0 {
		t.Errorf("db SRV: %v, want NODATA", m.Answer)
	}
}
