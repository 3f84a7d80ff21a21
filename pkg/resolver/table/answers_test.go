package table

import (
	"net/netip"
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
