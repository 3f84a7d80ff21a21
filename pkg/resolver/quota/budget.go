package quota

import (
	"context"
	"sync"

	"github.com/ztdns/ztdns/pkg/resolver/ilist"
)

// Budget bounds bytes held at once by work in flight: upstream replies being
// read or waiting to be written to a client. Work asks with TryTake before
// it allocates or holds on to bytes, is refused when the budget is spent,
// when its source holds its own bound of bytes, or when it holds more than
// its fair share of a budget more than half spent (see Pool); it Gives them
// back when done. A nil Budget is unbounded and counts nothing.
//
// Work that may hold bytes for long (a reply the upstream stalls in the
// middle of) takes them through a Hold, which the budget can take back:
// a source within its share that finds the budget spent gets room by
// ending the work of the source most over its share (see TryTake).
type Budget struct {
	pool      Pool
	perSource int64 // 0: no bound of a source's own

	// The holds that can be taken back, oldest first.
	mu    sync.Mutex
	holds ilist.List[Hold, *Hold]
}

// Hold is the bytes one piece of work takes a part at a time (a reply read
// as it arrives) and that the Budget may take back for a source within
// its share: ending the work, its bytes given back at once. Its fields but
// src and end are guarded by Budget.mu.
type Hold struct {
	// Its place among the holds that can be taken back. Whoever unlinks
	// it has its bytes: the work (Drop gives them back, Keep keeps them)
	// or the budget taking them back, once.
	ilist.Links[Hold]
	src       *Source
	end       func() // makes the work end soon; its bytes are not its own then
	n         int64  // taken through the hold
	takenBack bool
}

// NewHold returns a hold of bytes for src's work, which end interrupts.
func NewHold(src *Source, end func()) *Hold { return &Hold{src: src, end: end} }

// NewBudget returns a budget of size bytes, of which one source may hold at
// most perSource (<= 0: no bound of its own, only its fair share); size <= 0
// returns nil (unbounded).
func NewBudget(size, perSource int64) *Budget {
	if size <= 0 {
		return nil
	}
	return &Budget{pool: Pool{max: size}, perSource: max(perSource, 0)}
}

// TryTake takes n bytes for the source s (nil: work of no source, bounded
// only by the budget) if the budget, the source's bound and its fair share
// allow, and says which refused them otherwise: OverSource when s holds
// its own bound or more than its fair share (see Pool), OverPool when the
// budget is spent. A source within its share that finds the budget spent
// takes back a hold of the source most over its share and tries once
// more (takeBack). A nil Budget always returns Taken.
func (b *Budget) TryTake(s *Source, n int) Verdict {
	if b == nil {
		return Taken
	}
	v := b.pool.take(s.bytesHeld(), int64(n), b.perSource)
	if v == OverPool && s != nil && b.takeBack(s) {
		v = b.pool.take(s.bytesHeld(), int64(n), b.perSource)
	}
	return v
}

// Grow takes n more bytes for h's work, as TryTake does for its source,
// and from then on the budget may take them back. Once they were taken
// back, it takes none and says OverSource: the work is the source's
// refusal.
func (b *Budget) Grow(h *Hold, n int) Verdict {
	if b == nil {
		return Taken
	}
	if v := b.TryTake(h.src, n); v != Taken {
		return v
	}
	b.mu.Lock()
	if h.takenBack {
		b.mu.Unlock()
		b.Give(h.src, n)
		return OverSource
	}
	h.n += int64(n)
	if !h.Linked() && h.src != nil { // work of no source is over no share
		b.holds.PushBack(h)
	}
	b.mu.Unlock()
	return Taken
}

// Keep ends h: its bytes stay taken, given back with Give when done. It
// reports false when they were taken back: none are taken then.
func (b *Budget) Keep(h *Hold) bool {
	_, ok := b.release(h)
	return ok
}

// Drop ends h and gives its bytes back. It reports false when they were
// taken back already.
func (b *Budget) Drop(h *Hold) bool {
	n, ok := b.release(h)
	b.Give(h.src, int(n))
	return ok
}

// release unlinks h and returns the bytes it held, now no longer the
// budget's to take back; ok is false when it took them back.
func (b *Budget) release(h *Hold) (n int64, ok bool) {
	if b == nil {
		return 0, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if h.takenBack {
		return 0, false
	}
	b.holds.Remove(h)
	n, h.n = h.n, 0
	return n, true
}

// takeBack ends the hold of the source that holds the most bytes beyond
// its fair share, other than asking (of its holds, the one with the most
// bytes, the oldest of those), and gives its bytes back at once. It
// reports false when no source with a hold is over its share. The ended
// work is refused as over its source's bytes (Grow says OverSource), and
// counted as such by whoever counts its outcome.
func (b *Budget) takeBack(asking *Source) bool {
	share, some := b.pool.OverShare() // one reading for every hold compared
	if !some {
		return false
	}
	b.mu.Lock()
	// Strictly more: of sources equally over, the one with the oldest
	// hold; of its holds, the biggest, the oldest of equals.
	pick := ilist.MostOver(&b.holds,
		func(h *Hold) bool { return h.src == asking },
		func(h *Hold) int64 { return h.src.bytes.Load() - share },
		func(pick, h *Hold) bool { return h.src == pick.src && h.n > pick.n })
	if pick == nil {
		b.mu.Unlock()
		return false
	}
	b.holds.Remove(pick)
	pick.takenBack = true
	n := pick.n
	b.mu.Unlock()
	b.pool.give(&pick.src.bytes, n)
	if pick.end != nil {
		pick.end() // its work ends soon, and gives nothing back
	}
	return true
}

// Give returns n bytes taken with TryTake for s.
func (b *Budget) Give(s *Source, n int) {
	if b != nil {
		b.pool.give(s.bytesHeld(), int64(n))
	}
}

// Used is the bytes held now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.pool.Used()
}

// Max is the budget's size; 0 when unbounded.
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.pool.max
}

// Peak is the most bytes held at once so far.
func (b *Budget) Peak() int64 {
	if b == nil {
		return 0
	}
	return b.pool.Peak()
}

type sourceKey struct{}

// WithSource returns ctx carrying the source its work is done for: bytes
// taken from a Budget under it count against that source.
func WithSource(ctx context.Context, s *Source) context.Context {
	return context.WithValue(ctx, sourceKey{}, s)
}

// SourceFrom is the source ctx carries, or nil.
func SourceFrom(ctx context.Context) *Source {
	s, _ := ctx.Value(sourceKey{}).(*Source)
	return s
}
