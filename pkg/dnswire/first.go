package dnswire

import (
	"encoding/binary"
	"slices"
)

// What a reader that keeps only a message's first records needs of it, read
// without copying the rest: a cached reply of 64 KB served to a client whose
// buffer takes a few hundred records costs what a reply of those does.

// RotationPlan is what RotateAnswers does to a message, whatever the ID:
// the runs it rotates, and which of them it may move (safeToMove) in the
// message as planned. A message's plan is found once (PlanRotation), and
// AppendFirst rotates by it.
type RotationPlan struct {
	runs    [maxRotatedRuns]answerRun
	movable [maxRotatedRuns]bool
	count   uint8
	// optOff and optEnd delimit the OPT record of the additional section,
	// optOff < 0 if none.
	optOff, optEnd int
	// packed is what the records besides that OPT record take at
	// packedAtLeast: when it is within a read's room, and the read keeps
	// as many records, it leaves none out, and AppendFirst knows so
	// without walking them.
	packed int
}

// PlanRotation plans RotateAnswers on msg.
func PlanRotation(msg []byte) *RotationPlan {
	p := &RotationPlan{optOff: -1, packed: AnyRoom + 1} // until it walks
	runs, count := answerRuns(msg)
	p.runs, p.count = runs, uint8(count)
	for i, r := range p.runs[:count] {
		p.movable[i] = safeToMove(msg, r.start, r.end)
	}
	h, err := ReadHeader(msg)
	if err != nil {
		return p
	}
	off, err := skipQuestions(msg, HeaderLen, int(h.QDCount))
	if err != nil {
		return p
	}
	authorityEnd := int(h.ANCount) + int(h.NSCount)
	packed := 0
	for i := range authorityEnd + int(h.ARCount) {
		fixed, end, err := skipRR(msg, off)
		if err != nil {
			return p
		}
		if i >= authorityEnd && isOPT(msg, off, fixed) && p.optOff < 0 {
			p.optOff, p.optEnd = off, end
		} else {
			packed += packedAtLeast(msg, off, fixed, end)
		}
		off = end
	}
	p.packed = packed
	return p
}

// AppendFirst appends to dst what FirstRecordsIn(n, room) reads of msg
// once RotateAnswers(msg, id) has rotated it and AgeTTLs lowered its TTLs
// (at ttlOffsets, ScanReply's, by elapsed), copying only what it keeps:
// the header and question, the first records besides the OPT record, in
// the order the rotation leaves them, at most n and no more than up to
// the first at which they take more than room octets packed as small as
// they can be, and the OPT record (where it was when among them, else
// after them), with the counts set and TC as it was. What follows them is
// neither copied nor aged. p is msg's plan (PlanRotation). A run is moved
// when the plan found it movable: in msg as planned, not as aged, whose
// TTLs' octets may read as a pointer into a run (and so leave a whole
// message's run unmoved) or no longer do. msg is a reply ScanReply
// accepted (ttlOffsets are its): its names lead back only, to prior names
// and through no TTL (checkName), so those kept read as they did, aged. A
// record too large to read is left out, or stood in for, as
// FirstRecordsIn does. ok is false, and dst returned as it was, when that
// leaves nothing out of msg (found without a walk when the plan's records
// fit in the room) or msg does not parse.
func AppendFirst(dst, msg []byte, p *RotationPlan, id uint16, n, room int, ttlOffsets []uint16, elapsed uint32) (out []byte, ok bool) {
	h, err := ReadHeader(msg)
	records := int(h.ANCount) + int(h.NSCount) + int(h.ARCount)
	fewer := records <= n || records == n+1 && p.optOff >= 0
	if err != nil || fewer && (len(msg) <= HeaderLen+room || p.packed <= room) { // no record left out
		return dst, false
	}
	off, err := skipQuestions(msg, HeaderLen, int(h.QDCount))
	if err != nil {
		return dst, false
	}
	out = append(dst, msg[:off]...)
	answers := int(h.ANCount)
	authorityEnd := answers + int(h.NSCount)
	var c counts
	kept, used := 0, 0 // used: the kept records' octets at packedAtLeast
	optIn := false     // the OPT record is among those kept, where it was
	stoodIn := false   // a stand-in took a record's place
	more := func() bool { return kept < n && used <= room }
	// appendRR appends the record at start, aged, or in the answer or
	// authority section its stand-in, and returns where it ends.
	appendRR := func(start int) (int, error) {
		fixed, end, err := skipRR(msg, start)
		if err != nil {
			return 0, err
		}
		p := packedAtLeast(msg, start, fixed, end)
		if tooLargeToRead(start, end, p, used, room) {
			out = appendStandIn(out, binary.BigEndian.Uint16(msg[fixed+2:]), room)
			used += p
			stoodIn = true
			return end, nil
		}
		used += p
		at := len(out) + fixed - start
		out = append(out, msg[start:end]...)
		if ttl := fixed + 4; elapsed > 0 && ttl <= 0xFFFF {
			if _, aged := slices.BinarySearch(ttlOffsets, uint16(ttl)); aged {
				t := readTTL(out, at+4)
				binary.BigEndian.PutUint32(out[at+4:], t-min(t, elapsed))
			}
		}
		return end, nil
	}
	run := 0
	additional := -1 // where the additional section starts
	for i := 0; i < records && more(); {
		if i == authorityEnd {
			additional = off
		}
		if off == p.optOff {
			out = append(out, msg[p.optOff:p.optEnd]...)
			optIn = true
			c.ar++
			off, i = p.optEnd, i+1
			continue
		}
		for run < int(p.count) && p.runs[run].start < off {
			run++
		}
		if run < int(p.count) && p.runs[run].start == off {
			r, movable := p.runs[run], p.movable[run]
			if cut := RotationStart(id, r.n); cut != 0 && movable {
				// The run's records from its cut-th, then those before it.
				mid := r.start
				for range cut {
					if _, mid, err = skipRR(msg, mid); err != nil {
						return dst, false
					}
				}
				for _, part := range [2][2]int{{mid, r.end}, {r.start, mid}} {
					for o := part[0]; o < part[1] && more(); kept++ {
						if o, err = appendRR(o); err != nil {
							return dst, false
						}
						c.an++
					}
				}
				off, i = r.end, i+r.n
				run++
				continue
			}
		}
		if i >= authorityEnd {
			fixed, end, err := skipRR(msg, off)
			if err != nil {
				return dst, false
			}
			if tooLargeToRead(off, end, packedAtLeast(msg, off, fixed, end), used, room) {
				// Left out with its set's records before it, as
				// FirstRecordsIn leaves it out: the additional records
				// kept are where they were in msg.
				var keep int
				keep, c.ar = wholeSets(msg, additional, c.ar, off)
				out = out[:len(dst)+keep]
				break
			}
		}
		end, err := appendRR(off)
		if err != nil {
			return dst, false
		}
		c.add(i, answers, authorityEnd)
		kept++
		off, i = end, i+1
	}
	if p.optOff >= 0 {
		records--
	}
	if kept == records && !stoodIn { // all kept: msg is the reply
		return dst, false
	}
	if !optIn && p.optOff >= 0 {
		out = append(out, msg[p.optOff:p.optEnd]...)
		c.ar++
	}
	c.set(out[len(dst):])
	return out, true
}

// FirstAnswers is FirstAnswersIn with no bound in octets.
func FirstAnswers(msg []byte, n int) ([]byte, error) {
	return FirstAnswersIn(msg, n, AnyRoom)
}

// FirstAnswersIn is msg with only its first answer and authority records,
// at most n and no more than FirstRecordsIn(n, room) keeps, and of its
// additional section only the OPT record: what a reply that carries msg's
// answer or authority records, cut to at most n records or room octets of
// them, reads of it. The header (TC, the rcode) and the OPT record, with
// its extended rcode, are msg's; the records kept stay where they are, so
// their compression pointers stay valid. It is msg itself when that
// leaves nothing out, otherwise a new message. It fails on a malformed
// message. It is FirstRecordsIn of no more records than the answer and
// authority sections hold.
func FirstAnswersIn(msg []byte, n, room int) ([]byte, error) {
	h, err := ReadHeader(msg)
	if err != nil {
		return nil, err
	}
	first, _, err := FirstRecordsIn(msg, min(n, int(h.ANCount)+int(h.NSCount)), room)
	return first, err
}
