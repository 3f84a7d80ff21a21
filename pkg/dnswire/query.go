package dnswire

import "encoding/binary"

// NameBuf holds a name in presentation form with its trailing dot: at most
// 254 octets (maxNameLen-1) for a plain name, four times that when every
// octet has to be written \DDD. The caller owns it: a query path that keeps
// one per socket reads names without allocating.
type NameBuf [4 * (maxNameLen - 1)]byte

// Question is the single question of a message.
type Question struct {
	Type, Class uint16
	// NameEnd is the offset just past the name, End just past the class:
	// the question is msg[HeaderLen:End].
	NameEnd, End int
	// Name is the name in lower-case presentation form with a trailing dot
	// ("www.example.com.", "." for the root), in the caller's NameBuf; nil
	// when the caller gave none. An octet that would read as something else
	// is escaped as dig writes it: a dot inside a label as "\.", a
	// backslash as "\\", a space, a control or non-ASCII octet as "\DDD" in
	// decimal. So the single label "a.b" reads `a\.b.`, not "a.b." as the
	// two labels do, and a name never carries raw octets into a log line or
	// a terminal. miekg/dns reads it back to the same name (it writes a
	// space "\ ", and also escapes ' @ ; ( ) ", which end no label).
	Name []byte
	// Plain is false when a label holds an octet that Name escapes: no name
	// built from Kubernetes objects looks like that. Only read with a
	// NameBuf; true without one.
	Plain bool
}

// readQuestion reads the question at HeaderLen into q, which must be zero,
// and leaves it so when the question does not parse. It folds the name into
// name when name is not nil. The name must not be compressed: it is the
// first name in the message, so a pointer could only point into the header.
func readQuestion(msg []byte, q *Question, name *NameBuf) error {
	off, n := HeaderLen, 0
	plain := true
	for {
		if off >= len(msg) {
			return errShort
		}
		l := int(msg[off])
		off++
		if l == 0 {
			break
		}
		// One test on the way of every good label; which one failed is
		// found out after. The last: room for the root label still to come.
		if l > 63 || off+l > len(msg) || off+l-HeaderLen >= maxNameLen {
			return labelError(msg, off-1)
		}
		if name != nil {
			for _, c := range msg[off : off+l] {
				switch {
				case 'A' <= c && c <= 'Z':
					c += 'a' - 'A'
				case c == '.' || c == '\\':
					plain = false
					name[n] = '\\'
					n++
				case c <= ' ' || c >= 0x7f:
					plain = false
					name[n], name[n+1], name[n+2] = '\\', '0'+c/100, '0'+c/10%10
					n += 3
					c = '0' + c%10
				}
				name[n] = c
				n++
			}
			name[n] = '.'
			n++
		}
		off += l
	}
	if off+4 > len(msg) {
		return errShort
	}
	q.Type = binary.BigEndian.Uint16(msg[off:])
	q.Class = binary.BigEndian.Uint16(msg[off+2:])
	q.NameEnd, q.End = off, off+4
	q.Plain = plain
	if name != nil {
		if n == 0 { // the root
			name[0] = '.'
			n = 1
		}
		q.Name = name[:n]
	}
	return nil
}

// labelError says what is wrong with the question's label at off.
func labelError(msg []byte, off int) error {
	l := int(msg[off])
	switch {
	case l&0xC0 == 0xC0:
		return errPointer
	case l > 63:
		return errLabel
	case off+1+l > len(msg):
		return errShort
	}
	return errNameLen
}

// Query is a parsed query: its header, its one question, and what its OPT
// record says. It points into the message and the caller's NameBuf.
type Query struct {
	Header
	Question

	// EDNS reports an OPT record (RFC 6891) among the additional records;
	// the fields after it are that record's.
	EDNS        bool
	UDPSize     uint16
	EDNSVersion uint8
	// DO is the DNSSEC OK bit (RFC 3225).
	DO bool
	// Len is the length of the message as parsed, when it parsed: the
	// header, the question and the records. Octets after it are not part
	// of the message and are not to be relayed.
	Len int
}

// ParseQuery reads the header, the single question and any OPT record of
// msg into q, and the question's name, folded to lower case, into name
// (which may be nil). Records in the answer and authority sections (NOTIFY's
// SOA, UPDATE's prerequisites) are only stepped over; so are records in the
// additional section other than the one OPT (owned by the root) allowed.
// The opcode and the QR bit are for the caller to judge. Octets after the
// last record are not read (q.Len says where the message ends).
//
// On an error q holds what was read before it: the header when msg has
// one, the question when it parsed (End > 0), which is what an error reply
// echoes. A message without exactly one question fails with ErrQDCount,
// but its questions are stepped over and its OPT record read, when the
// rest parses, so that the FORMERR has one for an EDNS client (RFC 6891
// 6.1.1), and BADVERS can answer an EDNS version it does not know.
func ParseQuery(msg []byte, q *Query, name *NameBuf) error {
	*q = Query{}
	if len(msg) < HeaderLen {
		return errShort
	}
	q.Header.read(msg)
	off, skip := HeaderLen, int(q.QDCount)
	if q.QDCount == 1 {
		if err := readQuestion(msg, &q.Question, name); err != nil {
			return err
		}
		off, skip = q.End, 0
	}
	// Questions not read are stepped over.
	off, err := skipQuestions(msg, off, skip)
	if err != nil {
		return err
	}
	for range int(q.ANCount) + int(q.NSCount) {
		_, end, err := skipRR(msg, off)
		if err != nil {
			return err
		}
		off = end
	}
	for range int(q.ARCount) {
		fixed, end, err := skipRR(msg, off)
		if err != nil {
			return err
		}
		// OPT: class is the UDP size, TTL the extended rcode, version
		// and flags.
		if isOPT(msg, off, fixed) {
			if q.EDNS {
				return errTwoOPT // RFC 6891 6.1.1: FORMERR
			}
			q.EDNS = true
			q.UDPSize = binary.BigEndian.Uint16(msg[fixed+2:])
			q.EDNSVersion = msg[fixed+5]
			q.DO = msg[fixed+6]&0x80 != 0
		}
		off = end
	}
	if q.QDCount != 1 {
		return ErrQDCount
	}
	q.Len = off
	return nil
}

// UDPLimit is the largest UDP reply the client of q can take.
func (q *Query) UDPLimit() int {
	if q.EDNS && q.UDPSize > minUDPSize {
		return int(min(q.UDPSize, maxUDPSize))
	}
	return minUDPSize
}

// SameQuestion reports whether the question of reply is q, the question
// of sent: the same name ignoring ASCII case (some servers randomise it,
// 0x20 encoding), the same type and class, the same length.
func SameQuestion(reply, sent []byte, q Question) bool {
	if len(reply) < q.End || len(sent) < q.End {
		return false
	}
	for i := HeaderLen; i < q.NameEnd; i++ {
		if lowerASCII(reply[i]) != lowerASCII(sent[i]) {
			return false
		}
	}
	// Label lengths are < 64 and never fold, so a case-insensitive equal
	// name has its labels in the same places.
	return string(reply[q.NameEnd:q.End]) == string(sent[q.NameEnd:q.End])
}
