package quota

import "context"

// Budget bounds bytes held at once by work in flight: upstream replies being
// read or waiting to be written to a client. Work asks with TryTake before
// it allocates or holds on to bytes, is refused when the budget is spent,
// when its source holds its own bound of bytes, or when it holds more than
// its fair share of a budget more than half spent (see Pool); it Gives them
// back when done. A nil Budget is unbounded and counts nothing.
type Budget struct {
	pool      Pool
	perSource int64 // 0: no bound of a source's own
}

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
// budget is spent. A nil Budget always returns Taken.
func (b *Budget) TryTake(s *Source, n int) Verdict {
	if b == nil {
		return Taken
	}
	return b.pool.take(s.bytesHeld(), int64(n), b.perSource)
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
