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
	// SOA reports an SOA in the authority section, NegTTL the negative
	// caching TTL RFC 2308 5 derives from the first: min(its TTL, its
	// MINIMUM).
	SOA    bool
	NegTTL uint32
}

// ScanReply walks every record of a reply. It rejects anything malformed,
// and a message longer than 64 KiB (TTL offsets are 16-bit). TTLOffsets is
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
	off := HeaderLen
	for range int(h.QDCount) {
		if off, err = skipName(msg, off); err != nil {
			return s, fmt.Errorf("question: %w", err)
		}
		if off += 4; off > len(msg) {
			return s, errShort
		}
	}
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	records := authorityEnd + int(h.ARCount)
	// The counts are the sender's word; the bytes bound what they can be.
	s.TTLOffsets = make([]uint16, 0, min(records, (len(msg)-off)/minRRLen))
	for i := range records {
		rr, err := readRR(msg, off)
		if err != nil {
			return s, fmt.Errorf("record %d: %w", i, err)
		}
		off = rr.End
		if rr.Type == typeOPT {
			continue
		}
		s.TTLOffsets = append(s.TTLOffsets, uint16(rr.TTLOff))
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
	return s, nil
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
