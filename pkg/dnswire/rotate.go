package dnswire

// typeRRSIG is left where it is by RotateAnswers.
const typeRRSIG = 46

// maxRotatedRuns bounds RotateAnswers' work on one message: each run it
// moves costs a pass over the message, and an answer has one or two sets.
const maxRotatedRuns = 4

// RotationStart is where a set of n records starts for the query whose ID
// is id: ztdns's own answers (the table's) and the forwarded ones it
// serves again (RotateAnswers) rotate by the same rule, so that clients do
// not all get the same first address, and no counter is shared.
func RotationStart(id uint16, n int) int { return int(uint32(id) % uint32(n)) }

// RotateAnswers rotates, in place, each run of two or more records of the
// answer section with the same owner (the same octets), type and class, so
// that it starts with its RotationStart(id, n)-th record and wraps around.
// The order of an RRset means nothing (RFC 2181 5), and RRSIGs sign it in
// canonical order, so this changes no answer; RRSIG runs stay as they are.
// A message that does not walk to its last record is left alone, and so
// are runs past the first maxRotatedRuns. Nothing is allocated: the run's
// octets are rotated by three reversals.
//
// Moving records moves the octets inside the run, and a compression
// pointer anywhere in the message could lead into them (a later record's
// owner pointing at one of the run's owners, say). The rule: a run is
// moved only when no two octets anywhere past the header read as a
// pointer into it, and none reads as a pointer to a name before it whose
// labels run into it (safeToMove). That is a superset of the pointers a decoder
// follows, so at worst it leaves a run alone that could have moved.
func RotateAnswers(msg []byte, id uint16) {
	runs, n := answerRuns(msg)
	for _, r := range runs[:n] {
		rotateRun(msg, r.start, r.end, RotationStart(id, r.n))
	}
}

// answerRun is a run of records RotateAnswers rotates: the n records of
// msg[start:end].
type answerRun struct{ start, end, n int }

// answerRuns finds the runs of msg's answer section that RotateAnswers
// rotates, the first maxRotatedRuns: none when msg does not walk to its
// last record. Rotating one changes no octet outside it, so they are the
// same whether found before the rotation of those before them or after.
func answerRuns(msg []byte) (runs [maxRotatedRuns]answerRun, count int) {
	h, err := ReadHeader(msg)
	if err != nil || h.ANCount < 2 {
		return runs, 0
	}
	off, err := skipQuestions(msg, HeaderLen, int(h.QDCount))
	if err != nil {
		return runs, 0
	}
	answers := off
	for range int(h.ANCount) + int(h.NSCount) + int(h.ARCount) {
		if _, off, err = skipRR(msg, off); err != nil {
			return runs, 0
		}
	}
	off = answers
	for i := 0; i < int(h.ANCount) && count < maxRotatedRuns; {
		start := off
		fixed, end, _ := skipRR(msg, off) // walked above
		n := 1
		for i+n < int(h.ANCount) {
			f, e, _ := skipRR(msg, end)
			if string(msg[start:fixed]) != string(msg[end:f]) || string(msg[fixed:fixed+4]) != string(msg[f:f+4]) {
				break
			}
			n++
			end = e
		}
		if n >= 2 && int(msg[fixed])<<8|int(msg[fixed+1]) != typeRRSIG {
			runs[count] = answerRun{start, end, n}
			count++
		}
		i += n
		off = end
	}
	return runs, count
}

// rotateRun moves the records of msg[start:end] so that its cut-th starts
// it, when safeToMove allows.
func rotateRun(msg []byte, start, end, cut int) {
	if cut == 0 || !safeToMove(msg, start, end) {
		return
	}
	mid := start
	for range cut {
		_, mid, _ = skipRR(msg, mid) // walked by RotateAnswers
	}
	reverse(msg[start:mid])
	reverse(msg[mid:end])
	reverse(msg[start:end])
}

// safeToMove reports whether no compression pointer can lead into
// msg[start:end]: no two octets, at any offset past the header (which
// holds no name: its ID, an upstream's random one, would read as such a
// pointer in one reply of some hundreds), read as a pointer into it,
// nor as a pointer to a name before it whose labels (not following
// pointers: those are octet pairs checked in turn) reach it. A name that
// starts more than maxNameLen octets before the run cannot reach it and
// still be a name.
func safeToMove(msg []byte, start, end int) bool {
	for i := HeaderLen; i+1 < len(msg); i++ {
		if msg[i]&0xC0 != 0xC0 {
			continue
		}
		t := int(msg[i]&0x3F)<<8 | int(msg[i+1])
		switch {
		case t >= end || t+maxNameLen < start:
			continue
		case t >= start:
			return false
		}
		for t < start {
			c := int(msg[t])
			if c&0xC0 == 0xC0 {
				t++ // a pointer: only its second octet could be the run's
				break
			}
			if c == 0 || c&0xC0 != 0 {
				break // the name ends, or is no name
			}
			t += 1 + c
		}
		if t >= start {
			return false
		}
	}
	return true
}

func reverse(b []byte) {
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
}
