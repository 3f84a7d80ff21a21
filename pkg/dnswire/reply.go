package dnswire

import (
	"encoding/binary"
	"fmt"
)

// Reply is what a cache needs to know about a reply.
type Reply struct {
	Header
	// TTLOffsets are the offsets of every TTL field but OPT's, whose "TTL"
	// holds the extended rcode and flags.
	TTLOffsets []uint16
	// MinAnswerTTL is the smallest TTL in the answer section (0 if empty).
	MinAnswerTTL uint32
	// Answered reports that the answer section answers the question: it
	// holds a record of the question's type owned by the end of the CNAME
	// chain that starts at the question's name (the name itself without
	// a CNAME). For an ANY or CNAME question any answer record does. A
	// NOERROR reply with answers but not Answered is "no data" after a
	// CNAME chain (RFC 2308 2.2). A DNAME is not followed: servers put the
	// CNAME they synthesise from it in the answer (RFC 6672 3.1).
	Answered bool
	// SOA reports an SOA in the authority section, NegTTL the negative
	// caching TTL RFC 2308 5 derives from the first: min(its TTL, its
	// MINIMUM).
	SOA    bool
	NegTTL uint32
}

// ScanReply walks every record of a reply. It rejects anything malformed,
// a reply with more than one OPT record among them (RFC 6891 6.1.1), a
// compression pointer, in a name or in the names of record data, that
// does not lead back to a prior name, or leads through a TTL (checkName:
// a cut, or ageing, would change what it reads), and a message longer
// than 64 KiB (TTL offsets are 16-bit). TTLOffsets is
// a new slice, sized for the records the message can hold.
func ScanReply(msg []byte) (Reply, error) {
	var s Reply
	if len(msg) > 0xFFFF {
		return s, errMsgLen
	}
	h, err := ReadHeader(msg)
	if err != nil {
		return s, err
	}
	s.Header = h
	names := newNameCheck(msg)
	off, err := names.checkQuestions(HeaderLen, int(h.QDCount))
	if err != nil {
		return s, fmt.Errorf("question: %w", err)
	}
	answerOff := off
	var qtype uint16 // the question's, read when there is one
	if h.QDCount == 1 {
		qtype = binary.BigEndian.Uint16(msg[off-4:])
	}
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	// The counts are the sender's word; the bytes bound what they can be.
	s.TTLOffsets = make([]uint16, 0, min(records, (len(msg)-off)/minRRLen))
	opt := false // an OPT record in the additional section
	for i := range records {
		rr, err := readRR(msg, off)
		if err != nil {
			return s, fmt.Errorf("record %d: %w", i, err)
		}
		if i >= authorityEnd && isOPT(msg, off, rr.TTLOff-4) {
			if opt {
				return s, fmt.Errorf("record %d: %w", i, errTwoOPT)
			}
			opt = true
		}
		if rr.Type != typeOPT {
			s.TTLOffsets = append(s.TTLOffsets, uint16(rr.TTLOff))
		}
		// With its own TTL among those its names may not lead through.
		if err := names.checkNames(off, rr.TTLOff-4, rr.End, s.TTLOffsets); err != nil {
			return s, fmt.Errorf("record %d: %w", i, err)
		}
		off = rr.End
		if rr.Type == typeOPT {
			continue
		}
		ttl := readTTL(msg, rr.TTLOff)
		switch {
		case i < answers:
			if i == 0 || ttl < s.MinAnswerTTL {
				s.MinAnswerTTL = ttl
			}
		case i < authorityEnd && rr.Type == typeSOA && !s.SOA:
			minimum, err := soaMinimum(msg, rr)
			if err != nil {
				return s, fmt.Errorf("record %d: SOA: %w", i, err)
			}
			s.SOA, s.NegTTL = true, min(ttl, minimum)
		}
	}
	switch {
	case h.QDCount != 1 || answers == 0:
	case qtype == typeANY || qtype == typeCNAME:
		s.Answered = true
	default:
		if s.Answered, err = answersType(msg, answerOff, answers, qtype); err != nil {
			return s, fmt.Errorf("answer: %w", err)
		}
	}
	return s, nil
}

// maxCNAMEChain bounds the CNAME records answersType follows, and so the
// passes it makes over the answer: the work a hostile reply can cause. A
// longer chain, or a loop, counts as not answering: cached as no data, if
// at all, for no longer than its TTLs and its SOA's allow.
const maxCNAMEChain = 16

// answersType reports whether the count answer records at off (all read
// and their names checked before by ScanReply) hold one of type qtype
// owned by the end of the CNAME chain that starts at the question's name.
// The chain may come in any order: a pass over the answer follows the
// links it meets, so a chain in order (as servers send it) takes one, and
// another pass is made only when the last one moved the chain on.
func answersType(msg []byte, off, count int, qtype uint16) (bool, error) {
	w := answerWork{readLimit: answerOwnersRead}
	return answersTypeWork(msg, off, count, qtype, &w)
}

// answerOwnersRead is how many owners answersType reads whole before it
// compares them by hashes: what most replies need (an owner of the asked
// type, a few links), and at most some 16,000 steps of readName.
const answerOwnersRead = 64

// answerWork is what answersType did: the owners it read whole (up to
// readLimit, then only those whose hashes match), and once past it, the
// hashes of the names.
type answerWork struct {
	readLimit  int
	ownersRead int
	hashes     *nameHashes
}

// answersTypeWork is answersType, counting its work in w. Past the first
// w.readLimit owners, an owner is compared with the name by their hashes
// (nameHashes: a few steps per octet of the reply, however its names
// chain, over all the passes), and read whole only when those match: the
// name's owner (a link, of at most maxCNAMEChain, or the answer) or a
// collision of keyed hashes. (Before, every owner was read on
// every pass: 17 passes over a 64 KB answer of owners behind 126
// pointers each, 58-217 ms for ScanReply; now 1.6-1.8 ms.)
func answersTypeWork(msg []byte, off, count int, qtype uint16, w *answerWork) (bool, error) {
	var nameBuf, ownerBuf [maxNameLen]byte
	name, _, err := readName(msg, HeaderLen, &nameBuf)
	if err != nil {
		return false, err
	}
	var nameHash uint32 // once there are hashes
	links := 0
	for moved := true; moved; {
		moved = false
		for o, i := off, 0; i < count; i++ {
			rr, err := readRR(msg, o)
			if err != nil {
				return false, err
			}
			at := o
			o = rr.End
			if rr.Type != qtype && rr.Type != typeCNAME {
				continue // its owner does not matter
			}
			if w.hashes == nil && w.ownersRead >= w.readLimit {
				w.hashes = new(nameHashes) // a reply past readLimit pays for it
				*w.hashes = newNameHashes(msg)
				nameHash = flatHash(name)
			}
			if w.hashes != nil {
				if h, ok := w.hashes.hash(at); ok && h != nameHash {
					continue
				}
			}
			w.ownersRead++
			owner, _, err := readName(msg, at, &ownerBuf)
			if err != nil {
				return false, err
			}
			switch {
			case string(owner) != string(name):
			case rr.Type == qtype:
				return true, nil
			default: // a CNAME
				if links++; links > maxCNAMEChain {
					return false, nil
				}
				// The target may be compressed (RFC 1035 4.1.4), by a
				// pointer to before the record's end.
				var end int
				if name, end, err = readName(msg[:rr.End], rr.RdataOff, &nameBuf); err != nil {
					return false, err
				}
				if end != rr.End {
					return false, errCNAME
				}
				if w.hashes != nil {
					nameHash = flatHash(name)
				}
				moved = true
			}
		}
	}
	return false, nil
}

// soaMinimum reads the MINIMUM field: two names, then five 32-bit fields.
func soaMinimum(msg []byte, rr record) (uint32, error) {
	rdata := msg[:rr.End] // the names must end inside the record data
	off, err := skipName(rdata, rr.RdataOff)
	if err != nil {
		return 0, err
	}
	if off, err = skipName(rdata, off); err != nil {
		return 0, err
	}
	if off+20 != rr.End {
		return 0, errSOALength
	}
	return readTTL(msg, off+16), nil
}

// AgeTTLs lowers every TTL at offsets (from ScanReply) by elapsed seconds,
// stopping at zero.
func AgeTTLs(msg []byte, offsets []uint16, elapsed uint32) {
	if elapsed == 0 {
		return
	}
	for _, o := range offsets {
		ttl := readTTL(msg, int(o))
		binary.BigEndian.PutUint32(msg[o:], ttl-min(ttl, elapsed))
	}
}
