package table

import (
	"encoding/binary"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/dnswire"
)

// answers holds an entry's records as DNS wire data, ready to follow a
// question: every owner name is dnswire.QuestionPointer, so the reply
// repeats the name exactly as the client spelled it and copying the bytes is
// the whole answer.
type answers struct {
	wire  []byte
	spans [numTypes]span
}

type span struct {
	off, end uint32
	count    uint16
}

// The record sets laid out in answers.wire, in order. ptr is the answer to
// the reverse name of any of the entry's addresses; srv sets follow.
const (
	idxA = iota
	idxAAAA
	idxCNAME
	idxPTR
	numTypes
)

// AppendAnswer appends the answer to qtype to out, a reply whose header
// starts at out[hdr] and whose question (the name at offset 12 of the
// reply, which every prepared owner points at) is written, and sets the
// header's record counts. A name without records of the type is NODATA: the
// zone's SOA goes in the authority section, so that caches in front of the
// client can keep the negative answer (RFC 2308 3). ANY gets every record
// of the name (RFC 8482 allows less; all is still small here). rot rotates a
// set of several addresses, so that clients do not all pick the same first
// one (kube-dns's loadbalance and Istio's proxy shuffle them too): the
// query's ID gives each query its own order without a shared counter.
func (r *Result) AppendAnswer(out []byte, hdr int, qtype uint16, rot uint16) []byte {
	e := r.Entry
	var s span
	switch {
	case r.srv != nil:
		if qtype == dns.TypeSRV || qtype == dns.TypeANY {
			s = r.srv.span
		}
	case r.owners != nil:
		if qtype == dns.TypePTR || qtype == dns.TypeANY {
			for _, o := range r.owners[1:] { // the first is e, appended below
				ptr := o.answers.spans[idxPTR]
				out = append(out, o.answers.wire[ptr.off:ptr.end]...)
				s.count += ptr.count
			}
			ptr := e.answers.spans[idxPTR]
			s.off, s.end, s.count = ptr.off, ptr.end, s.count+ptr.count
		}
	case qtype == dns.TypeANY:
		s = span{off: e.answers.spans[idxA].off, end: e.answers.spans[idxCNAME].end,
			count: e.answers.spans[idxA].count + e.answers.spans[idxAAAA].count + e.answers.spans[idxCNAME].count}
	case qtype == dns.TypeA, qtype == dns.TypeAAAA:
		idx := idxA
		if qtype == dns.TypeAAAA {
			idx = idxAAAA
		}
		out = e.answers.appendRotated(out, idx, rot)
		s.count = e.answers.spans[idx].count
	case qtype == dns.TypeCNAME:
		s = e.answers.spans[idxCNAME]
	}
	out = append(out, e.answers.wire[s.off:s.end]...)
	dnswire.SetANCount(out[hdr:], s.count)
	if s.count == 0 && r.t != nil {
		out = r.t.appendSOA(out, r.t.zoneStart(r.qname))
		dnswire.SetNSCount(out[hdr:], 1)
	}
	return out
}

// appendRotated appends the address records of set idx (all of one size,
// their owner being a pointer) starting with the rot-th.
func (a *answers) appendRotated(out []byte, idx int, rot uint16) []byte {
	s := a.spans[idx]
	rrs := a.wire[s.off:s.end]
	if s.count < 2 {
		return append(out, rrs...)
	}
	cut := int(rot%s.count) * (len(rrs) / int(s.count))
	return append(append(out, rrs[cut:]...), rrs[:cut]...)
}

// Chases reports whether answering qtype means following the entry's
// ExternalName alias (the CNAME alone answers only CNAME queries).
func (r *Result) Chases(qtype uint16) bool {
	return r.Entry.Alias != "" && r.srv == nil && r.owners == nil && qtype != dns.TypeCNAME
}

// Records renders the records AppendAnswer would give, owned by owner, for
// the replies that cannot be a plain copy (CNAME chains).
func (r *Result) Records(owner string, qtype uint16, ttl uint32, rot uint16) []dns.RR {
	e := r.Entry
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	anyType := qtype == dns.TypeANY
	var out []dns.RR
	switch {
	case r.srv != nil:
		if qtype == dns.TypeSRV || anyType {
			for _, s := range r.srv.records {
				out = append(out, &dns.SRV{Hdr: hdr(dns.TypeSRV), Priority: 0, Weight: 100, Port: s.Port, Target: s.Target})
			}
		}
	case r.owners != nil:
		if qtype == dns.TypePTR || anyType {
			for _, o := range r.owners {
				out = append(out, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: o.Name})
			}
		}
	default:
		var v4, v6 []dns.RR
		for _, a := range e.Addrs {
			switch {
			case a.Is4() && (anyType || qtype == dns.TypeA):
				v4 = append(v4, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
			case a.Is6() && (anyType || qtype == dns.TypeAAAA):
				v6 = append(v6, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
		out = append(rotate(v4, rot), rotate(v6, rot)...)
		if e.Alias != "" && (anyType || qtype == dns.TypeCNAME) {
			out = append(out, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: e.Alias})
		}
	}
	return out
}

// rotate starts rrs at its rot-th record, as appendRotated does.
func rotate(rrs []dns.RR, rot uint16) []dns.RR {
	if len(rrs) < 2 {
		return rrs
	}
	cut := int(rot) % len(rrs)
	return append(rrs[cut:], rrs[:cut]...)
}

// prepare lays out the entry's records as wire data. ptr says whether the
// entry is what its addresses' reverse names point at.
func (e *Entry) prepare(ttl uint32, ptr bool) {
	var w []byte
	mark := func(start int, count int) span {
		return span{off: uint32(start), end: uint32(len(w)), count: uint16(count)}
	}
	start, n := len(w), 0
	for _, a := range e.Addrs {
		if a.Is4() {
			b := a.As4()
			w = appendRR(w, dns.TypeA, ttl, b[:])
			n++
		}
	}
	e.answers.spans[idxA] = mark(start, n)
	start, n = len(w), 0
	for _, a := range e.Addrs {
		if a.Is6() {
			b := a.As16()
			w = appendRR(w, dns.TypeAAAA, ttl, b[:])
			n++
		}
	}
	e.answers.spans[idxAAAA] = mark(start, n)
	start, n = len(w), 0
	if e.Alias != "" {
		w = appendRR(w, dns.TypeCNAME, ttl, dnswire.AppendName(nil, e.Alias))
		n++
	}
	e.answers.spans[idxCNAME] = mark(start, n)
	start, n = len(w), 0
	if ptr && len(e.Addrs) > 0 {
		w = appendRR(w, dns.TypePTR, ttl, dnswire.AppendName(nil, e.Name))
		n++
	}
	e.answers.spans[idxPTR] = mark(start, n)
	for i := range e.srv {
		start = len(w)
		for _, s := range e.srv[i].records {
			rd := binary.BigEndian.AppendUint16(nil, 0)    // priority
			rd = binary.BigEndian.AppendUint16(rd, 100)    // weight (kube-dns's)
			rd = binary.BigEndian.AppendUint16(rd, s.Port) // port
			w = appendRR(w, dns.TypeSRV, ttl, dnswire.AppendName(rd, s.Target))
		}
		e.srv[i].span = mark(start, len(e.srv[i].records))
	}
	e.answers.wire = w[:len(w):len(w)]
}

// ownsPTR reports whether the entry's addresses' reverse names point at it.
func (e *Entry) ownsPTR() bool { return e.answers.spans[idxPTR].count > 0 }

// isEndpoint reports whether the entry is a headless Service's endpoint
// name (the Service's own name answers the same addresses but owns no PTR).
func (e *Entry) isEndpoint() bool { return e.AddrSource == FromEndpoints && e.ownsPTR() }

// The SOA of a zone the table answers in, as CoreDNS's kubernetes plugin
// writes it: "ns.dns.<zone> hostmaster.<zone> serial 7200 1800 86400 ttl".
const (
	soaRefresh = 7200
	soaRetry   = 1800
	soaExpire  = 86400
	// soaMaxTTL caps the SOA record's own TTL (CoreDNS's 300).
	soaMaxTTL = 300
)

// appendSOA appends the SOA record of the zone that starts zone bytes into
// the question name: the owner and the zone in both names are compression
// pointers into the question (a presentation-form offset is the wire
// offset of the same label).
func (t *Table) appendSOA(out []byte, zone int) []byte {
	ptr := dnswire.Pointer(dnswire.HeaderLen + zone)
	out = dnswire.AppendRRHeader(out, ptr, dns.TypeSOA, dns.ClassINET, min(t.ttl, soaMaxTTL), 9+13+20)
	out = append(out, 2, 'n', 's', 3, 'd', 'n', 's')
	out = binary.BigEndian.AppendUint16(out, ptr)
	out = append(out, 10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r')
	out = binary.BigEndian.AppendUint16(out, ptr)
	for _, v := range [...]uint32{t.serial, soaRefresh, soaRetry, soaExpire, t.ttl} {
		out = binary.BigEndian.AppendUint32(out, v)
	}
	return out
}

// SOA returns the SOA record for the authority section of a negative answer
// about name (a name this table answers, spelled as the client spelled it).
func (t *Table) SOA(name string) dns.RR {
	name = dns.Fqdn(name)
	zone := name[t.zoneStart(strings.ToLower(name)):]
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: min(t.ttl, soaMaxTTL)},
		Ns:  "ns.dns." + zone, Mbox: "hostmaster." + zone,
		Serial: t.serial, Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: t.ttl,
	}
}

// zoneStart returns where the zone of a local name begins in it: the cluster
// domain for names in it, in-addr.arpa or ip6.arpa for reverse names (the
// zones kube-dns serves), and otherwise the name itself, which ztdns alone
// answers for (a ServiceEntry host, a short form).
func (t *Table) zoneStart(name string) int {
	switch {
	case inZone(name, t.domain):
		return len(name) - len(t.domain)
	case strings.HasSuffix(name, inAddrArpa):
		return len(name) - len(inAddrArpa) + 1
	case strings.HasSuffix(name, ip6Arpa):
		return len(name) - len(ip6Arpa) + 1
	}
	return 0
}

// appendRR appends a record owned by the question's name.
func appendRR(w []byte, rrtype uint16, ttl uint32, rdata []byte) []byte {
	return dnswire.AppendRR(w, dnswire.QuestionPointer, rrtype, dns.ClassINET, ttl, rdata)
}

// reverseName returns the in-addr.arpa or ip6.arpa name of an address.
func reverseName(a netip.Addr) string {
	name, _ := dns.ReverseAddr(a.String())
	return name
}

const (
	inAddrArpa = ".in-addr.arpa."
	ip6Arpa    = ".ip6.arpa."
)

// parseReverse reads the address out of a full reverse name
// ("4.3.2.1.in-addr.arpa.", 32 nibbles then "ip6.arpa."), without
// allocating. Partial names (a /24's zone) are not addresses.
func parseReverse(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, inAddrArpa):
		var b [4]byte
		rest := name[:len(name)-len(inAddrArpa)]
		for i := 3; i >= 0; i-- {
			label := rest
			if i > 0 {
				dot := strings.IndexByte(rest, '.')
				if dot < 0 {
					return netip.Addr{}, false
				}
				label, rest = rest[:dot], rest[dot+1:]
			}
			v, ok := octet(label)
			if !ok {
				return netip.Addr{}, false
			}
			b[i] = v
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, ip6Arpa):
		rest := name[:len(name)-len(ip6Arpa)]
		if len(rest) != 63 { // 32 nibbles and 31 dots
			return netip.Addr{}, false
		}
		var b [16]byte
		for i := range 32 {
			if i > 0 && rest[2*i-1] != '.' {
				return netip.Addr{}, false
			}
			v, ok := nibble(rest[2*i])
			if !ok {
				return netip.Addr{}, false
			}
			// The first label is the last nibble of the address.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

func octet(s string) (byte, bool) {
	if len(s) == 0 || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		v = v*10 + int(s[i]-'0')
	}
	return byte(v), v <= 255
}

func nibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
