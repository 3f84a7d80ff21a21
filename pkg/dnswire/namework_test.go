package dnswire

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// checkNameBefore is checkName as it was before it remembered what it
// found, each name walked to its end: the rule nameCheck must keep. It
// counts its steps as nameCheck counts them in steps. A copy on purpose,
// not shared with names.go: the reference the equivalence tests and
// FuzzNameCheck hold nameCheck to, and the work count it is measured
// against (a shared helper would compare the code with itself).
func checkNameBefore(msg []byte, off, end int, ttls []uint16, steps *int) (next int, err error) {
	next = -1
	led := -1 // where the labels the last pointer led to start
	through := func(from, to int) bool {
		*steps++
		i, _ := slices.BinarySearch(ttls, uint16(max(from-3, 0)))
		return i < len(ttls) && int(ttls[i]) < to
	}
	for pointers, n := 0, 0; ; {
		*steps++
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
				if led >= 0 && through(led, off+1) {
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
			if led >= 0 && through(led, off+2) {
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

// walkNames checks every name of msg with check, in the order ScanReply
// (withTTLs: each record's names with its TTL and those before among
// ttls) or PlanFit (none) does, and returns the first error. Its own
// walk, so that both checks see the same names in the same order.
func walkNames(msg []byte, withTTLs bool, check func(off, end int, ttls []uint16) (int, error)) error {
	h, err := ReadHeader(msg)
	if err != nil {
		return err
	}
	off := HeaderLen
	for range h.QDCount {
		if off, err = check(off, len(msg), nil); err != nil {
			return err
		}
		if off += 4; off > len(msg) {
			return errShort
		}
	}
	var ttls []uint16
	for range int(h.ANCount) + int(h.NSCount) + int(h.ARCount) {
		fixed, end, err := skipRR(msg, off)
		if err != nil {
			return err
		}
		if withTTLs && binary.BigEndian.Uint16(msg[fixed:]) != typeOPT {
			ttls = append(ttls, uint16(fixed+4))
		}
		if _, err := check(off, fixed, ttls); err != nil {
			return err
		}
		data, names := dataNames(msg, binary.BigEndian.Uint16(msg[fixed:]), fixed+rrFixedLen, end)
		for i := 0; i != names && data < end; i++ {
			if data, err = check(data, end, ttls); err != nil {
				return err
			}
		}
		off = end
	}
	return nil
}

// namesBefore and namesNow check msg's names as checkNameBefore and as
// nameCheck do, and count the steps.
func namesBefore(msg []byte, withTTLs bool) (steps int, err error) {
	err = walkNames(msg, withTTLs, func(off, end int, ttls []uint16) (int, error) {
		return checkNameBefore(msg, off, end, ttls, &steps)
	})
	return steps, err
}

func namesNow(msg []byte, withTTLs bool) (*nameCheck, error) {
	c := newNameCheck(msg)
	err := walkNames(msg, withTTLs, c.checkName)
	return &c, err
}

// sameAsBefore fails tb unless nameCheck finds what checkNameBefore
// finds in msg's names, error for error, and a walk that went on past
// what it knew ended in an error (what it knew was not too little).
func sameAsBefore(tb testing.TB, msg []byte) {
	tb.Helper()
	for _, withTTLs := range []bool{true, false} {
		_, want := namesBefore(msg, withTTLs)
		c, got := namesNow(msg, withTTLs)
		if got != want {
			tb.Fatalf("%x (TTLs %v): %v; before, %v", msg, withTTLs, got, want)
		}
		if c.resumed > 0 && got == nil {
			tb.Fatalf("%x (TTLs %v): a walk went on past what it knew and ended well", msg, withTTLs)
		}
	}
}

// hostileNames are replies of 64 KB of names that miekg/dns reads, and
// ScanReply accepts, each as long as a name may be: a chain of one-label
// runs each pointing to the one before, in the data of a record of an
// unknown type, and records whose owner and data name (NS) point into it.
// target picks the run, or the label, record i's names point to.
func hostileNames(tb testing.TB) map[string][]byte {
	tb.Helper()
	const runs = maxPointers - 1 // with the owner's own pointer: maxPointers
	build := func(data func(start int) (chain []byte, target func(i int) int)) []byte {
		msg := pack(tb, newMsg("a.example.", dns.TypeA))
		at := len(msg) + 2 + rrFixedLen
		chain, target := data(at)
		msg = appendRR(msg, Pointer(HeaderLen), 65400, dns.ClassINET, 60, chain)
		n := 0
		for len(msg)+2+rrFixedLen+2 <= 0xFFFF {
			t := target(n)
			msg = appendRR(msg, Pointer(t), dns.TypeNS, dns.ClassINET, 60, binary.BigEndian.AppendUint16(nil, Pointer(t)))
			n++
		}
		SetANCount(msg, 1)
		SetNSCount(msg, uint16(n))
		return msg
	}
	return map[string][]byte{
		// Every name behind 125 pointers, to the chain's last run.
		"deepest": build(func(start int) ([]byte, func(int) int) {
			chain, last := chainedLabels(start, runs, 1)
			return chain, func(int) int { return last }
		}),
		// Names to each run in turn: every depth.
		"every run": build(func(start int) ([]byte, func(int) int) {
			chain, _ := chainedLabels(start, runs, 1)
			return chain, func(i int) int {
				if i %= runs; i > 0 {
					return start + 3 + 4*(i-1)
				}
				return start
			}
		}),
		// One run of 126 labels, names to each label in turn, from the
		// last: each finds the labels before it unknown.
		"every label": build(func(start int) ([]byte, func(int) int) {
			chain, _ := chainedLabels(start, 1, (maxNameLen-1)/2)
			labels := (maxNameLen - 1) / 2
			return chain, func(i int) int { return start + 2*(labels-1-i%labels) }
		}),
	}
}

// TestNameCheckWorkIsLinear: checking the names of a 64 KB reply of names
// each as long as a name may be takes a few steps per octet, not some 250
// per name: a hostile upstream buys little CPU with it. (Before: up to 53
// steps per octet, 3.5 million, each pointer's a binary search of the
// TTLs: 14 ms for ScanReply, BenchmarkHostileNames.) The names read as
// before: accepted, as miekg/dns reads them.
func TestNameCheckWorkIsLinear(t *testing.T) {
	const perOctet = 2
	for name, msg := range hostileNames(t) {
		if err := new(dns.Msg).Unpack(msg); err != nil {
			t.Fatalf("%s: miekg/dns does not read it: %v", name, err)
		}
		if _, err := ScanReply(msg); err != nil {
			t.Errorf("%s: ScanReply: %v", name, err)
		}
		if _, err := PlanFit(msg, 512); err != nil {
			t.Errorf("%s: PlanFit: %v", name, err)
		}
		for _, withTTLs := range []bool{true, false} {
			before, err := namesBefore(msg, withTTLs)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			c, err := namesNow(msg, withTTLs)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			t.Logf("%s (TTLs %v): %d octets, %d steps (before: %d)", name, withTTLs, len(msg), c.steps, before)
			if c.steps > perOctet*len(msg) {
				t.Errorf("%s (TTLs %v): %d steps for %d octets, more than %d per octet", name, withTTLs, c.steps, len(msg), perOctet)
			}
		}
	}
}

// TestNameCheckAsBefore: on hostile replies with octets changed at
// random, and cut short, nameCheck finds what the check before it found.
func TestNameCheckAsBefore(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, msg := range hostileNames(t) {
		sameAsBefore(t, msg)
		for range 40 {
			v := slices.Clone(msg)
			for range 1 + rng.IntN(4) {
				v[HeaderLen+rng.IntN(len(v)-HeaderLen)] = byte(rng.Uint32())
			}
			if rng.IntN(4) == 0 {
				v = v[:HeaderLen+rng.IntN(len(v)-HeaderLen)]
			}
			sameAsBefore(t, v)
		}
	}
	for _, msg := range sampleReplies(t) {
		sameAsBefore(t, msg)
	}
}

// FuzzNameCheck: nameCheck finds what the check before it found, error
// for error, on any message. Seeds: the sample replies, and short ones
// of chained names.
func FuzzNameCheck(f *testing.F) {
	for _, msg := range sampleReplies(f) {
		f.Add(msg)
	}
	for _, labels := range []int{1, 3} {
		msg := pack(f, newMsg("a.example.", dns.TypeA))
		at := len(msg) + 2 + rrFixedLen
		chain, last := chainedLabels(at, 6, labels)
		msg = appendRR(msg, Pointer(HeaderLen), 65400, dns.ClassINET, 60, chain)
		for i := range 6 {
			msg = appendRR(msg, Pointer(last-2*i), dns.TypeNS, dns.ClassINET, 60, binary.BigEndian.AppendUint16(nil, Pointer(at+i)))
		}
		SetANCount(msg, 7)
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		sameAsBefore(t, msg)
	})
}
