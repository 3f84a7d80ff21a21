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

// nameCheck checks the names of one message (checkName), remembering
// what it found: a name that leads to labels another name led to before
// is done there, in a step, so a message's names cost some steps per
// octet of it, however their pointers chain (before: up to some 250 steps
// each, 14 ms for a hostile 64 KB reply of names behind 125 pointers). It
// remembers the labels a pointer led to, where a later name may be led:
// for those in the first nearMemo octets always, on the stack; for the
// others once the message's names have taken more than budget steps,
// in a table of an entry per octet: an ordinary reply allocates nothing.
type nameCheck struct {
	msg []byte
	// resumed counts the walks that met a name known before whose rest
	// does not fit (too long, behind too many pointers, past the bound)
	// and went on without what is known, to the error the walk makes.
	resumed int
	// steps counts the labels, pointers and roots stepped over (twice
	// when remembered) and the searches of the TTLs: the work done.
	//
	// An entry, for a label, is the distance to the root or pointer that
	// ends its run (a label's length octet is no pointer's first), and for
	// a pointer the label octets and the pointers, its own included, of
	// the rest of the name from it (length<<7 | pointers). Each stands for
	// a walk that succeeded from there: it leads back, to labels that end
	// before the pointer leading to them, through no TTL.
	memo[uint16]
}

// newNameCheck starts the check of msg's names.
func newNameCheck(msg []byte) nameCheck {
	return nameCheck{msg: msg, memo: newMemo[uint16](len(msg))}
}

// known reports what is known of the rest of a name at x: its label
// octets, its pointers, and z, the root or pointer that ends the run of
// labels at x (x itself for a pointer).
func (c *nameCheck) known(x int) (labels, pointers, z int, ok bool) {
	e := c.entry(x)
	if e == nil || *e == 0 {
		return 0, 0, 0, false
	}
	v := int(*e)
	if c.msg[x]&0xC0 == 0xC0 {
		return v >> 7, v & 0x7F, x, true
	}
	if z = x + v; c.msg[z] == 0 {
		return v, 0, z, true
	}
	if e = c.entry(z); e == nil || *e == 0 {
		return 0, 0, 0, false
	}
	return v + int(*e>>7), int(*e & 0x7F), z, true
}

// remember notes the labels from from up to to, in a run that ends at z,
// a root or pointer (all checked).
func (c *nameCheck) remember(from, to, z int) {
	for x := from; x < to; x += 1 + int(c.msg[x]) {
		c.steps++
		if e := c.entry(x); e != nil {
			*e = uint16(z - x)
		}
	}
}

// rememberPointers notes the pointers a walk followed from x, where it
// had read n label octets behind pointers, to where it ends: after
// total label octets and all pointers, after count pointers from x.
func (c *nameCheck) rememberPointers(x, n, pointers, count, total, all int) {
	for count > 0 {
		c.steps++
		if l := int(c.msg[x]); l&0xC0 == 0 {
			x, n = x+1+l, n+1+l
			continue
		}
		if e := c.entry(x); e != nil {
			*e = uint16((total-n)<<7 | (all - pointers))
		}
		x = int(binary.BigEndian.Uint16(c.msg[x:]) &^ 0xC000)
		pointers++
		count--
	}
}

// checkName steps over the name at off, which must end before end, as
// skipName does, and follows each compression pointer it leads to: each
// must point past the header, back to labels that end (in the root or
// another pointer) before the pointer itself, and those labels may hold
// no TTL field at ttls (sorted; nil: none checked). So the name is read
// from octets before it that no cut drops or changes. It follows at most
// maxPointers, and reads no more than maxNameLen octets, as readName does
// (and miekg/dns). Where it is led to labels a name was led to before
// (c.known), it is done if their rest fits: the rest reads as it did.
// ttls only grow (ScanReply), by TTLs after the names checked before, so
// what was found to hold no TTL still holds none.
func (c *nameCheck) checkName(off, end int, ttls []uint16) (next int, err error) {
	c.grow(len(c.msg))
	msg := c.msg
	next = -1
	led := -1 // where the labels the last pointer led to start
	// The walk from where a pointer first led: to remember once it ends.
	first, firstN, firstPointers := -1, 0, 0
	run := -1    // the first label of the run under way that a pointer led to
	look := true // look up what is known; false once what is known did not fit
	for pointers, n := 0, 0; ; {
		c.steps++
		if off >= end {
			if led >= 0 {
				return 0, errForward
			}
			return 0, errShort
		}
		if led >= 0 && look {
			if labels, ps, z, ok := c.known(off); ok {
				runEnd := z + 1 // past the root, or the pointer
				if ps > 0 {
					runEnd++
				}
				if runEnd <= end && n+labels < maxNameLen && pointers+ps <= maxPointers &&
					(off == led || !c.throughTTL(ttls, led, off)) {
					if first >= 0 {
						if run >= 0 {
							c.remember(run, off, z)
						}
						c.rememberPointers(first, firstN, firstPointers, pointers-firstPointers, n+labels, pointers+ps)
					}
					return next, nil
				}
				// The rest does not fit: walk it as if unknown, to the
				// error it makes.
				look = false
				c.resumed++
			}
			if first < 0 {
				first, firstN, firstPointers = off, n, pointers
			}
			if run < 0 {
				run = off
			}
		}
		l := int(msg[off])
		switch l & 0xC0 {
		case 0x00:
			if l == 0 {
				if led >= 0 && c.throughTTL(ttls, led, off+1) {
					return 0, errForward
				}
				if next < 0 {
					next = off + 1
				}
				if first >= 0 && look {
					c.remember(run, off, off)
					c.rememberPointers(first, firstN, firstPointers, pointers-firstPointers, n, pointers)
				}
				return next, nil
			}
			if n += 1 + l; n >= maxNameLen { // the root label still to come
				return 0, errNameLen
			}
			off += 1 + l
		case 0xC0:
			if off+2 > end {
				return 0, errShort
			}
			if led >= 0 && c.throughTTL(ttls, led, off+2) {
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
			if run >= 0 && look {
				c.remember(run, off, off)
			}
			run = -1
			led, off, end = to, to, off
		default: // 0x40 and 0x80 are obsolete or unassigned label types
			return 0, errLabel
		}
	}
}

// throughTTL reports whether msg[from:to] holds octets of a TTL field at
// ttls (sorted), counting the search as a step.
func (c *nameCheck) throughTTL(ttls []uint16, from, to int) bool {
	c.steps++
	return throughTTL(ttls, from, to)
}

// throughTTL reports whether msg[from:to] holds octets of a TTL field at
// ttls (sorted).
func throughTTL(ttls []uint16, from, to int) bool {
	if len(ttls) == 0 || to <= int(ttls[0]) { // before the first: most pointers lead to the question
		return false
	}
	// The first field that ends past from: at from-3 or later.
	i, _ := slices.BinarySearch(ttls, uint16(max(from-3, 0)))
	return i < len(ttls) && int(ttls[i]) < to
}

// checkQuestions steps over the n questions starting at off, as
// skipQuestions does, checking their names (checkName).
func (c *nameCheck) checkQuestions(off, n int) (int, error) {
	for range n {
		var err error
		if off, err = c.checkName(off, len(c.msg), nil); err != nil {
			return 0, err
		}
		if off += 4; off > len(c.msg) {
			return 0, errShort
		}
	}
	return off, nil
}

// checkNames checks the names of the record at off, its fixed part at
// fixed and its end at end (see skipRR): its owner, and the names in its
// data (dataNames).
func (c *nameCheck) checkNames(off, fixed, end int, ttls []uint16) error {
	if _, err := c.checkName(off, fixed, ttls); err != nil {
		return err
	}
	off, names := dataNames(c.msg, binary.BigEndian.Uint16(c.msg[fixed:]), fixed+rrFixedLen, end)
	for i := 0; i != names && off < end; i++ {
		var err error
		if off, err = c.checkName(off, end, ttls); err != nil {
			return err
		}
	}
	return nil
}

// dataNames locates the names in the data msg[off:end] of a record of
// type rrtype that checkNames checks (checkName): those of the types
// whose names miekg/dns decodes, where it decodes them: the first starts
// at start, and names follow it (-1: up to the end of the data; 0: none).
// Each that starts inside the data must end inside it. Data that ends before a name holds no more (an MX record
// of a preference alone): miekg reads a record's fields up to where its
// data ends, or fails on one cut inside a field; either way it reads no
// name there, and a cut that keeps the record whole changes none.
func dataNames(msg []byte, rrtype uint16, off, end int) (start, names int) {
	names = 1 // -1: names up to the end of the data
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
				return 0, 0
			}
			off += 1 + int(msg[off])
		}
	case typeHIP: // HIT and key lengths, algorithm, HIT, key, servers
		if off+4 > end {
			return 0, 0
		}
		off += 4 + int(msg[off]) + int(binary.BigEndian.Uint16(msg[off+2:]))
		names = -1
	case typeIPSECKEY: // precedence, gateway type, algorithm, gateway
		if off+3 > end || msg[off+1] != gatewayName {
			return 0, 0
		}
		off += 3
	case typeAMTRELAY: // precedence, discovery bit and gateway type, gateway
		if off+2 > end || msg[off+1]&0x7F != gatewayName {
			return 0, 0
		}
		off += 2
	default:
		return 0, 0
	}
	return off, names
}
