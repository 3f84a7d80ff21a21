// Package dnswire reads and writes just enough of the DNS wire format
// (RFC 1035, RFC 6891) to answer, route, key, check and age messages without
// unpacking them into records: the resolver answers known names by copying
// prepared bytes, and the forwarder relays an upstream's reply as it came.
// Nothing here allocates on the query path.
//
// Every read is bounds-checked against the message. Compression pointers
// are stepped over, not followed, so no input can make a reader loop or
// read past the message; a name that must be read (the question's) may not
// be compressed at all. The exceptions, readName (for a CNAME's target,
// and to compare two owners when a cut keeps whole RRsets) and checkName
// (a reply is cached or cut only when every pointer leads back to a prior
// name), follow at most maxPointers of them per name.
package dnswire

import (
	"encoding/binary"
	"errors"
)

// Sizes.
const (
	// HeaderLen is the length of the fixed header; the question follows it.
	HeaderLen = 12
	// maxNameLen is the longest name in wire form (RFC 1035 3.1), its root
	// label included; the presentation form with a trailing dot is one
	// octet shorter.
	maxNameLen = 255
	// minUDPSize is the largest UDP reply a client without EDNS takes.
	minUDPSize = 512
	// maxUDPSize caps what an EDNS client may ask for: 4096 is what
	// resolvers send, and more only fragments.
	maxUDPSize = 4096
	// EDNSUDPSize is the UDP payload size we advertise in our own OPT
	// records (the DNS flag day 2020 value: no fragmentation on any common
	// path).
	EDNSUDPSize = 1232
)

// Header flag bits, in the 16 bits after the ID (RFC 1035 4.1.1,
// RFC 4035 3.2).
const (
	FlagQR     = 1 << 15
	opcodeMask = 0xF << 11
	flagAA     = 1 << 10
	FlagTC     = 1 << 9
	FlagRD     = 1 << 8
	flagRA     = 1 << 7
	FlagAD     = 1 << 5
	FlagCD     = 1 << 4
	rcodeMask  = 0xF
)

// Opcodes: a standard query, and the two others the resolver relays
// (RFC 1996, RFC 2136).
const (
	OpcodeQuery  = 0
	OpcodeNotify = 4
	OpcodeUpdate = 5
)

// Rcodes (RFC 1035 4.1.1).
const (
	RcodeSuccess  = 0
	RcodeFormErr  = 1
	RcodeServFail = 2
	RcodeNXDomain = 3
	RcodeNotImp   = 4
	RcodeRefused  = 5
)

// ExtRcodeBadVers is BADVERS (16) as carried in the OPT record's upper
// eight rcode bits (RFC 6891 6.1.3).
const ExtRcodeBadVers = 1

// Record types only this package reads.
const (
	typeA     = 1
	typeNS    = 2
	typeMD    = 3
	typeMF    = 4
	typeCNAME = 5
	typeSOA   = 6
	typeMB    = 7
	typeMG    = 8
	typeMR    = 9
	typePTR   = 12
	typeMINFO = 14
	typeMX    = 15
	typeTXT   = 16
	typeAAAA  = 28
	typeOPT   = 41
	typeANY   = 255
	// typeStandIn is the type of the record a read of a reply's first
	// records puts in place of one too large to copy (appendStandIn): the
	// first of the private use range (RFC 6895 3.1), which no server
	// sends and which readers decode as unknown (RFC 3597).
	typeStandIn = 0xFF00
)

// EDNS options (RFC 8914).
const (
	// optionEDE is the Extended DNS Error option.
	optionEDE = 15
	// EDENoReachableAuthority is the EDE info code for "no upstream
	// answered".
	EDENoReachableAuthority = 22
)

// ErrQDCount: a query without exactly one question, the rest of which
// parsed (ParseQuery).
var ErrQDCount = errors.New("question count is not 1")

var (
	errShort     = errors.New("message truncated")
	errLabel     = errors.New("bad label type")
	errPointer   = errors.New("compression pointer in question")
	errNameLen   = errors.New("name longer than 255 octets")
	errRdata     = errors.New("record data runs past the message")
	errTwoOPT    = errors.New("more than one OPT record")
	errMsgLen    = errors.New("message longer than 65535 octets")
	errSOALength = errors.New("SOA data is not two names and five numbers")
	errPointers  = errors.New("name behind too many compression pointers")
	errCNAME     = errors.New("CNAME data is not one name")
)

// Header is the fixed part of a message.
type Header struct {
	ID                                 uint16
	Flags                              uint16
	QDCount, ANCount, NSCount, ARCount uint16
}

// Opcode returns the header's opcode.
func (h Header) Opcode() int { return int(h.Flags&opcodeMask) >> 11 }

// Rcode returns the header's rcode (its lower four bits; EDNS carries the
// upper eight in OPT).
func (h Header) Rcode() int { return int(h.Flags & rcodeMask) }

// HeaderRcode returns the rcode in the header of msg, which must hold one
// (its lower four bits: EDNS carries the upper eight in OPT). The resolver
// reads it back from replies it built to count them.
func HeaderRcode(msg []byte) int { return int(msg[3] & rcodeMask) }

// HeaderFlags returns the flags in the header of msg, which must hold one.
func HeaderFlags(msg []byte) uint16 { return binary.BigEndian.Uint16(msg[2:]) }

// ReadHeader reads the header of msg.
func ReadHeader(msg []byte) (Header, error) {
	var h Header
	if len(msg) < HeaderLen {
		return h, errShort
	}
	h.read(msg)
	return h, nil
}

// read reads the header of a message of at least HeaderLen octets. It sets
// the fields one by one: on the query path h is part of a larger struct,
// and building a Header apart and copying it in costs more than parsing.
func (h *Header) read(msg []byte) {
	_ = msg[HeaderLen-1]
	h.ID = binary.BigEndian.Uint16(msg[0:])
	h.Flags = binary.BigEndian.Uint16(msg[2:])
	h.QDCount = binary.BigEndian.Uint16(msg[4:])
	h.ANCount = binary.BigEndian.Uint16(msg[6:])
	h.NSCount = binary.BigEndian.Uint16(msg[8:])
	h.ARCount = binary.BigEndian.Uint16(msg[10:])
}

// skipName returns the offset just past the (possibly compressed) name at
// off. It does not follow pointers: a pointer always ends a name.
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
		default: // 0x40 and 0x80 are obsolete or unassigned label types
			return 0, errLabel
		}
	}
}

// skipQuestions steps over the n questions starting at off, and returns
// where they end. Each takes 5 octets at least, so however large n is,
// the walk ends with the message.
func skipQuestions(msg []byte, off, n int) (int, error) {
	for range n {
		var err error
		if off, err = skipName(msg, off); err != nil {
			return 0, err
		}
		if off += 4; off > len(msg) {
			return 0, errShort
		}
	}
	return off, nil
}

// maxPointers bounds the compression pointers readName follows in one
// name, as miekg/dns does: enough for a name of one-octet labels each
// behind a pointer of its own, and what keeps a pointer loop from looping.
const maxPointers = (maxNameLen+1)/2 - 2

// readName reads the name at off into buf, uncompressed and lower-cased
// (ASCII), following compression pointers; end is where it ends at off
// (past its first pointer). A name longer than maxNameLen octets, or
// behind more than maxPointers pointers, is an error.
func readName(msg []byte, off int, buf *[maxNameLen]byte) (name []byte, end int, err error) {
	n, pointers := 0, 0
	for {
		if off >= len(msg) {
			return nil, 0, errShort
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c != 0 && n+1+c >= maxNameLen { // the root label still to come
				return nil, 0, errNameLen
			}
			if off+1+c > len(msg) {
				return nil, 0, errShort
			}
			buf[n] = byte(c)
			for i, b := range msg[off+1 : off+1+c] {
				buf[n+1+i] = lowerASCII(b)
			}
			n += 1 + c
			off += 1 + c
			if c == 0 {
				if pointers == 0 {
					end = off
				}
				return buf[:n], end, nil
			}
		case 0xC0:
			if off+2 > len(msg) {
				return nil, 0, errShort
			}
			if pointers == 0 {
				end = off + 2
			}
			if pointers++; pointers > maxPointers {
				return nil, 0, errPointers
			}
			off = int(binary.BigEndian.Uint16(msg[off:]) &^ 0xC000)
		default: // 0x40 and 0x80 are obsolete or unassigned label types
			return nil, 0, errLabel
		}
	}
}

// record locates one resource record in a message.
type record struct {
	Type uint16
	// TTLOff is the offset of the 4-octet TTL field (of OPT: the extended
	// rcode, version and flags).
	TTLOff int
	// RdataOff and End delimit the record data.
	RdataOff, End int
}

// rrFixedLen is what follows a record's owner: type, class, TTL, rdlength.
const rrFixedLen = 10

// minRRLen is the shortest record: the root owner and the fixed part.
const minRRLen = 1 + rrFixedLen

// readRR reads the record starting at off; its owner may be compressed.
func readRR(msg []byte, off int) (record, error) {
	fixed, end, err := skipRR(msg, off)
	if err != nil {
		return record{}, err
	}
	return record{
		Type:     binary.BigEndian.Uint16(msg[fixed:]),
		TTLOff:   fixed + 4,
		RdataOff: fixed + rrFixedLen,
		End:      end,
	}, nil
}

// skipRR steps over the record at off: fixed is where its type, class,
// TTL and data length start (just past the owner), end where it ends.
func skipRR(msg []byte, off int) (fixed, end int, err error) {
	if fixed, err = skipName(msg, off); err != nil {
		return 0, 0, err
	}
	if fixed+rrFixedLen > len(msg) {
		return 0, 0, errShort
	}
	end = fixed + rrFixedLen + int(binary.BigEndian.Uint16(msg[fixed+8:]))
	if end > len(msg) {
		return 0, 0, errRdata
	}
	return fixed, end, nil
}

// isOPT reports whether the record at off, its fixed part at fixed (see
// skipRR), is an OPT record: type 41 owned by the root.
func isOPT(msg []byte, off, fixed int) bool {
	return fixed == off+1 && binary.BigEndian.Uint16(msg[fixed:]) == typeOPT
}

// readTTL reads the TTL at off, treating values with the top bit set as 0
// (RFC 2181 8).
func readTTL(msg []byte, off int) uint32 {
	ttl := binary.BigEndian.Uint32(msg[off:])
	if ttl > 1<<31-1 {
		return 0
	}
	return ttl
}

// lowerASCII folds an ASCII upper-case letter to lower case; DNS compares
// names without regard to ASCII case (RFC 4343) and leaves other octets
// alone.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// AppendLower appends b with ASCII letters folded to lower case. Applied to
// a wire name it gives a key that is the same for every spelling.
func AppendLower(dst, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, lowerASCII(c))
	}
	return dst
}

// sameSet reports whether the records at a and b are of one RRset: the same
// owner (sameName), type and class.
func sameSet(msg []byte, a, b int) bool {
	fa, _, errA := skipRR(msg, a)
	fb, _, errB := skipRR(msg, b)
	return errA == nil && errB == nil && string(msg[fa:fa+4]) == string(msg[fb:fb+4]) && sameName(msg, a, b)
}

// sameName reports whether the names at a and b are the same, ignoring
// ASCII case (RFC 4343), whichever way each is compressed; a name that
// does not read (readName) is no name: false.
func sameName(msg []byte, a, b int) bool {
	var bufA, bufB [maxNameLen]byte
	x, _, errA := readName(msg, a, &bufA)
	y, _, errB := readName(msg, b, &bufB)
	return errA == nil && errB == nil && string(x) == string(y)
}
