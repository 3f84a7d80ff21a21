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

// The record types an entry can hold, in the order they are laid out.
const (
	idxA = iota
	idxAAAA
	idxCNAME
	idxSRV
	idxPTR
	numTypes
)

func typeIndex(qtype uint16) (int, bool) {
	switch qtype {
	case dns.TypeA:
		return idxA, true
	case dns.TypeAAAA:
		return idxAAAA, true
	case dns.TypeCNAME:
		return idxCNAME, true
	case dns.TypeSRV:
		return idxSRV, true
	case dns.TypePTR:
		return idxPTR, true
	}
	return 0, false
}

// Answer returns the prepared answer section for qtype and its record count.
// ANY gets every record (RFC 8482 allows less; all is still small here). A
// type the entry does not have yields no records: NODATA.
func (e *Entry) Answer(qtype uint16) (wire []byte, count int) {
	if qtype == dns.TypeANY {
		total := 0
		for _, s := range e.answers.spans {
			total += int(s.count)
		}
		return e.answers.wire, total
	}
	i, ok := typeIndex(qtype)
	if !ok {
		return nil, 0
	}
	s := e.answers.spans[i]
	return e.answers.wire[s.off:s.end], int(s.count)
}

// prepare lays out the entry's records as wire data.
func (e *Entry) prepare(ttl uint32) {
	var w []byte
	mark := func(i int, count int, start int) {
		e.answers.spans[i] = span{off: uint32(start), end: uint32(len(w)), count: uint16(count)}
	}
	start := len(w)
	n := 0
	for _, a := range e.Addrs {
		if a.Is4() {
			b := a.As4()
			w = appendRR(w, dns.TypeA, ttl, b[:])
			n++
		}
	}
	mark(idxA, n, start)
	start, n = len(w), 0
	for _, a := range e.Addrs {
		if a.Is6() {
			b := a.As16()
			w = appendRR(w, dns.TypeAAAA, ttl, b[:])
			n++
		}
	}
	mark(idxAAAA, n, start)
	start, n = len(w), 0
	if e.Alias != "" {
		w = appendRR(w, dns.TypeCNAME, ttl, appendName(nil, e.Alias))
		n++
	}
	mark(idxCNAME, n, start)
	start, n = len(w), 0
	for _, s := range e.SRV {
		rd := binary.BigEndian.AppendUint16(nil, 0)    // priority
		rd = binary.BigEndian.AppendUint16(rd, 100)    // weight (kube-dns's)
		rd = binary.BigEndian.AppendUint16(rd, s.Port) // port
		w = appendRR(w, dns.TypeSRV, ttl, appendName(rd, s.Target))
		n++
	}
	mark(idxSRV, n, start)
	start, n = len(w), 0
	if e.PTR != "" {
		w = appendRR(w, dns.TypePTR, ttl, appendName(nil, e.PTR))
		n++
	}
	mark(idxPTR, n, start)
	e.answers.wire = w
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
