package quota

import "sync/atomic"

// Pool is a node-wide bound on something every source takes a part of:
// forwarded queries in flight, open TCP connections, bytes of replies in
// flight. It is shared fairly: once more than half of it is used, a source
// may take more only while it holds no more than its fair share, the pool
// divided among the sources holding some of it now and one more. The one
// more is room kept for a source that holds nothing yet: sources at their
// share hold at most k/(k+1) of the pool, so one below its share finds
// room. A source alone in the pool is held only to its own bound: there is
// no one yet to be fair to (a lone source's many replies being read at
// once would otherwise starve each other of half a small budget). A
// source that got more while the pool was less than half used
// keeps it until it gives it back or it is taken back for a source within
// its share (forwards and TCP connections, see Server; replies being read,
// see Budget; replies waiting for a TCP client end within its write
// timeout), and gets no more meanwhile.
//
// A nil Pool is unbounded: sources are held only to their own bounds.
type Pool struct {
	max     int64
	used    atomic.Int64
	holders atomic.Int64 // sources holding some of the pool
	peak    atomic.Int64
}

// NewPool returns a pool of max units; max <= 0 returns nil (unbounded).
func NewPool(max int64) *Pool {
	if max <= 0 {
		return nil
	}
	return &Pool{max: max}
}

// Verdict is the outcome of taking from a pool.
type Verdict uint8

const (
	// Taken: the source holds what it asked for.
	Taken Verdict = iota
	// OverSource: the source is over its own bound, or over its fair share
	// of a pool more than half used.
	OverSource
	// OverPool: the pool is used up, and the source holds no more than
	// its share.
	OverPool
)

// take takes n units for a source whose part of the pool is held, within
// the source's own bound sourceMax (<= 0: none) and its fair share. held
// nil is work of no source: only the pool's bound applies.
func (p *Pool) take(held *atomic.Int64, n, sourceMax int64) Verdict {
	if n <= 0 {
		return Taken // nothing: the holders count only real transitions
	}
	var h int64
	if held != nil {
		h = held.Add(n)
		if h == n && p != nil {
			p.holders.Add(1)
		}
		if sourceMax > 0 && h > sourceMax {
			p.release(held, n)
			return OverSource
		}
	}
	if p == nil {
		return Taken
	}
	u := p.used.Add(n)
	if held != nil && 2*u > p.max && p.holders.Load() > 1 && h > p.Share() {
		p.used.Add(-n)
		p.release(held, n)
		return OverSource
	}
	if u > p.max {
		p.used.Add(-n)
		p.release(held, n)
		return OverPool
	}
	p.notePeak(u)
	return Taken
}

// give returns n units taken with take.
func (p *Pool) give(held *atomic.Int64, n int64) {
	if n <= 0 {
		return // a reply of none, say
	}
	if p != nil {
		p.used.Add(-n)
	}
	p.release(held, n)
}

// release returns n units of the source's part.
func (p *Pool) release(held *atomic.Int64, n int64) {
	if held != nil && held.Add(-n) == 0 && p != nil {
		p.holders.Add(-1)
	}
}

// Share is a source's fair share of the pool now: the pool divided among
// its holders and one more, at least 1; 0 for an unbounded pool.
func (p *Pool) Share() int64 {
	if p == nil {
		return 0
	}
	return max(p.max/(p.holders.Load()+1), 1)
}

// OverShare returns a source's fair share now (Share) and whether any
// source can hold more than it: none can while the pool's use is within
// every holder's share (a share of 1 among more holders than units, say),
// which spares a walk looking for one to take back from.
func (p *Pool) OverShare() (share int64, some bool) {
	share = p.Share()
	return share, p.Used() > p.Holders()*share
}

// Used is what the pool's holders hold now.
func (p *Pool) Used() int64 {
	if p == nil {
		return 0
	}
	return p.used.Load()
}

// Holders is the number of sources holding some of the pool now.
func (p *Pool) Holders() int64 {
	if p == nil {
		return 0
	}
	return p.holders.Load()
}

// Peak is the most the pool's holders held at once so far.
func (p *Pool) Peak() int64 {
	if p == nil {
		return 0
	}
	return p.peak.Load()
}

func (p *Pool) notePeak(used int64) {
	for {
		pk := p.peak.Load()
		if used <= pk || p.peak.CompareAndSwap(pk, used) {
			return
		}
	}
}
