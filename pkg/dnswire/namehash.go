package dnswire

import (
	"encoding/binary"
	"hash/maphash"
)

// nameSeed keys the hashes nameHashes makes: chosen per process, so an
// upstream cannot aim two names at one hash.
var nameSeed = maphash.MakeSeed()

// nameHashes hashes the names of one message, case folded, as readName
// reads them, so that answersType compares an owner with a name by one
// number, and reads the owner only where the numbers match. A name's
// hash is made from its first label and the hash of its rest, so what a
// pointer leads to is hashed once and remembered, as nameCheck remembers
// what it checked: the hash of every label and pointer walked in the
// first nearMemo octets always (in nameHashes), everywhere once the walks
// have taken more than budget steps (a table of an entry per octet: an
// ordinary reply allocates nothing). So however the names chain, and
// however often a name is hashed, the work is some steps per octet.
//
// A hash is 32 bits, so that the table of a 64 KB reply is 256 KB, not
// 512: hashes that match only make answersType read the owner whole, and
// keyed ones match by chance once in 2^31 comparisons: an owner read
// whole more in some 20,000 hostile 64 KB replies (17 passes over some
// 6,000 owners).
type nameHashes struct {
	msg []byte
	// steps counts the labels and pointers walked and the hashes made;
	// an entry is the hash of the name from its octet.
	memo[uint32]
}

func newNameHashes(msg []byte) nameHashes {
	return nameHashes{msg: msg, memo: newMemo[uint32](len(msg))}
}

// rootHash is the hash of the root name; any but 0.
const rootHash = 1

// labelHash is the hash of a name whose first label is label (its length
// octet and octets) and whose rest has the hash rest. Never 0.
func labelHash(label []byte, rest uint32) uint32 {
	var buf [1 + 63 + 4]byte
	for i, c := range label {
		buf[i] = lowerASCII(c)
	}
	n := len(label)
	binary.LittleEndian.PutUint32(buf[n:], rest)
	return uint32(maphash.Bytes(nameSeed, buf[:n+4])) | 1
}

// hash returns the hash of the name at off, which ScanReply has checked
// (checkName): it leads back, ends, and is within the bounds of a name.
// ok is false if it does not, and then the caller reads it instead.
func (h *nameHashes) hash(off int) (sum uint32, ok bool) {
	h.grow(len(h.msg))
	// Known, as an owner is on a pass after the first: without the walk's
	// array to clear.
	if e := h.entry(off); e != nil && *e != 0 {
		h.steps++
		return *e, true
	}
	return h.walk(off)
}

// walk hashes the name at off, walking it up to what is known.
func (h *nameHashes) walk(off int) (sum uint32, ok bool) {
	msg := h.msg
	var walked [maxNameLen]uint16 // the labels and pointers walked, to hash from the root back
	n, end := 0, len(msg)
	sum = rootHash
	for {
		h.steps++
		if off >= end || n == len(walked) {
			return 0, false
		}
		if e := h.entry(off); e != nil && *e != 0 {
			sum = *e
			break
		}
		c := int(msg[off])
		if c == 0 {
			break
		}
		walked[n], n = uint16(off), n+1
		switch c & 0xC0 {
		case 0x00:
			off += 1 + c
		case 0xC0:
			if off+2 > end {
				return 0, false
			}
			to := int(binary.BigEndian.Uint16(msg[off:]) &^ 0xC000)
			if to >= off {
				return 0, false
			}
			off, end = to, off
		default:
			return 0, false
		}
	}
	for n > 0 {
		n--
		x := int(walked[n])
		if c := int(msg[x]); c&0xC0 == 0 {
			h.steps++
			sum = labelHash(msg[x:x+1+c], sum)
		}
		if e := h.entry(x); e != nil {
			*e = sum
		}
	}
	return sum, true
}

// flatHash returns the hash of name, in wire form without pointers (as
// readName returns it), as nameHashes.hash makes it.
func flatHash(name []byte) uint32 {
	var starts [maxNameLen / 2]uint8
	n := 0
	for x := 0; x < len(name) && name[x] != 0 && n < len(starts); x += 1 + int(name[x]) {
		starts[n], n = uint8(x), n+1
	}
	sum := uint32(rootHash)
	for n > 0 {
		n--
		x := int(starts[n])
		sum = labelHash(name[x:x+1+int(name[x])], sum)
	}
	return sum
}
