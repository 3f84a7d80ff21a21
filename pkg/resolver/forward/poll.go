package forward

import (
	"net"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpPoller waits for the UDP exchanges' sockets: an epoll set of the
// Forwarder's own, itself in Go's netpoller, which one goroutine, the
// collector, waits on and drains, telling each exchange whose socket has
// something to read (a datagram, an ICMP error) to read it.
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
	epfd int      // -1: none could be made, every UDP exchange fails
	ep   *os.File // epfd, non-blocking, in the netpoller; nil with none

	mu      sync.Mutex
	started bool // the collector runs
	closed  bool
	next    uint64
	waiting map[uint64]chan struct{} // the exchanges' wake-ups, by their id
	done    chan struct{}            // closed as the collector returns
}

// newUDPPoller makes the epoll set; the collector starts with the first
// exchange (a Forwarder that asks over TCP alone runs none).
func newUDPPoller() *udpPoller {
	p := &udpPoller{epfd: -1, waiting: make(map[uint64]chan struct{}), done: make(chan struct{})}
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return p
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return p
	}
	p.epfd, p.ep = fd, os.NewFile(uintptr(fd), "epoll")
	return p
}

// udpWait is an exchange's place in the set: ready gets a token when its
// socket has something new to read (or, once asked with EPOLLOUT, room to
// write), at most one waiting.
type udpWait struct {
	id    uint64
	ready chan struct{}
}

// add puts fd in the set, to be woken on ready from now on.
func (p *udpPoller) add(fd int) (*udpWait, error) {
	if p.ep == nil {
		return nil, errNoPoller
	}
	w := &udpWait{ready: make(chan struct{}, 1)}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, net.ErrClosed
	}
	if !p.started {
		p.started = true
		go p.collect()
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
	delete(p.waiting, w.id)
	p.mu.Unlock()
}

// collect waits in the netpoller for the set to hold events and hands
// each to its exchange, until the poller is closed.
func (p *udpPoller) collect() {
	defer close(p.done)
	rc, err := p.ep.SyscallConn()
	if err != nil {
		return
	}
	var events [64]unix.EpollEvent
	_ = rc.Read(func(fd uintptr) bool {
		for {
			// Raw, with no timeout: it never blocks, and enters no
			// scheduler (unix.EpollWait would, waking sysmon).
			n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 || n == 0 {
				return false // nothing more: wait for the set's next event
			}
			p.mu.Lock()
			for _, ev := range events[:n] {
				if ready := p.waiting[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; ready != nil {
					select {
					case ready <- struct{}{}:
					default: // one token waits already
					}
				}
			}
			p.mu.Unlock()
			if int(n) < len(events) {
				// Every event was taken: the set's next one wakes the
				// collector through the netpoller, which keeps an edge
				// that comes before it waits.
				return false
			}
		}
	})
}

// close stops the collector, once no exchange runs (Forwarder.Close).
func (p *udpPoller) close() {
	p.mu.Lock()
	p.closed = true
	started := p.started
	p.mu.Unlock()
	if p.ep == nil {
		return
	}
	p.ep.Close()
	if started {
		<-p.done
	}
}
