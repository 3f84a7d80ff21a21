package dnstest

import (
	"net/netip"

	"github.com/miekg/dns"
)

// Answerer returns the answer records for a question that arrived on
// local. As a Responder it replies NOERROR, authoritative, with the records
// for every question (none: NODATA without an SOA).
type Answerer func(q dns.Question, local netip.AddrPort) []dns.RR

// Reply answers each question of req with a's records.
func (a Answerer) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		m.Answer = append(m.Answer, a(q, local)...)
	}
	return m
}

// Marker answers every A question, whatever the name, with a4 and every
// AAAA question with a6 (TTL 0, so nothing caches it), and nothing else: an
// answer tells which server gave it.
func Marker(a4, a6 netip.Addr) Answerer {
	return func(q dns.Question, _ netip.AddrPort) []dns.RR {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype}
		switch q.Qtype {
		case dns.TypeA:
			return []dns.RR{&dns.A{Hdr: hdr, A: a4.AsSlice()}}
		case dns.TypeAAAA:
			return []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: a6.AsSlice()}}
		}
		return nil
	}
}
