package table

import (
	"encoding/binary"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// answers holds an entry's records as DNS wire data, ready to follow a
// question: every owner name is the compression pointer 0xC00C (the question
// name at offset 12), so the reply repeats the name exactly as the client
// spelled it and copying the bytes is the whole answer.
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

// Answer returns the prepared answer section for qtype and its record count.
// ANY gets every record of the name (RFC 8482 allows less; all is still
// small here). A type the name does not have yields no records: NODATA.
func (r Result) Answer(qtype uint16) (wire []byte, count int) {
	e := r.Entry
	var s span
	switch {
	case r.srv != nil:
		if qtype != dns.TypeSRV && qtype != dns.TypeANY {
			return nil, 0
		}
		s = r.srv.span
	case r.reverse:
		if qtype != dns.TypePTR && qtype != dns.TypeANY {
			return nil, 0
		}
		s = e.answers.spans[idxPTR]
	case qtype == dns.TypeANY:
		s = span{off: e.answers.spans[idxA].off, end: e.answers.spans[idxCNAME].end,
			count: e.answers.spans[idxA].count + e.answers.spans[idxAAAA].count + e.answers.spans[idxCNAME].count}
	case qtype == dns.TypeA:
		s = e.answers.spans[idxA]
	case qtype == dns.TypeAAAA:
		s = e.answers.spans[idxAAAA]
	case qtype == dns.TypeCNAME:
		s = e.answers.spans[idxCNAME]
	default:
		return nil, 0
	}
	return e.answers.wire[s.off:s.end], int(s.count)
}

// Chases reports whether answering qtype means following the entry's
// ExternalName alias (the CNAME alone answers only CNAME queries).
func (r Result) Chases(qtype uint16) bool {
	return r.Entry.Alias != "" && r.srv == nil && !r.reverse && qtype != dns.TypeCNAME
}

// Records renders the records Answer would give, owned by owner, for the
// replies that cannot be a plain copy (CNAME chains).
func (r Result) Records(owner string, qtype uint16, ttl uint32) []dns.RR {
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
	case r.reverse:
		if qtype == dns.TypePTR || anyType {
			out = append(out, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: e.Name})
		}
	default:
		for _, a := range e.Addrs {
			switch {
			case a.Is4() && (anyType || qtype == dns.TypeA):
				out = append(out, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
			case a.Is6() && (anyType || qtype == dns.TypeAAAA):
				out = append(out, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
		if e.Alias != "" && (anyType || qtype == dns.TypeCNAME) {
			out = append(out, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: e.Alias})
		}
	}
	return out
}

// prepare lays out the entry's records as wire data.
func (e *Entry) prepare(ttl uint32) {
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
		w = appendRR(w, dns.TypeCNAME, ttl, appendName(nil, e.Alias))
		n++
	}
	e.answers.spans[idxCNAME] = mark(start, n)
	start, n = len(w), 0
	if len(e.Addrs) > 0 && !isWildcard(e.Name) {
		w = appendRR(w, dns.TypePTR, ttl, appendName(nil, e.Name))
		n++
	}
	e.answers.spans[idxPTR] = mark(start, n)
	for i := range e.srv {
		start = len(w)
		for _, s := range e.srv[i].records {
			rd := binary.BigEndian.AppendUint16(nil, 0)    // priority
			rd = binary.BigEndian.AppendUint16(rd, 100)    // weight (kube-dns's)
			rd = binary.BigEndian.AppendUint16(rd, s.Port) // port
			w = appendRR(w, dns.TypeSRV, ttl, appendName(rd, s.Target))
		}
		e.srv[i].span = mark(start, len(e.srv[i].records))
	}
	e.answers.wire = w[:len(w):len(w)]
}

func appendRR(w []byte, rrtype uint16, ttl uint32, rdata []byte) []byte {
	w = append(w, 0xc0, 0x0c)
	w = binary.BigEndian.AppendUint16(w, rrtype)
	w = binary.BigEndian.AppendUint16(w, dns.ClassINET)
	w = binary.BigEndian.AppendUint32(w, ttl)
	w = binary.BigEndian.AppendUint16(w, uint16(len(rdata)))
	return append(w, rdata...)
}

// appendName writes a fully qualified, validated name uncompressed.
func appendName(w []byte, fqdn string) []byte {
	for label := range strings.SplitSeq(strings.TrimSuffix(fqdn, "."), ".") {
		w = append(w, byte(len(label)))
		w = append(w, label...)
	}
	return append(w, 0)
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
