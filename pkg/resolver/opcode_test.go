package resolver

import (
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
)

// countingResponder counts the queries that reach it.
type countingResponder struct {
	dnstest.Responder
	n atomic.Int32
}

func (c *countingResponder) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	c.n.Add(1)
	return c.Responder.Reply(req, local)
}

// TestOtherOpcodes: messages of other opcodes than QUERY get what the
// upstreams (unbound, CoreDNS) answer them: NOTIFY and UPDATE without
// exactly one question FORMERR, STATUS, DSO (RFC 8490: its keepalive has
// no question) and the unassigned NOTIMP, none of them asked upstream;
// NOTIFY with one question is relayed. Before: ztdns's own SERVFAIL for
// every one that had not exactly one question.
func TestOtherOpcodes(t *testing.T) {
	up := &countingResponder{Responder: dnstest.ZoneOf(t, "example.com. 30 IN A 192.0.2.1")}
	ss := startSlowServerWith(t, Options{}, &model.Snapshot{}, up)
	q := dns.Question{Name: "example.com.", Qtype: dns.TypeSOA, Qclass: dns.ClassINET}
	const opcodeDSO = 6
	cases := []struct {
		name      string
		opcode    int
		questions []dns.Question
		rcode     int
		relayed   bool
	}{
		{"NOTIFY without a question", dns.OpcodeNotify, nil, dns.RcodeFormatError, false},
		{"NOTIFY with two questions", dns.OpcodeNotify, []dns.Question{q, q}, dns.RcodeFormatError, false},
		{"UPDATE without a zone", dns.OpcodeUpdate, nil, dns.RcodeFormatError, false},
		{"STATUS", dns.OpcodeStatus, nil, dns.RcodeNotImplemented, false},
		{"STATUS with a question", dns.OpcodeStatus, []dns.Question{q}, dns.RcodeNotImplemented, false},
		{"DSO keepalive", opcodeDSO, nil, dns.RcodeNotImplemented, false},
		{"unassigned opcode 15", 15, nil, dns.RcodeNotImplemented, false},
		{"NOTIFY", dns.OpcodeNotify, []dns.Question{q}, -1, true},
	}
	for _, c := range cases {
		for _, proto := range []string{"udp", "tcp"} {
			t.Run(c.name+"/"+proto, func(t *testing.T) {
				before := up.n.Load()
				m := new(dns.Msg)
				m.Id = dns.Id()
				m.Opcode = c.opcode
				m.Question = c.questions
				r, err := ss.tryExchange(victimIP, proto, m)
				if err != nil {
					t.Fatal(err)
				}
				if r.Id != m.Id || !r.Response || r.Opcode != c.opcode {
					t.Fatalf("reply ID %#x opcode %d, want a response to ID %#x opcode %d: %v", r.Id, r.Opcode, m.Id, c.opcode, r)
				}
				if c.rcode >= 0 && r.Rcode != c.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
				}
				if c.relayed && r.Rcode == dns.RcodeServerFailure {
					t.Errorf("SERVFAIL, want the upstream's reply")
				}
				if r.IsEdns0() != nil {
					t.Errorf("an OPT record in the reply to a query without one")
				}
				if asked := up.n.Load() - before; (asked > 0) != c.relayed {
					t.Errorf("the upstream was asked %d times; relayed: %v", asked, c.relayed)
				}
			})
		}
	}
}

// TestFormErrKeepsTheOPT: a query with no question or two, asked with
// EDNS, gets FORMERR with an OPT record (RFC 6891 6.1.1: a reply to an
// EDNS query has one), as unbound answers it, over UDP and TCP; of an EDNS
// version other than 0, BADVERS, as BIND answers; without EDNS, FORMERR
// without one. And what dig +header-only (a query with no question and a
// cookie) prints: the FORMERR, without "EDNS query returned status
// FORMERR - retry with '+noedns'". Before: 12 octets, no OPT record, and
// dig's warning.
func TestFormErrKeepsTheOPT(t *testing.T) {
	ss := startSlowServer(t, Options{}, &model.Snapshot{}, "example.com. 30 IN A 192.0.2.1")
	q := dns.Question{Name: "example.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET}
	for _, tc := range []struct {
		name      string
		questions []dns.Question
		edns      int // -1: none
		rcode     int
	}{
		{"no question, EDNS", nil, 0, dns.RcodeFormatError},
		{"two questions, EDNS", []dns.Question{q, q}, 0, dns.RcodeFormatError},
		{"no question, EDNS version 1", nil, 1, dns.RcodeBadVers},
		{"no question, without EDNS", nil, -1, dns.RcodeFormatError},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			t.Run(tc.name+" over "+proto, func(t *testing.T) {
				m := new(dns.Msg)
				m.Id, m.RecursionDesired, m.Question = 0x4242, true, tc.questions
				if tc.edns >= 0 {
					m.SetEdns0(1232, true)
					m.IsEdns0().SetVersion(uint8(tc.edns))
				}
				r, err := ss.tryExchange(victimIP, proto, m)
				if err != nil {
					t.Fatal(err)
				}
				want := dns.RcodeToString[tc.rcode]
				if tc.rcode == dns.RcodeBadVers {
					want = "BADVERS" // also BADSIG's number
				}
				opt := r.IsEdns0()
				if r.Id != 0x4242 || r.Rcode != tc.rcode || len(r.Question) != 0 || (opt != nil) != (tc.edns >= 0) || len(r.Extra) != min(tc.edns+1, 1) ||
					opt != nil && (opt.Version() != 0 || !opt.Do()) {
					t.Errorf("%v\nwant %s for ID 0x4242, no question, and an OPT record (version 0, DO) %v, nothing else", r, want, tc.edns >= 0)
				}
			})
		}
	}
	testenv.LookPath(t, "dig")
	out, err := exec.Command("dig", "+header-only", "+cookie", "+time=2", "+tries=1", "-p", strconv.Itoa(int(ss.addr.Port())), "@"+ss.addr.Addr().String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status: FORMERR") || !strings.Contains(string(out), "OPT PSEUDOSECTION") || strings.Contains(string(out), "WARNING") {
		t.Errorf("dig +header-only: %v\n%s\nwant FORMERR with an OPT record and no warning", err, out)
	}
}
