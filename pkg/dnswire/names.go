package dnswire

import (
	"encoding/binary"
	"errors"
	"slices"
)

// Names a cut keeps must read as they did. Every cut here (PlanFit,
// FirstRecordsIn, AppendFirst) keeps the header, rewritten, the question,
// and records where they were, dropping those after the last it keeps
// (the OPT record aside, which moves to their end), and a cached copy's
// TTLs are aged in place. A name that a compression pointer leads past the
// records kept, or through the header or a TTL, reads differently in the
// cut or not at all. RFC 1035 4.1.4 has a pointer replace a name's end by
// "a prior occurrence of the same name", and every server's compression
// points back to a name written before; ScanReply, PlanFit and
// FirstRecordsIn reject a message with any other pointer, in its names or
// in the names of record data a reader decodes (checkName).
//
// miekg/dns, and so CoreDNS, which reads upstream replies with it, follows
// a pointer in a question's or owner's name anywhere, forward too ("In
// theory, the pointers are only allowed to jump backward. We let them jump
// anywhere"), bounding only the pointers a name takes (maxPointers); a
// name in a record's data it reads from the octets up to the record's end.
// Both decode a reply before cutting it and pack it anew, so that costs
// them nothing. We cut on the wire.

// errForward: a compression pointer that does not lead back to a prior
// name.
var errForward = errors.New("compression pointer to no prior name")

// Record types whose data holds names that readers decode, miekg/dns's
// list (RFC 1035's, RFC 3597 4's and later ones): each is checked as an
// owner is (checkDataNames).
const (
	typeRP       = 17
	typeAFSDB    = 18
	typeRT       = 21
	typeNSAPPTR  = 23
	typeSIG      = 24
	typePX       = 26
	typeNXT      = 30
	typeSRV      = 33
	typeNAPTR    = 35
	typeKX       = 36
	typeDNAME    = 39
	typeIPSECKEY = 45
	typeNSEC     = 47
	typeHIP      = 55
	typeTALINK   = 58
	typeSVCB     = 64
	typeHTTPS    = 65
	typeLP       = 107
	typeTKEY     = 249
	typeTSIG     = 250
	typeAMTRELAY = 260
	// gatewayName is the gateway type of IPSECKEY and AMTRELAY whose
	// gateway is a name (RFC 4025 2.3, RFC 8777 4.2).
	gatewayName = 3
)

// checkName steps over the name at off, which must end before end, as
// skipName does, and follows each compression pointer it leads to: each
// must point past the header, back to labels that end (in the root or
// another pointer) before the pointer itself, and those labels may hold
// no TTL field at ttls (sorted; nil: none checked). So the name is read
// from octets before it that no cut drops or changes. It follows at most
// maxPointers, and reads no more than maxNameLen octets, as readName does
// (and miekg/dns): so a name costs at most some 250 steps, however its
// pointers chain labels.
func checkName(msg []byte, off, end int, ttls []uint16) (next int, err error) {
	next = -1
	led := -1 // where the labels the last pointer led to start
	for pointers, n := 0, 0; ; {
		if off >= end {
			if led >= 0 {
				return 0, errForward
			}
			return 0, errShort
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				if led >= 0 && throughTTL(ttls, led, off+1) {
					return 0, errForward
				}
				if next < 0 {
					next = off + 1
				}
				return next, nil
			}
			if n += 1 + c; n >= maxNameLen { // the root label still to come
				return 0, errNameLen
			}
			off += 1 + c
		case 0xC0:
			if off+2 > end {
				return 0, errShort
			}
			if led >= 0 && throughTTL(ttls, led, off+2) {
				return 0, errForward
			}
			if next < 0 {
				next = off + 2
			}
			if pointers++; pointers > maxPointers {
				return 0, errPointers
			}
			to := int(binary.BigEndian.Uint16(msg[off:]) &^ 0xC000)
			if to < HeaderLen || to >= off {
				return 0, errForward
			}
			led, off, end = to, to, off
		default: // 0x40 and 0x80 are obsolete or unassigned label types
			return 0, errLabel
		}
	}
}

// throughTTL reports whether msg[from:to] holds octets of a TTL field at
// ttls (sorted).
func throughTTL(ttls []uint16, from, to int) bool {
	// The first field that ends past from: at from-3 or later.
	i, _ := slices.BinarySearch(ttls, uint16(max(from-3, 0)))
	return i < len(ttls) && int(ttls[i]) < to
}

// checkQuestions steps over the n questions starting at off, as
// skipQuestions does, checking their names (checkName).
func checkQuestions(msg []byte, off, n int) (int, error) {
	for range n {
		var err error
		if off, err = checkName(msg, off, len(msg), nil); err != nil {
			return 0, err
		}
		if off += 4; off > len(msg) {
			return 0, errShort
		}
	}
	return off, nil
}

// checkNames checks the names of the record at off, its fixed part at
// fixed and its end at end (see skipRR): its owner, and the names in its
// data (checkDataNames).
func checkNames(msg []byte, off, fixed, end int, ttls []uint16) error {
	if _, err := checkName(msg, off, fixed, ttls); err != nil {
		return err
	}
	return checkDataNames(msg, binary.BigEndian.Uint16(msg[fixed:]), fixed+rrFixedLen, end, ttls)
}

// checkDataNames checks the names in the data msg[off:end] of a record
// of type rrtype (checkName): those of the types whose names miekg/dns
// decodes, where it decodes them. Each that starts inside the data must
// end inside it. Data that ends before a name holds no more (an MX record
// of a preference alone): miekg reads a record's fields up to where its
// data ends, or fails on one cut inside a field; either way it reads no
// name there, and a cut that keeps the record whole changes none.
func checkDataNames(msg []byte, rrtype uint16, off, end int, ttls []uint16) error {
	names := 1 // -1: names up to the end of the data
	switch rrtype {
	case typeNS, typeMD, typeMF, typeCNAME, typeMB, typeMG, typeMR, typePTR,
		typeNSAPPTR, typeNXT, typeDNAME, typeNSEC, typeTKEY, typeTSIG:
	case typeSOA, typeMINFO, typeRP, typeTALINK:
		names = 2
	case typeMX, typeAFSDB, typeRT, typeKX, typeLP, typeSVCB, typeHTTPS:
		off += 2 // a preference or priority
	case typePX:
		off, names = off+2, 2
	case typeSRV:
		off += 6 // priority, weight, port
	case typeSIG, typeRRSIG:
		off += 18 // type covered to key tag
	case typeNAPTR:
		off += 4 // order, preference; then flags, services and regexp
		for range 3 {
			if off >= end {
				return nil
			}
			off += 1 + int(msg[off])
		}
	case typeHIP: // HIT and key lengths, algorithm, HIT, key, servers
		if off+4 > end {
			return nil
		}
		off += 4 + int(msg[off]) + int(binary.BigEndian.Uint16(msg[off+2:]))
		names = -1
	case typeIPSECKEY: // precedence, gateway type, algorithm, gateway
		if off+3 > end || msg[off+1] != gatewayName {
			return nil
		}
		off += 3
	case typeAMTRELAY: // precedence, discovery bit and gateway type, gateway
		if off+2 > end || msg[off+1]&0x7F != gatewayName {
			return nil
		}
		off += 2
	default:
		return nil
	}
	for i := 0; i != names && off < end; i++ {
		var err error
		if off, err = checkName(msg, off, end, ttls); err != nil {
			return err
		}
	}
	return nil
}
