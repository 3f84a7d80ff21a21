// Package ilist is a doubly linked list whose links live in its elements:
// linking and unlinking allocate nothing, and an element knows whether it
// is in the list, which says who owns what it stands for once it is taken
// out (work the resolver takes back, or its own end, whichever unlinks it
// first). It is not safe for concurrent use: its owner holds a lock.
package ilist

// Links are an element's place in a List: embed them in the element type.
type Links[T any] struct {
	prev, next *T
	in         bool
}

// Linked reports whether the element is in a list.
func (l *Links[T]) Linked() bool { return l.in }

func (l *Links[T]) links() *Links[T] { return l }

// elem is a pointer to an element type embedding Links.
type elem[T any] interface {
	*T
	links() *Links[T]
}

// List is a list of elements, in the order they were pushed: Front is the
// oldest. The zero List is empty.
type List[T any, P elem[T]] struct {
	head, tail P
}

// PushBack links e at the back. e must not be in a list.
func (l *List[T, P]) PushBack(e P) {
	el := e.links()
	el.prev, el.next, el.in = l.tail, nil, true
	if l.tail != nil {
		P(l.tail).links().next = e
	} else {
		l.head = e
	}
	l.tail = e
}

// Remove unlinks e and reports whether it was linked.
func (l *List[T, P]) Remove(e P) bool {
	el := e.links()
	if !el.in {
		return false
	}
	if el.prev != nil {
		P(el.prev).links().next = el.next
	} else {
		l.head = el.next
	}
	if el.next != nil {
		P(el.next).links().prev = el.prev
	} else {
		l.tail = el.prev
	}
	el.prev, el.next, el.in = nil, nil, false
	return true
}

// Front is the oldest element, nil if none.
func (l *List[T, P]) Front() P { return l.head }

// Next is the element after e, nil at the back.
func (l *List[T, P]) Next(e P) P { return e.links().next }

// MostOver returns the element of l, other than those skip reports, whose
// over is the largest above zero, the first (the oldest) of equals; nil if
// none is above zero. An element after the pick whose over is not larger
// takes its place where better(pick, e) reports true (better may be nil).
// It calls over once per element not skipped, in order, so a value that
// changes as it is read is compared as read.
func MostOver[T any, P elem[T]](l *List[T, P], skip func(P) bool, over func(P) int64, better func(pick, e P) bool) P {
	var (
		pick P
		most int64
	)
	for e := l.head; e != nil; e = e.links().next {
		if skip(e) {
			continue
		}
		if o := over(e); o > most {
			pick, most = e, o
		} else if pick != nil && better != nil && better(pick, e) {
			pick = e
		}
	}
	return pick
}
