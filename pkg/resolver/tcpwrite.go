package resolver

// The reply writer of a TCP connection (tcpWriter): it frames and writes
// the connection's replies one at a time, bounds those of the slow path
// (maxTCPPending), and closes the connection, counting the replies lost,
// when one cannot be written in time.

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// tcpWriteTimeout bounds how long a reply may take from the moment it is
// ready until it is written, its wait behind the connection's other
// replies included: a client that reads slower than that has its
// connection closed, and everything it held given back. A variable for
// the tests alone, set before a server starts.
var tcpWriteTimeout = 2 * time.Second

// maxTCPPending bounds the queries of one connection on the slow path at
// once: being answered (forwarded, say), or with a reply waiting to be
// written. The connection's reader still reads and answers queries of the
// fast path at the bound; the next slow-path query it reads, it holds
// (one more) and waits with until one of them is written, reading nothing
// meanwhile. So a client that pipelines faster than it reads its replies
// is held back by TCP itself, and what a connection holds does not grow
// with what it sends. BIND serves at most 23 pipelined queries of a
// connection at once; CoreDNS (miekg/dns) one.
const maxTCPPending = 16

// tcpWriter writes the replies of one connection, one at a time, and
// bounds those of the slow path (maxTCPPending). Whoever has a reply
// ready and finds no one writing writes it, and then those queued
// meanwhile; the others queue theirs and return, so no goroutine waits
// for its turn holding its stack. A queued reply holds its bytes of the
// budget of replies in flight until it is written, for at most
// tcpWriteTimeout from when it was ready: past that, the connection is
// closed, and every queued reply given back.
//
// A reply that is not written (its connection closed first, or its write
// failed) was counted answered as it was made: it counts in
// ztdns_resolver_tcp_unsent_replies_total too, by why its connection was
// closed.
type tcpWriter struct {
	tc *tcpConn
	c  *net.TCPConn
	mu sync.Mutex
	// changed is broadcast when a slot frees, the turn to write is given
	// up, or the connection closes.
	changed sync.Cond
	pending int  // slow-path queries not yet written or dropped
	writing bool // someone writes: the turn is taken
	closed  bool
	reason  closeReason   // why it was closed, once closed
	queue   []queuedReply // ready, waiting for the turn
}

// queuedReply is a slow-path reply waiting to be written; release gives
// back its bytes of the budget (nil: it holds none).
type queuedReply struct {
	reply   []byte
	ready   time.Time
	release func()
}

func (w *tcpWriter) init(tc *tcpConn) {
	w.tc, w.c = tc, tc.c
	w.changed.L = &w.mu
}

// acquire takes a slot for a query on the slow path, waiting while the
// connection has maxTCPPending of them. It reports false when the
// connection closed meanwhile. The server stopping does not end the wait:
// the query was read, and a stopping server answers what it read (Drain);
// the slots free as the replies before it are written, each within
// slowPathTimeout and tcpWriteTimeout.
func (w *tcpWriter) acquire() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.pending >= maxTCPPending && !w.closed {
		w.changed.Wait()
	}
	if w.closed {
		return false
	}
	w.pending++
	return true
}

// send writes reply, that of a query holding a slot (nil: there is
// nothing to send), and gives back the slot and release once it is
// written or dropped. It writes the reply itself when no one else is
// writing; otherwise it queues it for whoever is, and returns at once.
func (w *tcpWriter) send(reply []byte, release func()) {
	if len(reply) > maxTCPMessage {
		// Not framed: its length would not fit in two octets. None should
		// come here (answers are cut to a message, and an upstream's came
		// in one); every TCP reply passes here, so this one guard keeps
		// the stream framed: dropped, the client retries.
		reply = nil
	}
	ready := time.Now()
	w.mu.Lock()
	if w.closed || reply == nil {
		if w.closed && reply != nil {
			metricTCPUnsent[w.reason].Inc()
		}
		w.pending--
		quiet := w.pending == 0 && !w.closed
		w.changed.Broadcast()
		w.mu.Unlock()
		if release != nil {
			release()
		}
		if quiet {
			w.tc.quiet()
		}
		return
	}
	w.queue = append(w.queue, queuedReply{reply: reply, ready: ready, release: release})
	if w.writing {
		w.mu.Unlock()
		return
	}
	w.writing = true
	w.mu.Unlock()
	w.drain()
}

// writeNow writes reply, the reader's own (its buffer is reused once this
// returns), at its turn: the reader waits for it, reading nothing
// meanwhile.
func (w *tcpWriter) writeNow(reply []byte) {
	ready := time.Now()
	w.mu.Lock()
	for w.writing && !w.closed {
		w.changed.Wait()
	}
	if w.closed {
		metricTCPUnsent[w.reason].Inc()
		w.mu.Unlock()
		return
	}
	w.writing = true
	w.mu.Unlock()
	if err := w.write(reply, ready); err != nil {
		w.writeFailed(err)
	}
	w.drain()
}

// drain writes the queued replies, in turn, until none is left, then
// gives up the turn; the caller has it.
func (w *tcpWriter) drain() {
	for {
		w.mu.Lock()
		if w.closed || len(w.queue) == 0 {
			w.writing = false
			w.changed.Broadcast()
			w.mu.Unlock()
			return
		}
		r := w.queue[0]
		n := copy(w.queue, w.queue[1:])
		w.queue[n] = queuedReply{}
		w.queue = w.queue[:n]
		w.mu.Unlock()
		err := w.write(r.reply, r.ready)
		if r.release != nil {
			r.release()
		}
		w.mu.Lock()
		w.pending--
		quiet := w.pending == 0 && err == nil
		w.changed.Broadcast()
		w.mu.Unlock()
		if err != nil {
			w.writeFailed(err)
		} else if quiet {
			w.tc.quiet()
		}
	}
}

// errWaitedTooLong: a reply waited for its turn to be written until
// tcpWriteTimeout after it was ready.
const errWaitedTooLong = constError("the reply waited too long for its turn to be written")

// write writes one reply, framed, within tcpWriteTimeout of ready. It
// fails when the reply waited too long already, or the write did not end
// in time or failed: the connection is then to be closed (writeFailed).
func (w *tcpWriter) write(reply []byte, ready time.Time) error {
	deadline := ready.Add(tcpWriteTimeout)
	if !time.Now().Before(deadline) {
		return errWaitedTooLong
	}
	var length [2]byte
	binary.BigEndian.PutUint16(length[:], uint16(len(reply)))
	w.c.SetWriteDeadline(deadline)
	frame := net.Buffers{length[:], reply} // one writev, no copy of the reply
	_, err := frame.WriteTo(w.c)
	return err
}

// writeFailed closes the connection after the write of a reply failed
// with err, the reply unsent: for write_timeout when it did not end within
// tcpWriteTimeout of the reply being ready, for the client otherwise (it
// reset the connection, say). A write that failed for the connection
// being closed meanwhile counts for why it was.
func (w *tcpWriter) writeFailed(err error) {
	reason := closedByClient
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errWaitedTooLong) {
		reason = closedWriteTimeout
	}
	w.close(reason, 1)
}

// close closes the connection for reason, and gives back at once what
// the replies queued on it hold: a query that is still being answered
// gives back its reply as it comes (send), and the one being written when
// its write fails, at once, as the connection is closed. lost is the
// replies the caller could not write (counted unsent with the queued
// ones). The first close says why the connection was closed; a later one
// only counts what it lost.
func (w *tcpWriter) close(reason closeReason, lost int) {
	w.mu.Lock()
	if w.closed {
		reason = w.reason
		w.mu.Unlock()
		if lost > 0 {
			metricTCPUnsent[reason].Add(float64(lost))
		}
		return
	}
	w.closed, w.reason = true, reason
	queued := w.queue
	w.queue = nil
	// Every reply still to come is lost: those queued, and the one whose
	// write failed (lost), counted unsent now; those being answered,
	// counted as they come (send; a query that ends with nothing to send
	// counts nothing), as is one being written when another party closes
	// the connection (an eviction), counted when its write fails.
	dropped, answering := lost+len(queued), w.pending-len(queued)
	w.pending -= len(queued)
	w.changed.Broadcast()
	w.mu.Unlock()
	w.c.Close()
	metricTCPClosed[reason].Inc()
	if dropped > 0 {
		metricTCPUnsent[reason].Add(float64(dropped))
	}
	for _, r := range queued {
		if r.release != nil {
			r.release()
		}
	}
	w.tc.logClose(reason, dropped, answering)
}

// wait returns once every slow-path query of the connection has its reply
// written or dropped, or the connection is closed.
func (w *tcpWriter) wait() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.pending > 0 && !w.closed {
		w.changed.Wait()
	}
}
