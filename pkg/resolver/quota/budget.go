package quota

import "sync/atomic"

// Budget bounds bytes held at once by work in flight: upstream replies being
// read or waiting to be written to a client. Work asks with TryTake before
// it allocates or holds on to bytes, is refused when the budget is spent,
// and Gives them back when done. A nil Budget is unbounded and counts
// nothing.
type Budget struct {
	max  int64
	used atomic.Int64
	peak atomic.Int64
}

// NewBudget returns a budget of max bytes; max <= 0 returns nil (unbounded).
func NewBudget(max int64) *Budget {
	if max <= 0 {
		return nil
	}
	return &Budget{max: max}
}

// TryTake takes n bytes if the budget has them.
func (b *Budget) TryTake(n int) bool {
	if b == nil {
		return true
	}
	used := b.used.Add(int64(n))
	if used > b.max {
		b.used.Add(-int64(n))
		return false
	}
	b.notePeak(used)
	return true
}

// Give returns n bytes taken with TryTake.
func (b *Budget) Give(n int) {
	if b != nil {
		b.used.Add(-int64(n))
	}
}

// Used is the bytes held now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// Max is the budget's size; 0 when unbounded.
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.max
}

// Peak is the most bytes held at once so far.
func (b *Budget) Peak() int64 {
	if b == nil {
		return 0
	}
	return b.peak.Load()
}

func (b *Budget) notePeak(used int64) {
	for {
		p := b.peak.Load()
		if used <= p || b.peak.CompareAndSwap(p, used) {
			return
		}
	}
}
