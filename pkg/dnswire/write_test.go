package dnswire

import (
	"bytes"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// parsed parses a query built by miekg/dns.
func parsed(t *testing.T, m *dns.Msg) ([]byte, *Query) {
	t.Helper()
	msg := pack(t, m)
	q := new(Query)
	if err := ParseQuery(msg, q, new(NameBuf)); err != nil {
		t.Fatalf("ParseQuery: %v", err)
	}
	return msg, q
}

func TestAppendErrorReply(t *testing.T) {
	t.Parallel()
	cd := func(m *dns.Msg) { m.CheckingDisabled = true }
	for _, edns := range []bool{false, true} {
		tweaks := []func(*dns.Msg){cd}
		if edns {
			tweaks = append(tweaks, withEDNS(true))
		}
		msg, q := parsed(t, newMsg("WwW.Example.COM.", dns.TypeAAAA, tweaks...))
		prefix := []byte("kept")
		out := AppendErrorReply(prefix, msg, q, RcodeRefused)
		if !bytes.Equal(out[:len(prefix)], prefix) {
			t.Fatal("AppendErrorReply overwrote what it appends to")
		}
		m := dnstest.Unpack(t, out[len(prefix):])
		if m.Id != 0xBEEF || !m.Response || m.Authoritative || !m.RecursionDesired || !m.RecursionAvailable || !m.CheckingDisabled || m.Rcode != dns.RcodeRefused {
			t.Errorf("EDNS %v: header %+v; want ID 0xbeef, QR, RD, RA, CD, REFUSED, not AA", edns, m.MsgHdr)
		}
		if len(m.Question) != 1 || m.Question[0].Name != "WwW.Example.COM." || m.Question[0].Qtype != dns.TypeAAAA {
			t.Errorf("EDNS %v: question %v, want the client's, as spelled", edns, m.Question)
		}
		if len(m.Answer)+len(m.Ns) != 0 {
			t.Errorf("EDNS %v: records in an error reply: %v %v", edns, m.Answer, m.Ns)
		}
		opt := m.IsEdns0()
		if (opt != nil) != edns || (edns && (opt.UDPSize() != EDNSUDPSize || !opt.Do() || opt.Version() != 0)) {
			t.Errorf("EDNS %v: OPT %v, want one (size %d, DO echoed) exactly for an EDNS query", edns, opt, EDNSUDPSize)
		}
	}

	// A query whose question did not parse gets none back.
	msg := pack(t, newMsg("a.", dns.TypeA))
	msg[5] = 2 // two questions
	var q Query
	if err := ParseQuery(msg, &q, nil); err == nil {
		t.Fatal("two questions parsed")
	}
	m := dnstest.Unpack(t, AppendErrorReply(nil, msg, &q, RcodeFormErr))
	if m.Id != 0xBEEF || m.Rcode != dns.RcodeFormatError || len(m.Question) != 0 {
		t.Errorf("FORMERR: ID %#x, rcode %d, question %v; want 0xbeef, FORMERR, none", m.Id, m.Rcode, m.Question)
	}
}

func TestAppendTruncated(t *testing.T) {
	t.Parallel()
	msg, q := parsed(t, newMsg("a.example.", dns.TypeA, withEDNS(false)))
	m := dnstest.Unpack(t, AppendTruncated(make([]byte, 0, 512), msg, q))
	if !m.Truncated || !m.Authoritative || m.Rcode != dns.RcodeSuccess || len(m.Question) != 1 || len(m.Answer) != 0 {
		t.Errorf("got %v; want TC, AA, NOERROR, the question, no answer", m)
	}
	if opt := m.IsEdns0(); opt == nil || opt.Do() {
		t.Errorf("OPT %v, want one without DO", opt)
	}
}

// TestAppendTruncatedBytes pins the reply byte for byte to what miekg/dns
// packs for it, with and without EDNS and DO.
func TestAppendTruncatedBytes(t *testing.T) {
	t.Parallel()
	cd := func(m *dns.Msg) { m.CheckingDisabled = true }
	for _, tweaks := range [][]func(*dns.Msg){nil, {withEDNS(false)}, {withEDNS(true), cd}} {
		query := newMsg("WwW.Example.COM.", dns.TypeAAAA, tweaks...)
		msg, q := parsed(t, query)
		want := new(dns.Msg).SetReply(query)
		want.Authoritative, want.Truncated, want.RecursionAvailable = true, true, true
		if q.EDNS {
			want.SetEdns0(EDNSUDPSize, q.DO)
		}
		if got := AppendTruncated(nil, msg, q); !bytes.Equal(got, pack(t, want)) {
			t.Errorf("EDNS %v DO %v: % x, want % x", q.EDNS, q.DO, got, pack(t, want))
		}
	}
}

func TestAppendOPTAndEDE(t *testing.T) {
	t.Parallel()
	msg, q := parsed(t, newMsg("a.example.", dns.TypeA, withEDNS(false)))
	out := AppendHeader(nil, q, RcodeServFail, false, 1, 0, 1)
	out = append(out, msg[HeaderLen:q.End]...)
	opt := len(out)
	out = AppendOPT(out, q, ExtRcodeBadVers)
	if len(out)-opt != OPTLen {
		t.Fatalf("OPT record of %d octets, want %d", len(out)-opt, OPTLen)
	}
	out = AppendEDE(out, opt, EDENoReachableAuthority)
	m := dnstest.Unpack(t, out)
	// miekg/dns joins the header's four rcode bits and OPT's upper eight.
	if m.Rcode != dns.RcodeBadVers|dns.RcodeServerFailure {
		t.Errorf("rcode %d, want BADVERS (16) | SERVFAIL (2)", m.Rcode)
	}
	o := m.IsEdns0()
	if o == nil || len(o.Option) != 1 {
		t.Fatalf("OPT %v, want one option", o)
	}
	if ede, ok := o.Option[0].(*dns.EDNS0_EDE); !ok || ede.InfoCode != EDENoReachableAuthority || ede.ExtraText != "" {
		t.Errorf("option %v, want EDE %d without text", o.Option[0], EDENoReachableAuthority)
	}
}

func TestAppendRecords(t *testing.T) {
	t.Parallel()
	msg, q := parsed(t, newMsg("Svc.Example.COM.", dns.TypeSRV))
	hdr := 3 // a reply need not start the buffer
	out := AppendHeader(make([]byte, hdr), q, RcodeSuccess, true, 1, 0, 0)
	out = append(out, msg[HeaderLen:q.End]...)
	rdata := []byte{0, 0, 0, 100, 0, 80}
	rdata = AppendName(rdata, "web.example.com.")
	out = appendRR(out, QuestionPointer, dns.TypeSRV, dns.ClassINET, 30, rdata)
	// An SOA owned by the zone "example.com.", four octets into the name.
	out = AppendRRHeader(out, Pointer(HeaderLen+4), dns.TypeSOA, dns.ClassINET, 60, 0)
	rdStart := len(out)
	out = AppendName(out, "ns.example.com")
	out = AppendName(out, "hostmaster.example.com.")
	out = append(out, make([]byte, 20)...)
	out[rdStart-1] = byte(len(out) - rdStart)
	SetANCount(out[hdr:], 1)
	SetNSCount(out[hdr:], 1)
	m := dnstest.Unpack(t, out[hdr:])
	if len(m.Answer) != 1 || len(m.Ns) != 1 {
		t.Fatalf("got %v; want one answer and one authority record", m)
	}
	srv, ok := m.Answer[0].(*dns.SRV)
	if !ok || srv.Hdr.Name != "Svc.Example.COM." || srv.Hdr.Ttl != 30 || srv.Port != 80 || srv.Weight != 100 || srv.Target != "web.example.com." {
		t.Errorf("answer %v, want SRV 0 100 80 web.example.com. owned by the name as asked", m.Answer[0])
	}
	s, ok := m.Ns[0].(*dns.SOA)
	if !ok || s.Hdr.Name != "Example.COM." || s.Ns != "ns.example.com." || s.Mbox != "hostmaster.example.com." {
		t.Errorf("authority %v, want an SOA of Example.COM.", m.Ns[0])
	}
}

func TestAppendName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{".", "", "a.", "a", "www.example.com.", longName(maxNameLen)} {
		want := make([]byte, maxNameLen)
		n, err := dns.PackDomainName(dns.Fqdn(name), want, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendName([]byte{9}, name); !bytes.Equal(got[1:], want[:n]) || got[0] != 9 {
			t.Errorf("AppendName(%q) = % x, want % x after the 09", name, got, want[:n])
		}
	}
}
