package dnswire

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// The tests build and check messages with miekg/dns, a parser written
// independently of this one.

// newMsg is a message with one question and ID 0xBEEF, changed by tweaks.
func newMsg(name string, qtype uint16, tweaks ...func(*dns.Msg)) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	for _, tweak := range tweaks {
		tweak(m)
	}
	return m
}

func pack(tb testing.TB, m *dns.Msg) []byte {
	tb.Helper()
	b, err := m.Pack()
	if err != nil {
		tb.Fatalf("pack: %v", err)
	}
	return b
}

func withEDNS(do bool) func(*dns.Msg) { return func(m *dns.Msg) { m.SetEdns0(1232, do) } }

// records appends records in zone-file syntax to a section of m.
func records(tb testing.TB, section func(*dns.Msg) *[]dns.RR, lines ...string) func(*dns.Msg) {
	rrs := dnstest.RRs(tb, lines...)
	return func(m *dns.Msg) {
		s := section(m)
		*s = append(*s, rrs...)
	}
}

func answer(m *dns.Msg) *[]dns.RR     { return &m.Answer }
func authority(m *dns.Msg) *[]dns.RR  { return &m.Ns }
func additional(m *dns.Msg) *[]dns.RR { return &m.Extra }

const testSOA = "example.com. 3600 IN SOA ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 60"

// appendRR appends a record whose owner is a compression pointer, as the
// resolver does with AppendRRHeader and the data.
func appendRR(out []byte, owner uint16, rrtype, class uint16, ttl uint32, rdata []byte) []byte {
	out = AppendRRHeader(out, owner, rrtype, class, ttl, uint16(len(rdata)))
	return append(out, rdata...)
}
