package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// This file reads just enough of the DNS wire format to route, key, check and
// age messages without unpacking them: the relay must hand the client the
// upstream's bytes as they came, and a cache hit must not pay for a full parse.
// Every read is bounds-checked; nothing here follows compression pointers, so
// no input can make it loop or read past the message.

const (
	headerLen = 12

	// Header flag bits in the third and fourth bytes (RFC 1035 4.1.1, RFC 4035 3.2).
	flagQR = 1 << 15
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagRA = 1 << 7
	flagCD = 1 << 4

	opcodeQuery = 0

	rcodeSuccess  = 0
	rcodeServFail = 2
	rcodeNXDomain = 3

	typeSOA = 6
	typeOPT = 41

	// doBit is the DNSSEC OK flag in an OPT record's TTL field (RFC 3225).
	doBit = 1 << 15

	maxNameLen = 255
)

var (
	errShort    = errors.New("message truncated")
	errLabel    = errors.New("bad label")
	errPointer  = errors.New("compression pointer in question")
	errNameLen  = errors.New("name longer than 255 octets")
	errQdcount  = errors.New("question count is not 1")
	errTrailing = errors.New("record data runs past the message")
)

// header is the fixed part of a DNS message.
type header struct {
	id                                 uint16
	flags                              uint16
	qdcount, ancount, nscount, arcount uint16
}

func (h header) opcode() int { return int(h.flags>>11) & 0xF }
func (h header) rcode() int  { return int(h.flags & 0xF) }

func readHeader(msg []byte) (header, error) {
	if len(msg) < headerLen {
		return header{}, errShort
	}
	return header{
		id:      binary.BigEndian.Uint16(msg[0:]),
		flags:   binary.BigEndian.Uint16(msg[2:]),
		qdcount: binary.BigEndian.Uint16(msg[4:]),
		ancount: binary.BigEndian.Uint16(msg[6:]),
		nscount: binary.BigEndian.Uint16(msg[8:]),
		arcount: binary.BigEndian.Uint16(msg[10:]),
	}, nil
}

// skipName returns the offset just past the (possibly compressed) name at off.
// It does not follow pointers: a pointer always ends a name.
func skipName(msg []byte, off int) (int, error) {
	for {
		if off >= len(msg) {
			return 0, errShort
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, nil
			}
			off += 1 + c
		case 0xC0:
			if off+2 > len(msg) {
				return 0, errShort
			}
			return off + 2, nil
		default: // 0x40 and 0x80 are obsolete or unassigned label types.
			return 0, errLabel
		}
	}
}

// question locates the single question of a message.
type question struct {
	end           int // offset just past qclass; the question is msg[headerLen:end]
	nameEnd       int // offset just past the name
	qtype, qclass uint16
}

// readQuestion reads the question at headerLen. The name must be
// uncompressed: it is the first name in the message, so a pointer could only
// point into the header.
func readQuestion(msg []byte) (question, error) {
	off := headerLen
	for {
		if off >= len(msg) {
			return question{}, errShort
		}
		c := int(msg[off])
		if c == 0 {
			off++
			break
		}
		if c&0xC0 == 0xC0 {
			return question{}, errPointer
		}
		if c&0xC0 != 0 {
			return question{}, errLabel
		}
		off += 1 + c
		if off-headerLen > maxNameLen {
			return question{}, errNameLen
		}
	}
	if off-headerLen > maxNameLen {
		return question{}, errNameLen
	}
	if off+4 > len(msg) {
		return question{}, errShort
	}
	return question{
		nameEnd: off,
		end:     off + 4,
		qtype:   binary.BigEndian.Uint16(msg[off:]),
		qclass:  binary.BigEndian.Uint16(msg[off+2:]),
	}, nil
}

// rrHeader is the fixed part of a resource record.
type rrHeader struct {
	typ      uint16
	class    uint16
	ttlOff   int // offset of the 4-byte TTL field
	rdataOff int
	end      int // offset just past the rdata
}

func readRR(msg []byte, off int) (rrHeader, error) {
	off, err := skipName(msg, off)
	if err != nil {
		return rrHeader{}, err
	}
	if off+10 > len(msg) {
		return rrHeader{}, errShort
	}
	rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
	rr := rrHeader{
		typ:      binary.BigEndian.Uint16(msg[off:]),
		class:    binary.BigEndian.Uint16(msg[off+2:]),
		ttlOff:   off + 4,
		rdataOff: off + 10,
		end:      off + 10 + rdlen,
	}
	if rr.end > len(msg) {
		return rrHeader{}, errTrailing
	}
	return rr, nil
}

// request is what Forward needs to know about a client query.
type request struct {
	hdr  header
	q    question
	edns bool // the client sent an OPT record
	do   bool // DNSSEC OK in that OPT record
}

// parseRequest reads a client query: header, its one question, and the OPT
// record if any. Records in other sections (NOTIFY's SOA, UPDATE's
// prerequisites) are only skipped.
func parseRequest(msg []byte) (request, error) {
	var r request
	h, err := readHeader(msg)
	if err != nil {
		return r, err
	}
	if h.qdcount != 1 {
		return r, errQdcount
	}
	q, err := readQuestion(msg)
	if err != nil {
		return r, fmt.Errorf("question: %w", err)
	}
	r.hdr, r.q = h, q
	off := q.end
	records := int(h.ancount) + int(h.nscount) + int(h.arcount)
	firstAdditional := int(h.ancount) + int(h.nscount)
	for i := range records {
		rr, err := readRR(msg, off)
		if err != nil {
			return r, fmt.Errorf("record %d: %w", i, err)
		}
		if i >= firstAdditional && rr.typ == typeOPT {
			r.edns = true
			r.do = binary.BigEndian.Uint32(msg[rr.ttlOff:])&doBit != 0
		}
		off = rr.end
	}
	return r, nil
}

// replyScan is what the cache needs to know about an upstream reply.
type replyScan struct {
	hdr header
	// ttlOffsets are the offsets of every TTL field except OPT's, whose "TTL"
	// holds the extended rcode and flags.
	ttlOffsets []uint16
	// minAnswerTTL is the smallest TTL in the answer section (0 if empty).
	minAnswerTTL uint32
	// soa reports an SOA in the authority section, with the negative-caching
	// TTL RFC 2308 section 5 asks for: min(SOA TTL, SOA MINIMUM).
	soa    bool
	negTTL uint32
}

// scanReply walks every record of a reply. It rejects anything malformed,
// and a message longer than 64 KiB (TTL offsets are 16-bit).
func scanReply(msg []byte) (replyScan, error) {
	var s replyScan
	if len(msg) > 0xFFFF {
		return s, errors.New("message longer than 65535 octets")
	}
	h, err := readHeader(msg)
	if err != nil {
		return s, err
	}
	s.hdr = h
	off := headerLen
	for range int(h.qdcount) {
		if off, err = skipName(msg, off); err != nil {
			return s, fmt.Errorf("question: %w", err)
		}
		if off += 4; off > len(msg) {
			return s, errShort
		}
	}
	answers := int(h.ancount)
	authorityEnd := answers + int(h.nscount)
	records := authorityEnd + int(h.arcount)
	s.ttlOffsets = make([]uint16, 0, records)
	for i := range records {
		rr, err := readRR(msg, off)
		if err != nil {
			return s, fmt.Errorf("record %d: %w", i, err)
		}
		off = rr.end
		if rr.typ == typeOPT {
			continue
		}
		s.ttlOffsets = append(s.ttlOffsets, uint16(rr.ttlOff))
		ttl := readTTL(msg, rr.ttlOff)
		switch {
		case i < answers:
			if i == 0 || ttl < s.minAnswerTTL {
				s.minAnswerTTL = ttl
			}
		case i < authorityEnd && rr.typ == typeSOA && !s.soa:
			minimum, err := soaMinimum(msg, rr)
			if err != nil {
				return s, fmt.Errorf("record %d: SOA: %w", i, err)
			}
			s.soa, s.negTTL = true, min(ttl, minimum)
		}
	}
	return s, nil
}

// readTTL reads a TTL, treating values with the top bit set as 0 (RFC 2181 8).
func readTTL(msg []byte, off int) uint32 {
	ttl := binary.BigEndian.Uint32(msg[off:])
	if ttl > 1<<31-1 {
		return 0
	}
	return ttl
}

// soaMinimum reads the MINIMUM field: two names, then five 32-bit fields.
func soaMinimum(msg []byte, rr rrHeader) (uint32, error) {
	rdata := msg[:rr.end] // names must end inside the rdata
	off, err := skipName(rdata, rr.rdataOff)
	if err != nil {
		return 0, err
	}
	if off, err = skipName(rdata, off); err != nil {
		return 0, err
	}
	if off+20 != rr.end {
		return 0, errTrailing
	}
	return readTTL(msg, off+16), nil
}

// sameQuestion reports whether the question of reply is the one we sent:
// same name ignoring ASCII case (some servers randomise it, 0x20 encoding),
// same type and class, same length.
func sameQuestion(reply []byte, sent []byte, q question) bool {
	if len(reply) < q.end {
		return false
	}
	for i := headerLen; i < q.nameEnd; i++ {
		if lowerASCII(reply[i]) != lowerASCII(sent[i]) {
			return false
		}
	}
	// Label lengths are < 64 and never fold, so a case-insensitive equal
	// name has its labels in the same places.
	for i := q.nameEnd; i < q.end; i++ {
		if reply[i] != sent[i] {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
