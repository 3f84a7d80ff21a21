package resolver

import (
	"encoding/binary"
)

// Header flag bits (RFC 1035 4.1.1).
const (
	flagQR     = 1 << 15
	flagAA     = 1 << 10
	flagTC     = 1 << 9
	flagRD     = 1 << 8
	flagRA     = 1 << 7
	opcodeMask = 0xf << 11
	rcodeMask  = 0xf
	headerLen  = 12
	typeOPT    = 41
	classINET  = 1
	classANY   = 255
	// maxNameLen is the longest wire name (RFC 1035 3.1); the presentation
	// form we build is never longer than the wire form.
	maxNameLen = 255
	// ourUDPSize is the EDNS buffer size we advertise (the DNS flag day 2020
	// value: no fragmentation on any common path).
	ourUDPSize = 1232
	// minUDPSize is what a client without EDNS can take (RFC 1035).
	minUDPSize = 512
)

// Rcodes we produce ourselves.
const (
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNotImp   = 4
	rcodeRefused  = 5
)

// verdict says what the parser made of a packet.
type verdict uint8

const (
	// verdictOK: a well-formed standard query with one question.
	verdictOK verdict = iota
	// verdictDrop: not worth an answer (too short to carry an ID, or a
	// response rather than a query): answering could feed a loop.
	verdictDrop
	// verdictFormErr: a query we can name the ID of but not parse.
	verdictFormErr
	// verdictOther: a well-formed header with an opcode other than QUERY;
	// forwarded as it is.
	verdictOther
)

// request is a parsed query. It points into the packet and a name buffer
// owned by the caller; nothing is allocated.
type request struct {
	id     uint16
	flags  uint16
	qtype  uint16
	qclass uint16
	// qend is the offset just past the question section.
	qend int
	// name is the question name in lower-case presentation form with a
	// trailing dot ("www.example.com."), written into the caller's buffer.
	name []byte
	// plain is false when a label holds a byte that presentation form would
	// have to escape (a dot, a backslash, a space…): such a name is never in
	// the table, so it is only ever forwarded.
	plain bool

	edns        bool
	ednsSize    uint16
	ednsVersion uint8
	do          bool
}

// parse reads the header, the single question and any EDNS OPT record of
// msg. It never reads past len(msg) and never allocates.
func parse(msg []byte, r *request, buf *nameBuf) verdict {
	if len(msg) < headerLen {
		return verdictDrop
	}
	*r = request{id: binary.BigEndian.Uint16(msg), flags: binary.BigEndian.Uint16(msg[2:])}
	if r.flags&flagQR != 0 {
		return verdictDrop
	}
	if r.flags&opcodeMask != 0 {
		return verdictOther
	}
	qd := binary.BigEndian.Uint16(msg[4:])
	an := binary.BigEndian.Uint16(msg[6:])
	ns := binary.BigEndian.Uint16(msg[8:])
	ar := binary.BigEndian.Uint16(msg[10:])
	if qd != 1 {
		return verdictFormErr
	}
	off, ok := r.readQuestionName(msg, headerLen, buf)
	if !ok || off+4 > len(msg) {
		return verdictFormErr
	}
	r.qtype = binary.BigEndian.Uint16(msg[off:])
	r.qclass = binary.BigEndian.Uint16(msg[off+2:])
	r.qend = off + 4
	// A query carries no answer or authority records; skip any a client
	// sent anyway, then look for OPT among the additional records.
	off = r.qend
	for i := 0; i < int(an)+int(ns); i++ {
		if off, ok = skipRR(msg, off); !ok {
			return verdictFormErr
		}
	}
	for i := 0; i < int(ar); i++ {
		start := off
		if off, ok = skipRR(msg, off); !ok {
			return verdictFormErr
		}
		if msg[start] != 0 || binary.BigEndian.Uint16(msg[start+1:]) != typeOPT {
			continue // OPT is owned by the root name
		}
		if r.edns {
			return verdictFormErr // RFC 6891 6.1.1: more than one OPT
		}
		r.edns = true
		r.ednsSize = binary.BigEndian.Uint16(msg[start+3:])
		r.ednsVersion = msg[start+6]
		r.do = msg[start+7]&0x80 != 0
	}
	return verdictOK
}

// readQuestionName converts the uncompressed question name at off into
// lower-case presentation form. Compression pointers are refused: nothing
// precedes the question that they could legally point at.
func (r *request) readQuestionName(msg []byte, off int, buf *nameBuf) (int, bool) {
	n := 0
	r.plain = true
	for {
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(msg) || n+l+1 > maxNameLen {
			return 0, false
		}
		for _, c := range msg[off : off+l] {
			switch {
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			case c == '.' || c == '\\' || c <= ' ' || c >= 0x7f:
				r.plain = false
			}
			buf[n] = c
			n++
		}
		buf[n] = '.'
		n++
		off += l
	}
	if n == 0 { // the root
		buf[0] = '.'
		n = 1
	}
	r.name = buf[:n]
	return off, true
}

// skipRR steps over one resource record starting at off (its owner may be
// compressed), checking every length against the packet.
func skipRR(msg []byte, off int) (int, bool) {
	for { // owner name
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		switch {
		case l == 0:
			off++
		case l&0xc0 == 0xc0:
			off += 2
		case l > 63:
			return 0, false
		default:
			off += 1 + l
			continue
		}
		break
	}
	if off+10 > len(msg) {
		return 0, false
	}
	rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
	off += 10 + rdlen
	if off > len(msg) {
		return 0, false
	}
	return off, true
}

// udpLimit is the largest UDP reply the client can take.
func (r *request) udpLimit() int {
	if r.edns && r.ednsSize > minUDPSize {
		return int(min(r.ednsSize, 4096))
	}
	return minUDPSize
}

// appendHeader writes a reply header for r.
func appendHeader(out []byte, r *request, rcode int, aa bool, qd, an, ar uint16) []byte {
	flags := uint16(flagQR|flagRA) | r.flags&(opcodeMask|flagRD) | uint16(rcode&rcodeMask)
	if aa {
		flags |= flagAA
	}
	out = binary.BigEndian.AppendUint16(out, r.id)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = binary.BigEndian.AppendUint16(out, qd)
	out = binary.BigEndian.AppendUint16(out, an)
	out = binary.BigEndian.AppendUint16(out, 0)
	return binary.BigEndian.AppendUint16(out, ar)
}

// appendOPT writes our OPT record, echoing the client's DO bit (RFC 3225).
func appendOPT(out []byte, r *request, extRcode uint8) []byte {
	out = append(out, 0) // root owner
	out = binary.BigEndian.AppendUint16(out, typeOPT)
	out = binary.BigEndian.AppendUint16(out, ourUDPSize)
	var do byte
	if r.do {
		do = 0x80
	}
	out = append(out, extRcode, 0, do, 0) // ext-rcode, version 0, flags
	return binary.BigEndian.AppendUint16(out, 0)
}

// appendErrorReply writes a reply with no records and the given rcode. The
// question is echoed when it parsed.
func appendErrorReply(out []byte, msg []byte, r *request, rcode int) []byte {
	var qd uint16
	if r.qend > headerLen {
		qd = 1
	}
	var ar uint16
	if r.edns {
		ar = 1
	}
	out = appendHeader(out, r, rcode, false, qd, 0, ar)
	if qd == 1 {
		out = append(out, msg[headerLen:r.qend]...)
	}
	if r.edns {
		out = appendOPT(out, r, 0)
	}
	return out
}
