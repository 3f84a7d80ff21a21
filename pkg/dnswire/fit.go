package dnswire

import (
	"errors"
)

var errNoRoom = errors.New("the question and OPT record alone exceed the limit")

// Fit is how a reply is cut to a size (PlanFit), found without changing it.
type Fit struct {
	// Dropped reports records left out: Apply sets TC.
	Dropped bool

	keep           int // the kept records end here
	an, ns, ar     uint16
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
// It fails on a malformed message and when the header, question and OPT
// alone exceed limit.
func PlanFit(msg []byte, limit int) (Fit, error) {
	f := Fit{optOff: -1}
	h, err := ReadHeader(msg)
	if err != nil {
		return f, err
	}
	off := HeaderLen
	for range int(h.QDCount) {
		if off, err = skipName(msg, off); err != nil {
			return f, err
		}
		if off += 4; off > len(msg) {
			return f, errShort
		}
	}
	questionEnd := off
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	// First the OPT record, whose room comes first, and the owners.
	for i := range records {
		fixed, end, err := skipRR(msg, off)
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
	for i := range records {
		_, end, _ := skipRR(msg, off) // read above
		if off == f.optOff || end+optLen > limit {
			break
		}
		switch {
		case i < answers:
			f.an++
		case i < authorityEnd:
			f.ns++
		default:
			f.ar++
		}
		f.keep, off = end, end
	}
	f.Dropped = f.Kept() < records
	f.size = f.keep + optLen
	return f, nil
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
// records, then the OPT record, with the counts set and TC when records
// were left out. It returns the cut message, a prefix of msg.
func (f Fit) Apply(msg []byte) []byte {
	ar := f.ar
	if f.optOff >= 0 {
		copy(msg[f.keep:], msg[f.optOff:f.optEnd]) // at or after keep: moved down
		ar++
	}
	SetANCount(msg, f.an)
	SetNSCount(msg, f.ns)
	SetARCount(msg, ar)
	if f.Dropped {
		msg[2] |= FlagTC >> 8
	}
	return msg[:f.size]
}

// FirstRecords is msg with only its first n records, those other than the
// OPT record, and the OPT record: what a cut of msg that keeps at most n
// records reads, as miekg's Msg.Truncate keeps whole records in order, the
// OPT record aside. It is msg itself when msg has no more than n records
// besides the OPT; otherwise a new message, dropped true, with the counts
// set and the OPT record after the n when it came later (its owner is the
// root, so moving it breaks no pointer); the TC flag is left as it was.
// Kept records stay where they are, so their compression pointers to
// earlier names stay valid. It fails on a malformed message.
func FirstRecords(msg []byte, n int) (first []byte, dropped bool, err error) {
	h, err := ReadHeader(msg)
	if err != nil {
		return nil, false, err
	}
	off := HeaderLen
	for range int(h.QDCount) {
		if off, err = skipName(msg, off); err != nil {
			return nil, false, err
		}
		if off += 4; off > len(msg) {
			return nil, false, errShort
		}
	}
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	var an, ns, ar uint16
	keep, kept := off, 0 // the first records end at keep
	optOff, optEnd := -1, -1
	for i := range records {
		fixed, end, err := skipRR(msg, off)
		if err != nil {
			return nil, false, err
		}
		switch {
		case i >= authorityEnd && isOPT(msg, off, fixed):
			if optOff >= 0 {
				return nil, false, errTwoOPT
			}
			optOff, optEnd = off, end
			if !dropped { // among the first: it stays
				ar++
				keep = end
			}
		case kept == n:
			dropped = true
		default:
			switch {
			case i < answers:
				an++
			case i < authorityEnd:
				ns++
			default:
				ar++
			}
			kept++
			keep = end
		}
		off = end
	}
	if !dropped {
		return msg, false, nil
	}
	first = make([]byte, keep, keep+max(optEnd-optOff, 0))
	copy(first, msg)
	if optOff >= keep {
		first = append(first, msg[optOff:optEnd]...)
		ar++
	}
	SetANCount(first, an)
	SetNSCount(first, ns)
	SetARCount(first, ar)
	return first, true, nil
}
