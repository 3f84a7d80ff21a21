package dnswire

// memo is what a walk over one message's names remembers of its octets,
// an entry of T per octet, 0 where nothing is known: nameCheck's
// (what a name from there checked) and nameHashes' (its hash). The two
// walks keep their own rules and entries; they share how the entries are
// kept, so that an ordinary reply allocates nothing and a hostile one
// does some steps per octet: those in the first nearMemo octets always,
// on the stack, the others once the walks have taken more than budget
// steps, in a table of an entry per octet.
type memo[T uint16 | uint32] struct {
	// steps counts the work the walks did (each says what it counts).
	steps, budget int
	near          [nearMemo]T
	all           []T // past budget: an entry for every octet of the message
}

// nearMemo is how many of a message's first octets a memo always
// remembers: where the question's name, and the names of the first
// records, which most names point to, are.
const nearMemo = 256

// newMemo starts the memo of a message of size octets.
func newMemo[T uint16 | uint32](size int) memo[T] {
	return memo[T]{budget: size + nearMemo}
}

// entry is where what is known of the octet at x is kept; nil where
// nothing is.
func (m *memo[T]) entry(x int) *T {
	switch {
	case m.all != nil:
		return &m.all[x]
	case x < nearMemo:
		return &m.near[x]
	}
	return nil
}

// grow makes the table of an entry per octet of a message of size octets
// once the walks have taken more than budget steps.
func (m *memo[T]) grow(size int) {
	if m.all == nil && m.steps > m.budget {
		m.all = make([]T, size)
		copy(m.all, m.near[:])
	}
}
