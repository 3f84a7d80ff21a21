package resolver

import (
	"context"
	"sync"

	"github.com/ztdns/ztdns/pkg/resolver/ilist"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// forwardSlot is a forwarded query holding a slot of the forwarding pool.
// Its fields but source are guarded by forwardList.mu.
type forwardSlot struct {
	// Its place among the forwards in flight, oldest first. Whoever
	// unlinks it gives its slot back: its own goroutine when it ends, or
	// makeForwardRoom, once.
	ilist.Links[forwardSlot]
	source *quota.Source
	// cancel ends the query's work, its client then gets SERVFAIL; nil
	// until its goroutine starts (arm).
	cancel context.CancelFunc
}

// forwardList is the forwards in flight, oldest first. A forward is linked
// on the socket's goroutine as its slot is taken, so a burst of forwards
// whose goroutines have not run yet can be ended too. A few lock
// operations and pointer writes per forward: a forward is a goroutine and
// network I/O already.
type forwardList struct {
	mu   sync.Mutex
	list ilist.List[forwardSlot, *forwardSlot]
}

// add links fw at the back: the newest.
func (l *forwardList) add(fw *forwardSlot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list.PushBack(fw)
}

// arm gives fw the cancel of its work, as its goroutine starts. It
// reports false when fw was ended meanwhile: its slot is given back, and
// the query is to get SERVFAIL without being forwarded.
func (l *forwardList) arm(fw *forwardSlot, cancel context.CancelFunc) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	fw.cancel = cancel
	return fw.Linked()
}

// remove unlinks fw and reports whether it was linked: the caller then
// gives its slot back.
func (l *forwardList) remove(fw *forwardSlot) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.list.Remove(fw)
}

// startForward takes a forwarding slot for fw's source and, when Taken,
// links fw among the forwards in flight; its goroutine arms it. A source
// within its share that finds every slot taken gets one anyway: a forward
// of the source most over its share is ended for it (makeForwardRoom), as
// a TCP connection is (admitConn). Forwards end on their own within the
// forward timeout, but without this, sources that took their slots while
// the pool was quieter would keep the others out that long.
func (s *Server) startForward(fw *forwardSlot) quota.Verdict {
	v := fw.source.StartForward(s.opts.Limits.Forwarding, s.forwarding)
	if v == quota.OverPool && s.makeForwardRoom(fw.source) {
		v = fw.source.StartForward(s.opts.Limits.Forwarding, s.forwarding)
	}
	if v == quota.Taken {
		metricForwarding.Inc()
		s.forwards.add(fw)
	}
	return v
}

// makeForwardRoom ends the oldest forward of the source that holds the
// most slots beyond its fair share, other than asking, and gives its slot
// back at once. It reports false when no source is over its share.
func (s *Server) makeForwardRoom(asking *quota.Source) bool {
	share, some := s.forwarding.OverShare() // one reading for every forward compared
	if !some {
		return false
	}
	l := &s.forwards
	l.mu.Lock()
	// Strictly more: the first, the oldest, of its source is picked.
	pick := ilist.MostOver(&l.list,
		func(fw *forwardSlot) bool { return fw.source == asking },
		func(fw *forwardSlot) int64 { return fw.source.ForwardsOver(share) },
		nil)
	if pick == nil {
		l.mu.Unlock()
		return false
	}
	l.list.Remove(pick)
	cancel := pick.cancel
	l.mu.Unlock()
	pick.source.CountForwardRefused()
	s.endForward(pick.source)
	if cancel != nil { // else its goroutine, not started yet, sees it unlinked
		cancel() // its client gets SERVFAIL now; its goroutine gives nothing back
	}
	// Its goroutine counts it forward_limited, once per query: one of its
	// lookups may have been counted so already.
	return true
}

// endForward gives back the slot of a forward unlinked from the list.
func (s *Server) endForward(source *quota.Source) {
	metricForwarding.Dec()
	source.EndForward(s.forwarding)
}
