package control

// A guarded connection (peerConn): its reads, and when it may be closed
// for room; the peer and the answering mark it puts in a request's context
// (PeerFrom, markAnswering).

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// peerConn is an accepted connection with its caller.
type peerConn struct {
	*net.UnixConn
	peer Peer
	l    *guardedListener

	// mu makes a read (its receive and what it records) and tryEvict's
	// look and verdict exclusive: a connection is never closed for room
	// between the moment its request is received and the moment that is
	// recorded. A read does not hold it while it waits for data, and
	// nothing holds it while it takes the listener's lock.
	mu sync.Mutex
	// waiting is set when a read found nothing in the socket, and the
	// server waits on it, until a read takes bytes or fails: only then may
	// the connection be closed for room. Not when the server has let go of
	// its answer (answered): the next request may be in its buffer already,
	// sent along with the last one, and read without the socket.
	waiting bool
	// answering is set from the moment a request's headers have been read
	// (the server calls the handler next) until its answer has been
	// written out (answered).
	answering bool
	// received is set when the server has read part of a request's headers
	// and not the rest, until it is answered.
	received bool
	// served is set once an answer was written: the connection is kept
	// alive.
	served bool
	// evicted is set when tryEvict chose the connection: reads from then
	// on fail, as on a closed connection.
	evicted bool
	// newlines counts the line feeds at the end of what the server read
	// last: the blank line that ends a request's headers may straddle
	// reads. Reads on a connection follow one another (the server's own
	// goroutine, or its background read, which it waits for).
	newlines int
	once     sync.Once
}

// Read is the server's read: it follows how far a request has arrived,
// and whether the server waits on the socket. The receive itself and what
// it records happen under mu, so tryEvict sees a connection either before
// the bytes were taken (still waiting in the socket) or after they were
// recorded, never in between. When a read starts waiting on a connection
// that may be closed for room, it kicks the queue first (outside mu and
// the descriptor: the kick may close the connection).
func (c *peerConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return c.UnixConn.Read(b)
	}
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	kick, refused := false, false
	read := func(fd uintptr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.evicted {
			rerr = net.ErrClosed
			return true
		}
		if !c.answering && c.l.refusing.Load() {
			// Given up by a stopped server (see drain): a request that
			// arrives now is left unread; an end or an error is read as
			// ever.
			switch peekRead(fd) {
			case unix.EAGAIN:
				return false // nothing yet: wait
			case nil:
				refused = true
				return true
			}
		}
		for {
			n, rerr = unix.Read(int(fd), b)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			if !c.waiting {
				c.waiting = true
				kick = c.closable()
				return kick // out to kick, then back to wait
			}
			return false // nothing yet: wait, without mu
		}
		c.waiting = false
		switch {
		case rerr != nil:
			n = 0
		case n == 0:
			rerr = io.EOF
		case c.headersEnd(b[:n]):
			c.answering = true
		case !c.answering:
			// Part of a request's headers, all that has come: if no more
			// is on its way, the connection may be closed to make room.
			c.received = true
		}
		return true
	}
	err = raw.Read(read)
	if err == nil && kick {
		c.l.kick()
		err = raw.Read(read)
	}
	if err == nil && refused {
		c.Close() // with the request unread: the caller reads ECONNRESET
		return 0, c.readError(net.ErrClosed)
	}
	if err != nil {
		// Closed (for room, say), or past the deadline: as a read of the
		// net package's fails, for the server to take it as one, not as a
		// malformed request it would answer 400.
		c.mu.Lock()
		c.waiting = false
		c.mu.Unlock()
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err
		}
		return 0, c.readError(err)
	}
	switch {
	case rerr == net.ErrClosed:
		return 0, c.readError(rerr)
	case rerr != nil && rerr != io.EOF:
		return 0, c.readError(os.NewSyscallError("read", rerr))
	}
	return n, rerr
}

// peekRead looks at what the socket fd holds without taking it: nil when
// there are bytes to read, EAGAIN when there is nothing yet, another error
// (io.EOF when the caller hung up) otherwise.
func peekRead(fd uintptr) error {
	var b [1]byte
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		return nil
	}
}

// refuse closes a connection a draining listener gave up before the
// server took it (see drain): once its request has arrived, unread, so
// that its caller reads a reset; or when its caller hangs up, or after
// ReadTimeout.
func (c *peerConn) refuse() {
	c.SetReadDeadline(time.Now().Add(ReadTimeout))
	var b [1]byte
	c.Read(b[:]) // refusing: takes nothing of a request
	c.Close()
}

// readError is a failed read of c, as the net package reports one.
func (c *peerConn) readError(err error) error {
	return &net.OpError{Op: "read", Net: "unix", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// headersEnd reports whether b, following what was read before, holds the
// blank line that ends a request's headers: two line feeds, carriage
// returns aside. (One in a body counts too: it only keeps that connection
// from being closed for room, which its request being answered does
// already.)
func (c *peerConn) headersEnd(b []byte) bool {
	found := false
	for _, x := range b {
		switch x {
		case '\n':
			if c.newlines++; c.newlines == 2 {
				found, c.newlines = true, 0
			}
		case '\r':
		default:
			c.newlines = 0
		}
	}
	return found
}

// tryEvict reports whether the connection may be closed to make room, and
// if so marks it so its reads fail from then on (the caller, holding the
// listener's lock, closes it): a kept-alive idle connection, or a
// request's headers the server has read part of and no more arrived of (a
// stalled caller: one that sends a request writes its headers whole),
// either only while the server waits on the socket (not while a read
// takes bytes: it waits for mu), with nothing in it (bytes it sent wait
// unread: the server is behind, not the caller). Never while a request is
// being answered, nor a new connection that has sent nothing (its caller
// may not have had the CPU to write yet).
func (c *peerConn) tryEvict() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting || !c.closable() || c.unread() != 0 {
		return false
	}
	c.evicted = true
	return true
}

// tryCloseIdle is tryEvict for a draining listener: it lets go of a
// kept-alive connection that waits with no request in, not of a half-sent
// request (at the deadline, the rest of it is refused unread).
func (c *peerConn) tryCloseIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting || !c.served || c.answering || c.received || c.unread() != 0 {
		return false
	}
	c.evicted = true
	return true
}

// closable reports whether the connection has no request in, and has
// sent something (the caller holds mu): once its server waits on it with
// nothing unread, it may be closed for room.
func (c *peerConn) closable() bool {
	return !c.answering && (c.received || c.served)
}

// unread returns how many bytes the caller sent that the server has not
// read yet (SIOCINQ); -1 when that cannot be told (the connection is being
// closed).
func (c *peerConn) unread() int {
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	if err := raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	}); err != nil {
		return -1
	}
	return n
}

// hungUp reports whether the caller of a queued connection has closed its
// end.
func (c *peerConn) hungUp() bool {
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return true
	}
	hup := false
	raw.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(p, 0); err == nil && n > 0 {
			hup = p[0].Revents&unix.POLLHUP != 0
		}
	})
	return hup
}

func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(func() { c.l.forget(c) })
	return err
}

type connKey struct{}

// PeerFrom returns the caller of a request served by Serve on a listener
// from Listen.
func PeerFrom(ctx context.Context) (Peer, bool) {
	if pc, ok := ctx.Value(connKey{}).(*peerConn); ok {
		return pc.peer, true
	}
	return Peer{}, false
}

// markAnswering marks the request's connection as being answered: it is
// not closed to make room until its answer has been written (answered).
// (Its reads have marked it already, once they held the whole headers.)
func markAnswering(ctx context.Context) {
	if pc, ok := ctx.Value(connKey{}).(*peerConn); ok {
		pc.mu.Lock()
		pc.answering = true
		pc.mu.Unlock()
	}
}

// answered says the connection's answer has been written out whole (the
// server is idle on it again, kept alive): it may be closed to make room
// once the server waits on it (its next read kicks root's queue then).
// Not when the handler returns: the answer may still be in the server's
// buffer then, and closing the connection would cut it short.
func (c *peerConn) answered() {
	c.mu.Lock()
	c.served, c.received, c.answering = true, false, false
	c.mu.Unlock()
}
