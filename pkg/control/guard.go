package control

// The listener that guards the socket (guardedListener): it admits only
// allowed peers, bounds open connections (MaxConns, MaxGroupConns), queues
// root's at the bound and makes room by closing idle ones.

import (
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztdns/ztdns/internal/acceptretry"
	"github.com/ztdns/ztdns/internal/ratelog"
)

// guardedListener hands out only connections of allowed peers, at most
// MaxConns at a time, of which at most MaxGroupConns are socket-group
// members'. Its own goroutine accepts (acceptLoop) and never waits for
// room, so the kernel's backlog never fills behind a full house, whoever
// connects. At the bound, a new connection takes the place of the oldest
// one that has no request in (see tryEvict): a kept-alive idle
// connection, or a half-sent request (part of its headers, and nothing
// more waiting to be read), either only while the server waits on its
// socket. A new connection that has sent nothing yet is
// never closed for another: its caller is between its connect and its
// write, and on a busy node that gap can be long; the server's header
// timeout (ReadTimeout) bounds one that never writes. A request that has
// arrived, read or not, is never cut either: its caller (a CNI ADD in a
// Job's fan-out) would take the agent for unreachable. A member's takes
// only a member's place, never root's, and one that finds none is closed
// at once. Root's that finds none waits in the listener's queue (its peer
// checked), at most MaxQueued of them, and the queue is admitted in order
// as connections end or become closable (their server waits on them, with
// no request in). So members can hold at most their own slots, and root
// always has the rest.
type guardedListener struct {
	*net.UnixListener
	access  Access
	refused ratelog.Limiter // refused callers, logged sparingly
	full    ratelog.Limiter // root's turned away with the queue full

	// ready holds the admitted connections Accept has yet to hand out: at
	// most MaxConns, being admitted, so a send never blocks.
	ready chan *peerConn
	done  chan struct{} // closed when acceptLoop has stopped, err saying why
	err   error
	// emptied is closed once acceptLoop has stopped and the queue is
	// empty: Accept has nothing more to wait for than what ready holds.
	emptied chan struct{}
	// draining is set when the server stops (drain): acceptLoop takes no
	// more connections from the kernel's backlog, and answers say that
	// their connection closes.
	draining atomic.Bool
	// refusing is set when a stopping server gives up waiting for
	// requests (see drain): from then on a request that arrives on a
	// connection is left unread and the connection closed, which its
	// caller sees reset.
	refusing atomic.Bool

	mu    sync.Mutex
	conns []*peerConn // admitted connections, oldest first
	queue []*peerConn // root's waiting for room, oldest first
	// turnedDown are the refused callers' connections being answered
	// (turnDown), at most maxRefusedAnswers.
	turnedDown map[*net.UnixConn]bool
	closed     bool
	stopped    bool // acceptLoop has stopped (see emptied)
	emptyOnce  sync.Once
	stats      listenerStats
	// pruned is when a full queue was last looked through for callers
	// that hung up (pruneQueue).
	pruned time.Time
}

// listenerStats counts what one listener did, for its tests (the metrics
// are the process's).
type listenerStats struct {
	evicted, queued, turnedAway int
}

func newGuardedListener(ln *net.UnixListener, access Access) *guardedListener {
	l := &guardedListener{
		UnixListener: ln,
		access:       access,
		ready:        make(chan *peerConn, MaxConns),
		turnedDown:   map[*net.UnixConn]bool{},
		done:         make(chan struct{}),
		emptied:      make(chan struct{}),
	}
	go l.acceptLoop()
	return l
}

// Close stops accepting and closes the connections queued or admitted
// that Accept never handed out. (Serve drains the listener first, so that
// none is left: see drain.)
func (l *guardedListener) Close() error {
	l.mu.Lock()
	l.closed = true
	queue := l.queue
	l.queue = nil
	l.checkEmptied()
	for c := range l.turnedDown {
		c.Close() // its goroutine ends at once
	}
	l.mu.Unlock()
	for _, pc := range queue {
		pc.UnixConn.Close()
	}
	err := l.UnixListener.Close()
	<-l.done
	for {
		select {
		case pc := <-l.ready:
			pc.Close()
		default:
			return err
		}
	}
}

// Accept hands out the next connection admitted. Once the listener has
// stopped accepting (drained or closed), it still hands out those admitted
// and, as they are admitted, those queued, and fails only then.
func (l *guardedListener) Accept() (net.Conn, error) {
	select {
	case pc := <-l.ready:
		return pc, nil
	case <-l.emptied:
	}
	select {
	case pc := <-l.ready: // admitted before the queue emptied
		return pc, nil
	default:
		return nil, l.err
	}
}

// checkEmptied closes emptied once acceptLoop has stopped and no
// connection waits in the queue (the caller holds l.mu): from then on
// nothing is admitted any more.
func (l *guardedListener) checkEmptied() {
	if l.stopped && len(l.queue) == 0 {
		l.emptyOnce.Do(func() { close(l.emptied) })
	}
}

// drain is how a stopping server lets go of the listener (see Serve): it
// takes no more connections from the kernel's backlog, where those made
// from then on wait for whoever serves the socket next (the agent it was
// handed to; one that binds the path anew finds them reset), and it waits,
// until deadline at most, for every connection it took to be answered and
// closed: those admitted and queued are handed out to the server as ever,
// which answers each request that arrives on them with its connection
// closed after it. Kept-alive connections with no request in are closed
// as they become idle. At deadline, it gives the rest up: from then on a
// request arriving on one of them is left unread and its connection
// closed, which the caller sees reset (and the CNI plugin sends again, to
// the socket's next server); a connection that was never handed out is
// closed that way too. Never is a request read and then dropped: its
// caller would see the connection end with no answer (EOF), which it
// cannot tell from an agent that took the request and died.
func (l *guardedListener) drain(deadline time.Time) {
	l.draining.Store(true)
	// An accept past its deadline fails without taking a connection from
	// the backlog; acceptLoop stops on that.
	l.UnixListener.SetDeadline(time.Unix(1, 0))
	<-l.done
	for pause := time.Millisecond; !l.quiet(); pause = min(2*pause, 50*time.Millisecond) {
		left := time.Until(deadline)
		if left <= 0 {
			l.abandon()
			return
		}
		time.Sleep(min(pause, left))
	}
}

// quiet reports whether every connection the listener took is closed,
// after closing those kept alive that wait with no request in.
func (l *guardedListener) quiet() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns = slices.DeleteFunc(l.conns, func(c *peerConn) bool {
		if !c.tryCloseIdle() {
			return false
		}
		metricConns.Dec()
		c.UnixConn.Close()
		return true
	})
	return len(l.conns) == 0 && len(l.queue) == 0
}

// abandon gives up the connections a draining listener still holds (see
// drain): requests arriving on them are refused, and those never handed
// out are closed as soon as their request has arrived (or their caller
// hung up, or ReadTimeout passed).
func (l *guardedListener) abandon() {
	l.refusing.Store(true)
	l.mu.Lock()
	left := l.queue
	l.queue = nil
	l.checkEmptied()
	l.mu.Unlock()
	for {
		select {
		case pc := <-l.ready:
			left = append(left, pc)
			continue
		default:
		}
		break
	}
	for _, pc := range left {
		go pc.refuse()
	}
}

// acceptLoop accepts connections until the listener closes: it checks
// each one's peer and admits, queues, or closes it (arrive), or refuses it
// with a 403 (turnDown), never waiting for room.
func (l *guardedListener) acceptLoop() {
	backoff := acceptretry.New(acceptretry.Control)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if l.draining.Load() {
				l.stop(&net.OpError{Op: "accept", Net: "unix", Addr: l.Addr(), Err: net.ErrClosed})
				return
			}
			if backoff.Wait(l.access.log(), err) { // out of descriptors, say
				continue
			}
			l.stop(err)
			return
		}
		backoff.Accepted()
		peer, err := PeerOf(c)
		if err != nil || !l.access.allowed(peer) {
			metricRefused.Inc()
			l.refused.Log(l.access.log(), slog.LevelWarn, "control socket: refused a caller that is not root", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "err", err)
			l.turnDown(c, peer, err)
			continue
		}
		l.arrive(&peerConn{UnixConn: c, peer: peer, l: l})
	}
}

// stop records why acceptLoop stopped, and that it did.
func (l *guardedListener) stop(err error) {
	l.err = err
	close(l.done)
	l.mu.Lock()
	l.stopped = true
	l.checkEmptied()
	l.mu.Unlock()
}

// arrive admits pc, queues it (root's), or closes it (a member's that
// finds no place, root's when MaxQueued already wait).
func (l *guardedListener) arrive(pc *peerConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		pc.UnixConn.Close()
	case pc.peer.root():
		if len(l.queue) >= MaxQueued && time.Since(l.pruned) >= pruneEvery {
			l.pruneQueue()
		}
		if len(l.queue) >= MaxQueued {
			l.turnAway(pc)
			l.full.Log(l.access.log(), slog.LevelWarn, "control socket: closed a root connection: as many as the queue holds already wait for room", "queued", len(l.queue), "pid", pc.peer.PID)
			return
		}
		l.queue = append(l.queue, pc)
		l.admitQueued()
		if len(l.queue) > 0 && l.queue[len(l.queue)-1] == pc {
			l.stats.queued++
			metricWaited.Inc()
		}
	case len(l.queue) > 0:
		// Root's are waiting: what room there is goes to them.
		l.turnAway(pc)
	case len(l.conns) < MaxConns && l.members() < MaxGroupConns:
		l.admit(pc)
	default:
		if !l.evictOldest(func(c *peerConn) bool { return !c.peer.root() }) {
			l.turnAway(pc)
			return
		}
		l.admit(pc)
	}
}

// turnAway closes a connection for want of room (the caller holds l.mu).
func (l *guardedListener) turnAway(pc *peerConn) {
	l.stats.turnedAway++
	metricTurnedAway.Inc()
	if !pc.peer.root() {
		l.access.log().Debug("control socket: closed a socket-group member's connection: the group's connections all have requests in or are new", "uid", pc.peer.UID, "pid", pc.peer.PID)
	}
	pc.UnixConn.Close()
}

// admitQueued admits root's queued connections in order, while there is
// room or a connection may be closed to make it (the caller holds l.mu).
func (l *guardedListener) admitQueued() {
	for len(l.queue) > 0 && !l.closed {
		if len(l.conns) >= MaxConns && !l.evictOldest(func(*peerConn) bool { return true }) {
			return
		}
		pc := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		l.admit(pc)
	}
	l.checkEmptied()
}

// pruneEvery bounds how often a full queue is looked through (one poll
// per connection, under the listener's lock): not on every one of root's
// connects while it stays full.
const pruneEvery = 100 * time.Millisecond

// pruneQueue drops the queued connections whose callers have gone (hung
// up while waiting), for a full queue to hold only live ones (the caller
// holds l.mu).
func (l *guardedListener) pruneQueue() {
	l.pruned = time.Now()
	l.queue = slices.DeleteFunc(l.queue, func(pc *peerConn) bool {
		if pc.hungUp() {
			pc.UnixConn.Close()
			return true
		}
		return false
	})
}

// admit records pc and hands it to Accept (the caller holds l.mu).
func (l *guardedListener) admit(pc *peerConn) {
	l.conns = append(l.conns, pc)
	metricConns.Inc()
	l.ready <- pc
}

// members counts the open connections of socket-group members.
func (l *guardedListener) members() int {
	n := 0
	for _, c := range l.conns {
		if !c.peer.root() {
			n++
		}
	}
	return n
}

// evictOldest closes the oldest connection that may be closed to make room
// (tryEvict), among those of which may holds (the caller holds l.mu).
func (l *guardedListener) evictOldest(may func(*peerConn) bool) bool {
	for i, c := range l.conns {
		if !may(c) || !c.tryEvict() {
			continue
		}
		l.conns = slices.Delete(l.conns, i, i+1)
		metricConns.Dec()
		c.UnixConn.Close() // the server's read fails, and it lets go of it
		l.stats.evicted++
		metricEvicted.Inc()
		l.access.log().Debug("control socket: closed a connection that had no request in, to make room", "pid", c.peer.PID)
		return true
	}
	return false
}

// kick admits queued connections, if any: a connection's server has
// started waiting on it, and it may be closable.
func (l *guardedListener) kick() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.admitQueued()
}

func (l *guardedListener) forget(pc *peerConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.conns, pc); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
		metricConns.Dec()
	}
	l.admitQueued()
}
