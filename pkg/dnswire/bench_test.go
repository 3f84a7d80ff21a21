package dnswire

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// The benchmarks below do the same job three ways on the same messages:
// with this package, with miekg/dns (Unpack, Pack: what the slow path
// uses) and with golang.org/x/net/dns/dnsmessage (Parser, Builder: the
// standard library's own DNS code). They keep measurable why the query path
// reads and writes the wire format by hand. Compare them with
//
//	go test -run '^$' -bench . -count 10 ./pkg/dnswire/ | benchstat -col /impl -

// benchMessage is a query and the reply it gets.
type benchMessage struct {
	name  string
	query *dns.Msg
	reply *dns.Msg
}

// benchMessages are a client's query, a typical answer to it (a CNAME and
// two addresses) and a large one (a headless Service of 100 pods), each
// with EDNS, compressed as servers send them.
func benchMessages(tb testing.TB) []benchMessage {
	q := newMsg("www.example.com.", dns.TypeA, withEDNS(false))
	typical := newMsg("www.example.com.", dns.TypeA, withEDNS(false), func(m *dns.Msg) { m.Response = true },
		records(tb, answer, "www.example.com. 300 IN CNAME cdn.example.com.", "cdn.example.com. 60 IN A 198.51.100.1", "cdn.example.com. 60 IN A 198.51.100.2"))
	qLarge := newMsg("web.default.svc.cluster.local.", dns.TypeA, withEDNS(false))
	large := newMsg("web.default.svc.cluster.local.", dns.TypeA, withEDNS(false), func(m *dns.Msg) { m.Response, m.Authoritative = true, true })
	for i := range 100 {
		large.Answer = append(large.Answer, &dns.A{Hdr: dns.RR_Header{Name: "web.default.svc.cluster.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A: netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(1 + i%250)}).AsSlice()})
	}
	for _, m := range []*dns.Msg{typical, large} {
		m.Compress = true
	}
	return []benchMessage{
		{"query", q, nil},
		{"answer", q, typical},
		{"large", qLarge, large},
	}
}

// scanned is what each parser reports, to check they agree.
type scanned struct {
	qtype    uint16
	records  int
	minTTL   uint32
	udpSize  uint16
	hasEDNS  bool
	question int
}

func scanDNSWire(msg []byte, name *NameBuf) (scanned, error) {
	var q Query
	if err := ParseQuery(msg, &q, name); err != nil {
		return scanned{}, err
	}
	return scanned{qtype: q.Type, udpSize: q.UDPSize, hasEDNS: q.EDNS, question: 1}, nil
}

func scanReplyDNSWire(msg []byte) (scanned, error) {
	s, err := ScanReply(msg)
	return scanned{records: len(s.TTLOffsets), minTTL: s.MinAnswerTTL, question: int(s.QDCount)}, err
}

func scanMiekg(msg []byte) (scanned, error) {
	var m dns.Msg
	if err := m.Unpack(msg); err != nil {
		return scanned{}, err
	}
	s := scanned{qtype: m.Question[0].Qtype, question: len(m.Question), records: len(m.Answer) + len(m.Ns)}
	for i, rr := range m.Answer {
		if ttl := rr.Header().Ttl; i == 0 || ttl < s.minTTL {
			s.minTTL = ttl
		}
	}
	for _, rr := range m.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			s.hasEDNS, s.udpSize = true, opt.UDPSize()
		} else {
			s.records++
		}
	}
	return s, nil
}

// scanDNSMessage reads what ParseQuery and ScanReply read: the question,
// every record's header (TTLs, the OPT's fields) and no record data.
func scanDNSMessage(p *dnsmessage.Parser, msg []byte) (scanned, error) {
	if _, err := p.Start(msg); err != nil {
		return scanned{}, err
	}
	q, err := p.Question()
	if err != nil {
		return scanned{}, err
	}
	s := scanned{qtype: uint16(q.Type), question: 1}
	if err := p.SkipAllQuestions(); err != nil {
		return s, err
	}
	sections := []struct {
		header func() (dnsmessage.ResourceHeader, error)
		skip   func() error
	}{{p.AnswerHeader, p.SkipAnswer}, {p.AuthorityHeader, p.SkipAuthority}, {p.AdditionalHeader, p.SkipAdditional}}
	for i, sec := range sections {
		for {
			h, err := sec.header()
			if err == dnsmessage.ErrSectionDone {
				break
			}
			if err != nil {
				return s, err
			}
			switch {
			case h.Type == dnsmessage.TypeOPT:
				s.hasEDNS, s.udpSize = true, uint16(h.Class)
			case i == 0 && (s.records == 0 || h.TTL < s.minTTL):
				s.minTTL = h.TTL
				fallthrough
			default:
				s.records++
			}
			if err := sec.skip(); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

// impl is one way of doing a benchmark's job.
type impl[T any] struct {
	name string
	op   func() (T, error)
}

// sideBySide runs every impl on the same message, each a sub-benchmark
// msg=<msg>/impl=<name> timed after check has seen its result. The first
// impl is the base: each of the others also reports its time per op as a
// multiple of the base's in the same run, the x-dnswire column.
func sideBySide[T any](b *testing.B, msg string, check func(testing.TB, T), impls ...impl[T]) {
	var base float64
	for i, im := range impls {
		b.Run(fmt.Sprintf("msg=%s/impl=%s", msg, im.name), func(b *testing.B) {
			got, err := im.op()
			if err != nil {
				b.Fatal(err)
			}
			check(b, got)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = im.op()
			}
			// The function runs again with a larger b.N until the timing
			// is stable: the last run's figure is the one printed.
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			if i == 0 {
				base = perOp
			} else if base > 0 {
				b.ReportMetric(perOp/base, "x-dnswire")
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	for _, m := range benchMessages(b) {
		wire, isQuery := m.reply, false
		if wire == nil {
			wire, isQuery = m.query, true
		}
		msg := pack(b, wire)
		var name NameBuf
		var p dnsmessage.Parser
		// check makes sure a parser read what is there.
		check := func(tb testing.TB, got scanned) {
			if got.qtype == 0 && isQuery || got.question != 1 || (!isQuery && got.records != len(wire.Answer)+len(wire.Ns)+len(wire.Extra)-1) {
				tb.Fatalf("read %+v from %v", got, wire)
			}
		}
		sideBySide(b, m.name, check,
			impl[scanned]{"dnswire", func() (scanned, error) {
				if isQuery {
					return scanDNSWire(msg, &name)
				}
				return scanReplyDNSWire(msg)
			}},
			impl[scanned]{"miekg", func() (scanned, error) { return scanMiekg(msg) }},
			impl[scanned]{"dnsmessage", func() (scanned, error) { return scanDNSMessage(&p, msg) }},
		)
	}
}

func BenchmarkPack(b *testing.B) {
	for _, m := range benchMessages(b)[1:] {
		msg := pack(b, m.query)
		var q Query
		if err := ParseQuery(msg, &q, nil); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, 8192)
		check := func(tb testing.TB, out []byte) {
			if got := dnstest.Unpack(tb, out); len(got.Answer) != len(m.reply.Answer) || got.Answer[0].String() != m.reply.Answer[0].String() {
				tb.Fatalf("packed %v, want %v", got, m.reply)
			}
		}
		sideBySide(b, m.name, check,
			impl[[]byte]{"dnswire", func() ([]byte, error) { return packDNSWire(buf[:0], msg, &q, m.reply), nil }},
			impl[[]byte]{"miekg", func() ([]byte, error) { return m.reply.PackBuffer(buf[:cap(buf)]) }},
			impl[[]byte]{"dnsmessage", func() ([]byte, error) { return packDNSMessage(buf[:0], m.reply) }},
		)
	}
}

// packDNSWire writes the reply to q as the resolver would, from fields: the
// records of the answer's owner point at the question, those of a CNAME's
// target at the target.
func packDNSWire(out, msg []byte, q *Query, reply *dns.Msg) []byte {
	out = AppendHeader(out, q, RcodeSuccess, reply.Authoritative, 1, uint16(len(reply.Answer)), 1)
	out = append(out, msg[HeaderLen:q.End]...)
	owner := uint16(QuestionPointer)
	for _, rr := range reply.Answer {
		switch rr := rr.(type) {
		case *dns.CNAME:
			out = AppendRRHeader(out, owner, dns.TypeCNAME, dns.ClassINET, rr.Hdr.Ttl, uint16(len(rr.Target)+1))
			owner = Pointer(len(out))
			out = AppendName(out, rr.Target)
		case *dns.A:
			out = appendRR(out, owner, dns.TypeA, dns.ClassINET, rr.Hdr.Ttl, rr.A.To4())
		}
	}
	return AppendOPT(out, q, 0)
}

func packDNSMessage(buf []byte, reply *dns.Msg) ([]byte, error) {
	bld := dnsmessage.NewBuilder(buf, dnsmessage.Header{ID: reply.Id, Response: true, Authoritative: reply.Authoritative, RecursionDesired: true})
	bld.EnableCompression()
	if err := bld.StartQuestions(); err != nil {
		return nil, err
	}
	q := reply.Question[0]
	if err := bld.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(q.Name), Type: dnsmessage.Type(q.Qtype), Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	if err := bld.StartAnswers(); err != nil {
		return nil, err
	}
	for _, rr := range reply.Answer {
		h := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(rr.Header().Name), Class: dnsmessage.ClassINET, TTL: rr.Header().Ttl}
		var err error
		switch rr := rr.(type) {
		case *dns.CNAME:
			err = bld.CNAMEResource(h, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(rr.Target)})
		case *dns.A:
			err = bld.AResource(h, dnsmessage.AResource{A: [4]byte(rr.A.To4())})
		}
		if err != nil {
			return nil, err
		}
	}
	if err := bld.StartAdditionals(); err != nil {
		return nil, err
	}
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(EDNSUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, err
	}
	if err := bld.OPTResource(opt, dnsmessage.OPTResource{}); err != nil {
		return nil, err
	}
	return bld.Finish()
}

// BenchmarkCacheHit is what a cache hit costs: a stored reply handed to
// the next client with its TTLs aged by the time spent in the cache and
// the client's ID. dnswire keeps the bytes and the TTL offsets ScanReply
// found when the reply was stored (what the forwarder does); the peers
// keep the parsed message and pack a copy (what a cache built on them
// does).
func BenchmarkCacheHit(b *testing.B) {
	const elapsed, clientID = 7, 0x4242
	for _, m := range benchMessages(b)[1:] {
		msg := pack(b, m.reply)
		s, err := ScanReply(msg)
		if err != nil {
			b.Fatal(err)
		}
		stored := new(dns.Msg)
		if err := stored.Unpack(msg); err != nil {
			b.Fatal(err)
		}
		var storedDM dnsmessage.Message
		if err := storedDM.Unpack(msg); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, 8192)
		check := func(tb testing.TB, out []byte) {
			got := dnstest.Unpack(tb, out)
			if got.Id != clientID || len(got.Answer) != len(m.reply.Answer) || got.Answer[0].Header().Ttl != m.reply.Answer[0].Header().Ttl-elapsed {
				tb.Fatalf("cache hit gave %v, want %v aged by %ds", got, m.reply, elapsed)
			}
		}
		sideBySide(b, m.name, check,
			impl[[]byte]{"dnswire", func() ([]byte, error) {
				out := append(buf[:0], msg...)
				AgeTTLs(out, s.TTLOffsets, elapsed)
				out[0], out[1] = clientID>>8, clientID&0xFF
				return out, nil
			}},
			impl[[]byte]{"miekg", func() ([]byte, error) {
				c := stored.Copy()
				c.Id = clientID
				for _, rrs := range [][]dns.RR{c.Answer, c.Ns, c.Extra} {
					for _, rr := range rrs {
						if h := rr.Header(); h.Rrtype != dns.TypeOPT {
							h.Ttl -= min(h.Ttl, elapsed)
						}
					}
				}
				return c.PackBuffer(buf[:cap(buf)])
			}},
			impl[[]byte]{"dnsmessage", func() ([]byte, error) {
				c := storedDM
				c.ID = clientID
				for _, rrs := range []*[]dnsmessage.Resource{&c.Answers, &c.Authorities, &c.Additionals} {
					aged := make([]dnsmessage.Resource, len(*rrs))
					for i, rr := range *rrs {
						if rr.Header.Type != dnsmessage.TypeOPT {
							rr.Header.TTL -= min(rr.Header.TTL, elapsed)
						}
						aged[i] = rr
					}
					*rrs = aged
				}
				return c.AppendPack(buf[:0])
			}},
		)
	}
}

// BenchmarkHostileNames is what checking the names of a reply costs at
// its worst: 64 KB of names each behind as many pointers as a name may
// take (hostileNames), which a hostile upstream can send for any query a
// pod makes of it, read by ScanReply (a reply that may be cached) and
// PlanFit (one cut to a client's UDP buffer); and an ordinary large
// reply: 1,800 addresses of one name, which every owner points to.
func BenchmarkHostileNames(b *testing.B) {
	msgs := hostileNames(b)
	many := newMsg("web.default.svc.cluster.local.", dns.TypeA, withEDNS(false), func(m *dns.Msg) { m.Response, m.Compress = true, true })
	for i := range 1800 {
		many.Answer = append(many.Answer, &dns.A{Hdr: dns.RR_Header{Name: "web.default.svc.cluster.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A: netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(1 + i%250)}).AsSlice()})
	}
	msgs["1800 addresses"] = pack(b, many)
	for _, name := range []string{"deepest", "every run", "every label", "1800 addresses"} {
		msg := msgs[name]
		b.Run("msg="+name+"/op=ScanReply", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ScanReply(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("msg="+name+"/op=PlanFit", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := PlanFit(msg, 1232); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
