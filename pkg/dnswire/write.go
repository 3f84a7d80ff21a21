package dnswire

import "encoding/binary"

// QuestionPointer is the compression pointer (RFC 1035 4.1.4) to the
// question's name: a record owned by the name asked can use it as its whole
// owner, so a reply repeats the name exactly as the client spelled it.
const QuestionPointer = 0xC000 | HeaderLen

// OPTLen is the length of an OPT record without options.
const OPTLen = 1 + rrFixedLen

// Pointer returns the compression pointer to offset off (below 0x4000).
func Pointer(off int) uint16 { return 0xC000 | uint16(off) }

// AppendHeader appends the header of a reply to q with the given rcode and
// record counts (no authority records: SetNSCount adds them). The reply
// keeps q's ID, opcode, RD and CD bits (RFC 4035 3.2.2), says recursion is
// available, and is authoritative when aa is set.
func AppendHeader(out []byte, q *Query, rcode int, aa bool, qd, an, ar uint16) []byte {
	flags := uint16(FlagQR|flagRA) | q.Flags&(opcodeMask|FlagRD|FlagCD) | uint16(rcode&rcodeMask)
	if aa {
		flags |= flagAA
	}
	out = binary.BigEndian.AppendUint16(out, q.ID)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = binary.BigEndian.AppendUint16(out, qd)
	out = binary.BigEndian.AppendUint16(out, an)
	out = binary.BigEndian.AppendUint16(out, 0)
	return binary.BigEndian.AppendUint16(out, ar)
}

// SetANCount sets the answer count of the message starting at msg[0].
func SetANCount(msg []byte, n uint16) { binary.BigEndian.PutUint16(msg[6:], n) }

// SetNSCount sets the authority count of the message starting at msg[0].
func SetNSCount(msg []byte, n uint16) { binary.BigEndian.PutUint16(msg[8:], n) }

// SetARCount sets the additional count of the message starting at msg[0].
func SetARCount(msg []byte, n uint16) { binary.BigEndian.PutUint16(msg[10:], n) }

// AddARCount adds n to the additional count of the message starting at
// msg[0].
func AddARCount(msg []byte, n uint16) {
	binary.BigEndian.PutUint16(msg[10:], binary.BigEndian.Uint16(msg[10:])+n)
}

// AppendOPT appends our OPT record: EDNSUDPSize, version 0, the given
// extended rcode, and q's DO bit echoed (RFC 3225), without options
// (AppendEDE adds one).
func AppendOPT(out []byte, q *Query, extRcode uint8) []byte {
	var do byte
	if q.DO {
		do = 0x80
	}
	out = append(out, 0) // the root owns it
	out = binary.BigEndian.AppendUint16(out, typeOPT)
	out = binary.BigEndian.AppendUint16(out, EDNSUDPSize)
	out = append(out, extRcode, 0, do, 0)        // extended rcode, version, flags
	return binary.BigEndian.AppendUint16(out, 0) // no options yet
}

// AppendEDE appends an Extended DNS Error option (RFC 8914) with the given
// info code and no text to the OPT record at out[opt:], which must be the
// last record in out.
func AppendEDE(out []byte, opt int, infoCode uint16) []byte {
	rdlen := opt + OPTLen - 2
	binary.BigEndian.PutUint16(out[rdlen:], binary.BigEndian.Uint16(out[rdlen:])+6)
	out = binary.BigEndian.AppendUint16(out, optionEDE)
	out = binary.BigEndian.AppendUint16(out, 2)
	return binary.BigEndian.AppendUint16(out, infoCode)
}

// AppendErrorReply appends a reply to q, the query msg, with no records and
// the given rcode. The question is echoed when it parsed, and an EDNS
// client gets an OPT record.
func AppendErrorReply(out, msg []byte, q *Query, rcode int) []byte {
	return appendEmptyReply(out, msg, q, rcode, 0, false)
}

// AppendBadVers appends BADVERS (RFC 6891 6.1.3) to q, the query msg, of
// an EDNS version other than 0: no records, the question when it parsed,
// and our OPT record, version 0, carrying the extended rcode.
func AppendBadVers(out, msg []byte, q *Query) []byte {
	return appendEmptyReply(out, msg, q, RcodeSuccess, ExtRcodeBadVers, false)
}

// AppendTruncated appends an authoritative empty reply to q, the query msg,
// with TC set: the client asks again over TCP (RFC 7766 5).
func AppendTruncated(out, msg []byte, q *Query) []byte {
	return appendEmptyReply(out, msg, q, RcodeSuccess, 0, true)
}

// appendEmptyReply appends a reply to q with no records: the question when
// it parsed, and an OPT record with extRcode for an EDNS client. A
// truncated one is authoritative (AA) and has TC set.
func appendEmptyReply(out, msg []byte, q *Query, rcode int, extRcode uint8, truncated bool) []byte {
	var qd, ar uint16
	if q.End > HeaderLen {
		qd = 1
	}
	if q.EDNS {
		ar = 1
	}
	hdr := len(out)
	out = AppendHeader(out, q, rcode, truncated, qd, 0, ar)
	if truncated {
		out[hdr+2] |= FlagTC >> 8
	}
	if qd == 1 {
		out = append(out, msg[HeaderLen:q.End]...)
	}
	if q.EDNS {
		out = AppendOPT(out, q, extRcode)
	}
	return out
}

// AppendRRHeader appends the part of a record before its data: the owner,
// a compression pointer (QuestionPointer, or one from Pointer), then
// AppendRRFixed's fields.
func AppendRRHeader(out []byte, owner uint16, rrtype, class uint16, ttl uint32, rdlen uint16) []byte {
	return AppendRRFixed(binary.BigEndian.AppendUint16(out, owner), rrtype, class, ttl, rdlen)
}

// AppendRRFixed appends the fixed fields that follow a record's owner:
// type, class, TTL and the data's length.
func AppendRRFixed(out []byte, rrtype, class uint16, ttl uint32, rdlen uint16) []byte {
	out = binary.BigEndian.AppendUint16(out, rrtype)
	out = binary.BigEndian.AppendUint16(out, class)
	out = binary.BigEndian.AppendUint32(out, ttl)
	return binary.BigEndian.AppendUint16(out, rdlen)
}

// AppendName appends a fully qualified name in presentation form ("a.b."
// or "." for the root; a missing final dot is implied) uncompressed. The
// name must be valid: labels of 1 to 63 octets without escapes.
func AppendName(out []byte, name string) []byte {
	start := 0
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if i > start {
				out = append(out, byte(i-start))
				out = append(out, name[start:i]...)
			}
			start = i + 1
		}
	}
	if start < len(name) {
		out = append(out, byte(len(name)-start))
		out = append(out, name[start:]...)
	}
	return append(out, 0)
}
