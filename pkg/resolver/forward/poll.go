package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpPoller waits for the UDP exchanges' sockets: an epoll set of the
// Forwarder's own, itself in Go's netpoller. One waiting exchange at a
// time, the leader, waits on it in the netpoller and drains it, telling
// each other exchange whose socket has something to read (a datagram, an
// ICMP error) to read it; the others, followers, wait for that or to
// lead in turn. A lone exchange, as at modest rates, is woken by the
// netpoller itself: a goroutine of the poller's own, woken instead and
// readying the exchange's, would wake an idle thread as well to look for
// work (the runtime's wakep), a wake-up and a sleep more per miss.
//
// An exchange's socket is then never in the netpoller (os.NewFile): what
// it costs there is system calls that enter the scheduler (fcntl to ask
// whether the descriptor is non-blocking, close) besides the netpoller's
// own epoll_ctl twice. Each call through syscall.Syscall, not a raw one,
// wakes the runtime's monitor thread (sysmon) when it sleeps, as it does
// on an agent idle between two queries: it woke once or twice a miss
// (futex, then a 20 µs sleep), a third of the agent's wake-ups per
// forwarded query at 1,000 misses a second. The exchange's own calls are
// raw (rawsys.go), and its socket is added to the set once (EPOLLET: no
// call to re-arm it) and leaves it as it is closed.
type udpPoller struct {
	// The set, made by newUDPPoller or, when it could not be (out of
	// descriptors), by the first exchange that finds none. Set under mu,
	// never changed while an exchange is in the set: an exchange reads
	// them without mu once add put it there.
	epfd int             // -1: none
	ep   *os.File        // epfd, non-blocking, in the netpoller; nil with none
	rc   syscall.RawConn // ep's

	mu sync.Mutex
	// closed: the set is closed as the last exchange in it leaves (an
	// exchange Forwarder.Close does not wait for, a query relayed as it
	// came, may still use epfd: closed under it, its number could be
	// another descriptor's).
	closed    bool
	leading   bool // an exchange waits on ep
	followers int  // exchanges waiting for their token or to lead
	next      uint64
	waiting   map[uint64]chan struct{} // the exchanges' tokens, by their id: those in the set
	// lead passes the lead to a follower, as the leader stops waiting.
	lead   chan struct{}
	events [64]unix.EpollEvent // the leader's
}

// newUDPPoller makes the epoll set, or leaves it to the first exchange.
func newUDPPoller() *udpPoller {
	p := &udpPoller{epfd: -1, waiting: make(map[uint64]chan struct{}), lead: make(chan struct{}, 1)}
	_ = p.open()
	return p
}

// open makes the epoll set; p.mu held, or p not yet shared.
func (p *udpPoller) open() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("fcntl", err)
	}
	ep := os.NewFile(uintptr(fd), "epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return err
	}
	p.epfd, p.ep, p.rc = fd, ep, rc
	return nil
}

// udpWait is an exchange's place in the set: ready gets a token when its
// socket has something new to read (or, once asked with EPOLLOUT, room to
// write), at most one waiting.
type udpWait struct {
	id    uint64
	ready chan struct{}
}

// add puts fd in the set, to be woken on ready from now on. With no set
// yet, it makes it: an agent that was out of descriptors as its
// Forwarder was made forwards over UDP once it has some again.
func (p *udpPoller) add(fd int) (*udpWait, error) {
	w := &udpWait{ready: make(chan struct{}, 1)}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, net.ErrClosed
	}
	if p.ep == nil {
		if err := p.open(); err != nil {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: %w", errNoPoller, err)
		}
	}
	p.next++
	w.id = p.next
	p.waiting[w.id] = w.ready
	p.mu.Unlock()
	if err := p.ctl(unix.EPOLL_CTL_ADD, fd, w, unix.EPOLLIN); err != nil {
		p.remove(w)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return w, nil
}

// wantRoom has w woken when fd has room to write as well.
func (p *udpPoller) wantRoom(fd int, w *udpWait) error {
	return p.ctl(unix.EPOLL_CTL_MOD, fd, w, unix.EPOLLIN|unix.EPOLLOUT)
}

// ctl sets what fd wakes w for, edge-triggered: a token per new event,
// none for what is still unread (the exchange reads until EAGAIN before
// it waits). EPOLLERR, an ICMP error queued, always wakes it.
func (p *udpPoller) ctl(op, fd int, w *udpWait, events uint32) error {
	ev := unix.EpollEvent{Events: events | unix.EPOLLET, Fd: int32(uint32(w.id)), Pad: int32(uint32(w.id >> 32))}
	return unix.EpollCtl(p.epfd, op, fd, &ev)
}

// remove forgets w; its socket is to be closed next, which takes it out
// of the set.
func (p *udpPoller) remove(w *udpWait) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.waiting, w.id)
	p.closeIfDone()
}

// wait waits until w's socket has something new (or, asked for,
// room), or ctx ends (its error): as the leader, or as a follower.
func (p *udpPoller) wait(ctx context.Context, w *udpWait) error {
	for {
		p.mu.Lock()
		if p.leading {
			p.followers++
			p.mu.Unlock()
			var err error
			promoted := false
			select {
			case <-w.ready:
			case <-p.lead:
				promoted = true
			case <-ctx.Done():
				err = ctx.Err()
			}
			p.mu.Lock()
			p.followers--
			p.mu.Unlock()
			if !promoted {
				return err
			}
			continue // it leads, unless another took the lead meanwhile
		}
		// It leads (a follower promoted may not, for a token or its
		// context's end, but takes the lead all the same, and passes it
		// on as it stops: the other followers wait for it).
		p.leading = true
		p.mu.Unlock()
		own, err := p.leadFor(ctx, w)
		p.mu.Lock()
		p.leading = false
		pass := p.followers > 0
		p.mu.Unlock()
		if pass {
			select {
			case p.lead <- struct{}{}:
			default: // one waits already
			}
		}
		if own || err != nil {
			return err
		}
	}
}

// leadFor waits on the set in the netpoller, handing each event to its
// exchange, until one is w's (own) or ctx ends (its error), or the set is
// closed. ctx's end is an expired read deadline on ep: ep has no other
// reader meanwhile. One set by a leader before, whose context ended as it
// stopped leading, ends a wait early: it is cleared, and the wait goes on
// unless ctx ended, which is asked only once it is cleared: ctx's own
// deadline, set just before, is cleared too, and ctx's end (told before
// the deadline is set) is then seen.
func (p *udpPoller) leadFor(ctx context.Context, w *udpWait) (own bool, err error) {
	select {
	case <-w.ready: // a token from the leader before
		return true, nil
	default:
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	ep := p.ep // the AfterFunc may run once w left, when the set is closed
	stop := context.AfterFunc(ctx, func() {
		_ = ep.SetReadDeadline(time.Unix(1, 0))
		if ctxDeadlineSet != nil {
			ctxDeadlineSet()
		}
	})
	defer stop()
	for {
		err := p.rc.Read(func(fd uintptr) bool {
			own = p.drain(fd, w.id) || own
			return own
		})
		switch {
		case err == nil:
			return true, nil
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return own, err
		}
		if clearingDeadline != nil {
			clearingDeadline()
		}
		if err := p.ep.SetReadDeadline(time.Time{}); err != nil {
			return own, err
		}
		if err := ctx.Err(); err != nil {
			return own, err
		}
	}
}

// Set by a test: clearingDeadline runs as a leader is about to clear a
// read deadline that ended its wait, ctxDeadlineSet once a context's end
// has set the deadline.
var clearingDeadline, ctxDeadlineSet func()

// drain takes every event the set holds and hands each to its exchange;
// it reports whether one was for the exchange id, which it does not hand.
func (p *udpPoller) drain(fd uintptr, id uint64) (own bool) {
	for {
		// Raw, with no timeout: it never blocks, and enters no scheduler
		// (unix.EpollWait would, waking sysmon).
		n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n == 0 {
			return own
		}
		p.mu.Lock()
		for _, ev := range p.events[:n] {
			evID := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if evID == id {
				own = true
				continue
			}
			if ready := p.waiting[evID]; ready != nil {
				select {
				case ready <- struct{}{}:
				default: // one token waits already
				}
			}
		}
		p.mu.Unlock()
		if int(n) < len(p.events) {
			// Every event was taken: the set's next one wakes the leader
			// through the netpoller, which keeps an edge that comes
			// before it waits.
			return own
		}
	}
}

// close closes the set once no exchange is in it (Forwarder.Close), and
// refuses new ones.
func (p *udpPoller) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.closeIfDone()
}

// closeIfDone closes the set if it is closed and no exchange is in it;
// p.mu held.
func (p *udpPoller) closeIfDone() {
	if p.closed && len(p.waiting) == 0 && p.ep != nil {
		p.ep.Close()
		p.epfd, p.ep, p.rc = -1, nil, nil
	}
}
