package dnswire

import (
	"encoding/binary"
	"errors"
)

var errNoRoom = errors.New("the question and OPT record alone exceed the limit")

// Fit is how a reply is cut to a size (PlanFit), found without changing it.
type Fit struct {
	// Dropped reports records left out.
	Dropped bool
	// Truncated reports an answer or authority record left out: Apply
	// sets TC. Additional records left out set no TC (RFC 2181 9), nor do
	// RRSIGs among them (RFC 4035 3.1.1): the answer is whole.
	Truncated bool

	keep           int // the kept records end here
	counts             // the kept records, by section
	optOff, optEnd int // the OPT record, optOff < 0 if none
	size           int // of the message cut
}

// PlanFit plans to cut the reply msg to at most limit octets on the wire,
// without decoding it, as miekg's Msg.Truncate (CoreDNS's) does: the whole
// records that fit, answers first, then authority, then additional,
// stopping at the first that does not, and the OPT record kept, at the end.
// Kept records stay where they are, so their compression pointers, which
// point to earlier names (RFC 1035 4.1.4), stay valid; so additional
// records after the OPT are left out, as moving them would break theirs.
// Where the cut falls in the additional section, it keeps whole RRsets, as
// BIND and unbound do: the records of the set the first one left out
// belongs to are left out with it, since without TC a client would take
// the part for the whole (RFC 2181 5). It fails on a malformed message,
// on one with a compression pointer that does not lead back to a prior
// name (checkName: a name the cut keeps might not read), and when the
// header, question and OPT alone exceed limit.
func PlanFit(msg []byte, limit int) (Fit, error) {
	f := Fit{optOff: -1}
	h, err := ReadHeader(msg)
	if err != nil {
		return f, err
	}
	names := newNameCheck(msg)
	off, err := names.checkQuestions(HeaderLen, int(h.QDCount))
	if err != nil {
		return f, err
	}
	questionEnd := off
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	additional := -1 // where the additional section starts
	// First the OPT record, whose room comes first, and the owners.
	for i := range records {
		if i == authorityEnd {
			additional = off
		}
		fixed, end, err := skipRR(msg, off)
		if err == nil {
			err = names.checkNames(off, fixed, end, nil)
		}
		if err != nil {
			return f, err
		}
		if i >= authorityEnd && isOPT(msg, off, fixed) {
			if f.optOff >= 0 {
				return f, errTwoOPT
			}
			f.optOff, f.optEnd = off, end
		}
		off = end
	}
	optLen := 0
	if f.optOff >= 0 {
		optLen = f.optEnd - f.optOff
	}
	if questionEnd+optLen > limit {
		return f, errNoRoom
	}
	f.keep = questionEnd
	off = questionEnd
	left := -1 // the first record left out, the OPT record aside
	for i := range records {
		_, end, _ := skipRR(msg, off) // read above
		if off == f.optOff {
			if i+1 < records {
				left = end
			}
			break
		}
		if end+optLen > limit {
			left = off
			break
		}
		f.add(i, answers, authorityEnd)
		f.keep, off = end, end
	}
	if left >= 0 && f.ar > 0 {
		f.keep, f.ar = wholeSets(msg, additional, f.ar, left)
	}
	f.Dropped = f.Kept() < records
	f.Truncated = f.an < h.ANCount || f.ns < h.NSCount
	f.size = f.keep + optLen
	return f, nil
}

// wholeSets is where the n records starting at off end, and how many
// they are, once those at the end that are of the RRset of the record at
// left (the first left out, after them) are left out too.
func wholeSets(msg []byte, off int, n uint16, left int) (end int, kept uint16) {
	end = off
	for i := range n {
		_, next, _ := skipRR(msg, off) // read by PlanFit
		if !sameSet(msg, off, left) {
			end, kept = next, i+1
		}
		off = next
	}
	return end, kept
}

// Kept is the number of records the cut keeps, the OPT record included.
func (f Fit) Kept() int {
	n := int(f.an) + int(f.ns) + int(f.ar)
	if f.optOff >= 0 {
		n++
	}
	return n
}

// Apply cuts msg, the message f was planned for, in place: the kept
// records, then the OPT record, with the counts set and TC when an answer
// or authority record was left out (Truncated). It returns the cut
// message, a prefix of msg.
func (f Fit) Apply(msg []byte) []byte {
	c := f.counts
	if f.optOff >= 0 {
		copy(msg[f.keep:], msg[f.optOff:f.optEnd]) // at or after keep: moved down
		c.ar++
	}
	c.set(msg)
	if f.Truncated {
		msg[2] |= FlagTC >> 8
	}
	return msg[:f.size]
}

// FirstRecords is FirstRecordsIn with no bound in octets: msg with only
// its first n records besides the OPT record.
func FirstRecords(msg []byte, n int) (first []byte, dropped bool, err error) {
	return FirstRecordsIn(msg, n, AnyRoom)
}

// AnyRoom, as FirstRecordsIn's room, bounds nothing.
const AnyRoom = 1 << 30

// FirstRecordsIn is msg with only its first records, those other than the
// OPT record, and the OPT record: at most n of them, and no more than up
// to the first at which they take more than room octets packed as small
// as they can be (packedAtLeast): what a cut of msg that keeps at most n
// records, or room octets of records, reads, as miekg's Msg.Truncate keeps
// whole records in order, the OPT record aside, and stops at the first
// that does not fit; the one past the room is kept, so that the cut of
// the first records leaves it out, and sets TC, as the cut of the whole
// does. It is msg itself when that leaves nothing out; otherwise a new
// message, dropped true, with the counts set and the OPT record after the
// records kept when it came later (its owner is the root, so moving it
// breaks no pointer); the TC flag is left as it was. Kept records stay
// where they are, so their compression pointers to earlier names stay
// valid. It fails on a malformed message, and on one with a compression
// pointer that does not lead back to a prior name (checkName).
//
// The one past the room is not copied when it is larger than the room
// itself (tooLargeToRead): a hostile nameserver's single record of 64 KB
// costs what the room does. In the answer or authority section a stand-in
// takes its place (appendStandIn), which no cut to the room keeps either,
// so that the cut still drops a record there and sets TC; in the
// additional section, where a record left out sets no TC, it is left out
// with the records of its RRset before it (wholeSets), as the cut of the
// whole leaves them out.
func FirstRecordsIn(msg []byte, n, room int) (first []byte, dropped bool, err error) {
	h, err := ReadHeader(msg)
	if err != nil {
		return nil, false, err
	}
	names := newNameCheck(msg)
	off, err := names.checkQuestions(HeaderLen, int(h.QDCount))
	if err != nil {
		return nil, false, err
	}
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	var c counts
	keep, kept, used := off, 0, 0 // the first records end at keep
	optOff, optEnd := -1, -1
	additional := -1   // where the additional section starts
	standInClass := -1 // the class of the record a stand-in replaces, if any
	for i := range records {
		if i == authorityEnd {
			additional = off
		}
		fixed, end, err := skipRR(msg, off)
		if err == nil {
			err = names.checkNames(off, fixed, end, nil)
		}
		if err != nil {
			return nil, false, err
		}
		switch p := packedAtLeast(msg, off, fixed, end); {
		case i >= authorityEnd && isOPT(msg, off, fixed):
			if optOff >= 0 {
				return nil, false, errTwoOPT
			}
			optOff, optEnd = off, end
			if !dropped { // among the first: it stays
				c.ar++
				keep = end
			}
		case dropped || kept == n || used > room:
			dropped = true
		case tooLargeToRead(off, end, p, used, room):
			dropped = true
			if i >= authorityEnd {
				keep, c.ar = wholeSets(msg, additional, c.ar, off)
				break
			}
			c.add(i, answers, authorityEnd)
			kept++
			standInClass = int(binary.BigEndian.Uint16(msg[fixed+2:]))
			used += p
		default:
			c.add(i, answers, authorityEnd)
			kept++
			used += p
			keep = end
		}
		off = end
	}
	if !dropped {
		return msg, false, nil
	}
	size := keep + max(optEnd-optOff, 0)
	if standInClass >= 0 {
		size += standInLen(room)
	}
	first = make([]byte, keep, size)
	copy(first, msg)
	if standInClass >= 0 {
		first = appendStandIn(first, uint16(standInClass), room)
	}
	if optOff >= keep {
		first = append(first, msg[optOff:optEnd]...)
		c.ar++
	}
	c.set(first)
	return first, true, nil
}

// tooLargeToRead reports whether a read of a reply's first records within
// room leaves the record from off to end, of p octets at packedAtLeast,
// uncopied: one that cannot fit in what used leaves of the room, and is
// larger than the room itself.
func tooLargeToRead(off, end, p, used, room int) bool {
	return used+p > room && end-off > room
}

// standInLen is the length of the stand-in appendStandIn appends: room
// and an octet (its data at most 65,535 octets).
func standInLen(room int) int {
	return minRRLen + min(max(1, room+1-minRRLen), 0xFFFF)
}

// appendStandIn appends to dst the record that takes the place of one
// too large to read (tooLargeToRead) in the answer or authority section:
// of the root, type typeStandIn, class class, TTL 0, and data of zeros,
// room+1 octets (standInLen), no more than the record it stands for,
// which took more than room. So it takes more than the room alone,
// packed as small as it can be (its data is packed as it is): no cut to
// the room keeps it, nor anything after it, however the records before
// it pack (decoded and packed again, those whose data came padded, an
// NSEC record's type bitmap with empty windows, take less than
// packedAtLeast counts them), and a client never sees it: the cut drops
// a record there, as it drops the one it stands for, and sets TC.
func appendStandIn(dst []byte, class uint16, room int) []byte {
	data := standInLen(room) - minRRLen
	dst = append(dst, 0) // the root
	dst = binary.BigEndian.AppendUint16(dst, typeStandIn)
	dst = binary.BigEndian.AppendUint16(dst, class)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(data))
	return append(dst, make([]byte, data)...)
}

// counts are the records a cut keeps of each section, as its header
// counts them.
type counts struct{ an, ns, ar uint16 }

// add counts the message's record i in its section: the answers are its
// first answers records, the authority records end before authorityEnd.
func (c *counts) add(i, answers, authorityEnd int) {
	switch {
	case i < answers:
		c.an++
	case i < authorityEnd:
		c.ns++
	default:
		c.ar++
	}
}

// set writes c as the counts of the message starting at msg[0].
func (c counts) set(msg []byte) {
	SetANCount(msg, c.an)
	SetNSCount(msg, c.ns)
	SetARCount(msg, c.ar)
}

// packedAtLeast is the fewest octets the record at off (its fixed part at
// fixed, see skipRR, ending at end) takes in a message packed anew,
// compressed or not, as miekg's Pack packs it: its owner a compression
// pointer, or the root, its fixed part, and its data as it is, but for
// the names in the data of the types whose names packing compresses
// (RFC 1035's: CNAME, MX, NS, PTR, SOA, …), which take 1 octet at least,
// the root, unless the data holds less (malformed: a name missing, which
// miekg reads as empty and packs as the root). Packing only makes a
// record longer than that, and the record as it came is no shorter, so
// records that take more than a reply's room at packedAtLeast cannot all
// fit in it, as they came or packed anew;
// the data of other types is packed as it came (RFC 3597 4 has their
// names uncompressed), unless it came with names compressed against the
// rules or not in canonical form: the cut of such a reply may drop a
// record, and set TC, a record early.
func packedAtLeast(msg []byte, off, fixed, end int) int {
	n := 2 + rrFixedLen
	if c := msg[off]; c == 0 || c&0xC0 == 0xC0 && pointsToRoot(msg, off) {
		n = 1 + rrFixedLen
	}
	data := end - fixed - rrFixedLen
	switch binary.BigEndian.Uint16(msg[fixed:]) {
	case typeNS, typeMD, typeMF, typeCNAME, typeMB, typeMG, typeMR, typePTR:
		return n + min(data, 1)
	case typeMINFO:
		return n + min(data, 2)
	case typeMX:
		return n + min(data, 2+1) // the preference, the exchange
	case typeSOA:
		return n + min(data, 2+20) // two names, five numbers
	}
	return n + data
}

// pointsToRoot reports whether the compression pointer at off may stand
// for the root: it points to a root label, to another pointer, or past
// the message.
func pointsToRoot(msg []byte, off int) bool {
	to := int(binary.BigEndian.Uint16(msg[off:]) &^ 0xC000)
	return to >= len(msg) || msg[to] == 0 || msg[to]&0xC0 == 0xC0
}
