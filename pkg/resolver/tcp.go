package resolver

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// tcpReadTimeout bounds how long the rest of a started message may take:
// a truncated frame closes the connection instead of holding it open.
const tcpReadTimeout = 2 * time.Second

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

// Buffers a connection keeps between queries, made at its first query:
// tcpQueryBuf the reader's (a frame's length and the query, read in one
// syscall, several pipelined ones too). A larger query or local answer gets
// a buffer of its own that goes with it, so a connection that once carried
// a big message does not hold one for the rest of its life.
const (
	tcpQueryBuf  = 512
	tcpAnswerBuf = 1024
	tcpKeepBuf   = 4096
)

// maxTCPMessage is the longest message a TCP frame carries: its length is
// two octets (RFC 1035 4.2.2).
const maxTCPMessage = 0xffff

// Levels of TCP connection pressure, by the share of TCPMaxConns open. The
// fuller the table, the sooner an idle connection is closed (unbound's
// tcp-idle-timeout does the same): at half, a tenth of TCPIdleTimeout; at
// three quarters, a hundredth.
const (
	connsRelaxed int32 = iota
	connsBusy
	connsCrowded
)

// tcpConn is one client connection.
type tcpConn struct {
	s      *Server
	c      *net.TCPConn
	src    netip.AddrPort
	source *quota.Source

	mu sync.Mutex
	// waiting: the reader waits for the first byte of a query; idle: it
	// waits with no reply to come, since idleSince (settle).
	waiting, idle bool
	idleSince     time.Time
	stopped       bool // the server stops: the connection waits for no further query
	// wake is closed by stop: it ends a pause (made at the first pause).
	wake chan struct{}

	// released: its slot is given back (once); evicted: closed to make
	// room for a source under its share.
	released, evicted atomic.Bool

	up connUpstreams
	w  tcpWriter
}

// closeReason is why a connection was closed: the reason label of
// ztdns_resolver_tcp_closed_total and _unsent_replies_total.
type closeReason uint8

const (
	closedByClient     closeReason = iota // it closed or reset the connection
	closedIdle                            // no query within the idle timeout
	closedReadStall                       // a started message not whole within tcpReadTimeout
	closedNotDNS                          // a message that is no query
	closedWriteTimeout                    // a reply not written within tcpWriteTimeout of being ready
	closedEvicted                         // to make room for a source within its share (makeRoom)
	closedStopped                         // the server stopped or drained
	nCloseReasons
)

var closeReasonLabels = [nCloseReasons]string{"client", "idle", "read_stall", "not_dns", "write_timeout", "evicted", "stopped"}

// connUpstreams are where a TCP connection's misses go: the pod's own
// nameserver, once a lookup found it, kept for the connection's life. The
// pod opened it to one nameserver; what capture says of the address later
// (its slot, idle as capture sees it while the connection only sends,
// given to another destination) is not about this connection. Looked up
// lazily: a connection that never forwards pays nothing.
type connUpstreams struct {
	addrs atomic.Pointer[[]netip.AddrPort] // nil until a lookup found the pod's
}

// get returns the connection's upstreams, looking them up until a lookup
// finds the pod's own nameserver; of pipelined forwards racing, the first
// stored wins. A fallback (the configured upstreams: capture does not know
// the pod's yet, after a restart, say) is used and not kept, or the
// connection would keep the node's nameservers for life.
func (u *connUpstreams) get(s *Server, src, local netip.AddrPort) []netip.AddrPort {
	if p := u.addrs.Load(); p != nil {
		return *p
	}
	addrs, own := s.upstreams(src, local)
	if !own || len(addrs) == 0 || u.addrs.CompareAndSwap(nil, &addrs) {
		return addrs
	}
	return *u.addrs.Load()
}

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

// isIdle reports whether the connection waits for a query with no reply
// to come.
func (tc *tcpConn) isIdle() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.idle
}

// waitForQuery has the reader wait for the next query, at once when it
// has started arriving (buffered). It reports false when the server stops
// (stop): the connection is to end, unless a whole query is buffered
// (whole), read with the ones before it: that is answered first, as Drain
// promises. Checked under mu, where stop sets it, so that the deadline set
// here never replaces the one stop set.
func (tc *tcpConn) waitForQuery(buffered, whole bool) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.stopped {
		return whole
	}
	if !buffered {
		tc.waiting = true
		tc.settle()
	}
	return true
}

// settle starts a waiting connection's idle timeout now, unless replies
// are still to be written: it is not idle then, as a client that waits
// for its answers on an open connection (glibc, Go, dig +tcp) expects,
// and waits with no read deadline (its replies each end within
// slowPathTimeout and tcpWriteTimeout) until the last one is (quiet).
// The caller holds mu.
func (tc *tcpConn) settle() {
	tc.w.mu.Lock()
	pending := tc.w.pending
	tc.w.mu.Unlock()
	if pending > 0 {
		tc.c.SetReadDeadline(time.Time{})
		return
	}
	tc.idle, tc.idleSince = true, time.Now()
	tc.c.SetReadDeadline(tc.idleSince.Add(tc.s.idleTimeout(tc.s.tcpLevel.Load())))
}

// quiet is called once the last reply to come is written or dropped: a
// connection waiting for a query is idle from now.
func (tc *tcpConn) quiet() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.waiting && !tc.idle && !tc.stopped {
		tc.settle()
	}
}

// stop has the connection read no further query: a waiting or pausing
// one ends at once (once its replies are written), a busy one once its
// query is answered.
func (tc *tcpConn) stop() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.stopped {
		return
	}
	tc.stopped = true
	if tc.waiting {
		tc.c.SetReadDeadline(time.Now())
	}
	if tc.wake != nil {
		close(tc.wake)
	}
}

// isStopped reports whether stop was called.
func (tc *tcpConn) isStopped() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.stopped
}

// pause holds the reader for d, reading nothing. It returns at once when
// the server stops (stop) before or meanwhile.
func (tc *tcpConn) pause(d time.Duration) {
	tc.mu.Lock()
	if tc.stopped {
		tc.mu.Unlock()
		return
	}
	if tc.wake == nil {
		tc.wake = make(chan struct{})
	}
	wake := tc.wake
	tc.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	}
}

// busy marks the connection as reading or answering a query.
func (tc *tcpConn) busy() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.waiting, tc.idle = false, false
}

// shortenIdle moves the deadline of an idle connection to timeout after it
// went idle (at once, when that has passed).
func (tc *tcpConn) shortenIdle(timeout time.Duration) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.idle {
		tc.c.SetReadDeadline(tc.idleSince.Add(timeout))
	}
}

// logClose logs the close of the connection, sparingly (tcpCloseLog),
// when it lost replies or was closed for what its client did or to make
// room; not the usual ends: the client's close, the idle timeout, the
// server stopping. dropped is the replies counted unsent as it closed
// (ztdns_resolver_tcp_unsent_replies_total); answering, the queries still
// being answered, whose replies count unsent as they come.
func (tc *tcpConn) logClose(reason closeReason, dropped, answering int) {
	switch reason {
	case closedByClient, closedIdle, closedStopped:
		if dropped == 0 && answering == 0 {
			return
		}
	}
	tc.s.tcpCloseLog.Log(tc.s.log, slog.LevelInfo, "closed a client's TCP connection",
		"client", tc.src, "reason", closeReasonLabels[reason], "repliesDropped", dropped, "queriesAnswering", answering)
}

// admitConn starts serving a new connection unless its source has all the
// connections it may have (its own bound, or past half of TCPMaxConns its
// fair share: quota.Pool) or the server has. A source within its share
// that finds every connection taken gets one anyway: a connection of the
// source most over its share is closed for it (makeRoom). Connections do
// not end on their own as forwarded queries do: one that keeps sending a
// query now and then is never idle, and without this, sources that took
// their connections while the server was quieter would keep the others
// out for good.
func (s *Server) admitConn(c *net.TCPConn, local netip.AddrPort) bool {
	src := addrPortOf(c.RemoteAddr())
	_, source := s.sourceOf(src.Addr(), s.clock())
	v := source.OpenConn(s.opts.Limits.TCPConns, s.tcpOpen)
	if v == quota.OverPool && s.makeRoom(source) {
		v = source.OpenConn(s.opts.Limits.TCPConns, s.tcpOpen)
	}
	switch v {
	case quota.OverSource:
		metricTCPRejected.source.Inc()
		return false
	case quota.OverPool:
		metricTCPRejected.total.Inc()
		return false
	}
	tc := &tcpConn{s: s, c: c, src: src, source: source}
	tc.w.init(tc)
	metricTCPConns.Inc()
	if !s.trackConn(tc) {
		s.releaseConn(tc)
		return false
	}
	s.raiseConnLevel()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.releaseConn(tc)
		defer s.untrackConn(tc)
		s.serveTCPConn(tc, local)
	}()
	return true
}

// makeRoom closes a connection of the source that holds the most
// connections beyond its fair share (an idle one if it has one), other
// than asking, and gives its slot back at once. It reports false when no
// source is over its share.
func (s *Server) makeRoom(asking *quota.Source) bool {
	share, some := s.tcpOpen.OverShare() // one reading for every connection compared
	if !some {
		return false
	}
	s.mu.Lock()
	var (
		pick     *tcpConn
		most     int64
		pickIdle bool
	)
	for tc := range s.tcp {
		if tc.source == asking || tc.evicted.Load() {
			continue
		}
		// The most over; of its connections, an idle one.
		over := tc.source.ConnsOver(share)
		if over <= 0 || over < most || over == most && (pick.source != tc.source || pickIdle) {
			continue
		}
		idle := tc.isIdle()
		if over == most && !idle {
			continue
		}
		pick, most, pickIdle = tc, over, idle
	}
	if pick == nil {
		s.mu.Unlock()
		return false
	}
	pick.evicted.Store(true) // under mu, where the walk skips the evicted
	s.mu.Unlock()
	pick.source.CountTCPRefused()
	metricTCPRejected.source.Inc()
	s.releaseConn(pick)
	pick.c.SetLinger(0)
	// Closed before it stops, which would have a waiting reader end for
	// the server stopping; its goroutine ends at once, without waiting for
	// its forwarded queries.
	pick.w.close(closedEvicted, 0)
	pick.stop() // a pausing reader too
	return true
}

func (s *Server) releaseConn(tc *tcpConn) {
	if !tc.released.CompareAndSwap(false, true) {
		return
	}
	tc.source.CloseConn(s.tcpOpen)
	metricTCPConns.Dec()
	s.tcpLevel.Store(s.connLevel())
}

// connLevel is the pressure the open connections put on the server.
func (s *Server) connLevel() int32 {
	open, max := int(s.tcpOpen.Used()), s.opts.TCPMaxConns
	switch {
	case 4*open >= 3*max:
		return connsCrowded
	case 2*open >= max:
		return connsBusy
	}
	return connsRelaxed
}

// idleTimeout is how long a connection may sit idle at a pressure level.
func (s *Server) idleTimeout(level int32) time.Duration {
	switch level {
	case connsCrowded:
		return s.opts.TCPIdleTimeout / 100
	case connsBusy:
		return s.opts.TCPIdleTimeout / 10
	}
	return s.opts.TCPIdleTimeout
}

// raiseConnLevel records the pressure after a new connection; when it rose,
// connections already idle get the shorter timeout too.
func (s *Server) raiseConnLevel() {
	level := s.connLevel()
	if s.tcpLevel.Swap(level) >= level {
		return
	}
	timeout := s.idleTimeout(level)
	s.mu.Lock()
	defer s.mu.Unlock()
	for tc := range s.tcp {
		tc.shortenIdle(timeout)
	}
}

// serveTCPConn answers the length-prefixed queries on one connection (RFC
// 7766). Local answers are written in order as they are read; forwarded
// answers are written when ready, which the RFC allows, so a slow upstream
// does not hold up the rest of the pipeline. Forwarded queries are bounded
// per source (see slow), and the queries on the slow path per connection
// (maxTCPPending): at that bound the reader, on the next slow-path query,
// waits for a reply to be written before it reads on.
//
// Nothing the client sends is read faster than it is answered: a frame
// that is no query (shorter than a header, a response) closes the
// connection (RFC 7766 6.2.4 allows it on bad input), and once a query
// leaves its source over its rate, the reader waits until the rate allows
// the next one (pauseForRate), so TCP holds the client back instead of the
// resolver reading and refusing as fast as it sends.
func (s *Server) serveTCPConn(tc *tcpConn, local netip.AddrPort) {
	reason := s.readQueries(tc, local)
	// The replies still to come are written before the connection closes
	// (a client that half-closed waits for them); an evicted connection,
	// or one closed for a reply that waited too long, holds no goroutine
	// while its forwarded queries finish: their replies are dropped as
	// they come.
	tc.w.wait()
	tc.w.close(reason, 0) // the connection too
}

// errNotQuery: a TCP message that is no query (shorter than a header, a
// response).
const errNotQuery = constError("a message that is no query")

// readQueries reads and answers the connection's queries until it is to
// be closed, and says why.
func (s *Server) readQueries(tc *tcpConn, local netip.AddrPort) closeReason {
	c, w := tc.c, &tc.w
	// Made at the first query: an idle connection that never asked holds
	// no buffer.
	var (
		br  *bufio.Reader
		out []byte
		sc  *scratch
	)
	for {
		buffered := br != nil && br.Buffered() > 0
		if !tc.waitForQuery(buffered, buffered && wholeFrame(br)) {
			return closedStopped
		}
		var (
			first [1]byte
			err   error
		)
		if br == nil {
			_, err = io.ReadFull(c, first[:])
		} else {
			first[0], err = br.ReadByte()
		}
		// Busy even when the read failed: a client that half-closed may
		// wait for its forwarded replies (serveTCPConn's wait), and is
		// not an idle connection to close for another source's.
		tc.busy()
		if err != nil {
			switch {
			case !errors.Is(err, os.ErrDeadlineExceeded):
				return closedByClient // or closed by the writer, which said why
			case tc.isStopped():
				return closedStopped
			}
			return closedIdle
		}
		if br == nil {
			br, out, sc = bufio.NewReaderSize(c, tcpQueryBuf), make([]byte, 0, tcpAnswerBuf), &scratch{captureSlot: s.captureSlot(local), conn: tc.source}
		}
		// The rest of the frame within tcpReadTimeout, the deadline set
		// only when the reader has to wait for it.
		armed := false
		arm := func(need int) {
			if !armed && br.Buffered() < need {
				c.SetReadDeadline(time.Now().Add(tcpReadTimeout))
				armed = true
			}
		}
		arm(1)
		second, err := br.ReadByte()
		if err != nil {
			return readFailed(err)
		}
		n := int(first[0])<<8 | int(second)
		if n > maxQuery {
			// Longer than any query we take: answered from its header,
			// the rest read off the connection and thrown away, so a
			// pod cannot make the resolver hold 64 KiB per query.
			arm(n)
			reply, err := s.answerLong(br, n, tc.src, out[:0], sc)
			if err != nil {
				return readFailed(err)
			}
			w.writeNow(reply)
			s.pauseForRate(tc, sc)
			continue
		}
		arm(n)
		var msg []byte
		own := n > br.Size() // a buffer of its own, not the reader's
		if own {
			msg = make([]byte, n)
			_, err = io.ReadFull(br, msg)
		} else {
			// The reader's own bytes, valid until its next read: the
			// query is answered, or copied for the slow path, before.
			msg, err = br.Peek(n)
			br.Discard(len(msg))
		}
		if err != nil {
			metricQueries.drop.Inc()
			return readFailed(err) // a truncated frame: nothing sensible to answer
		}
		start := s.clock()
		reply, slow := s.answerFast(msg, tc.src, true, out[:0], sc, start)
		if !slow {
			if reply == nil {
				return closedNotDNS // no query (counted dropped): the stream is not DNS
			}
			w.writeNow(reply)
			s.giveBack(sc)
			if !s.opts.NoRequestMetrics {
				s.observeLocal(reply, s.clock()-start)
			}
			s.pauseForRate(tc, sc)
			if cap(reply) <= tcpKeepBuf {
				out = reply[:0]
			}
			continue
		}
		if !w.acquire() { // closed by the writer (a reply waited too long, evicted), which said why
			metricQueries.drop.Inc() // the query read is not answered
			return closedByClient    // as after a read's error: not counted, the writer's reason stands
		}
		if !own { // the reader's buffer: the next query reuses it
			msg = slices.Clone(msg)
		}
		// The reply holds its bytes of the budget until it is written;
		// one that does not fit becomes SERVFAIL (finishing).
		s.slow(msg, tc.src, local, tc, w.send)
		s.pauseForRate(tc, sc)
	}
}

// readFailed is why a read of a started message that failed with err
// ends its connection: it did not arrive within tcpReadTimeout, it is no
// query, or the client closed or reset the connection (or the writer
// closed it, and said why).
func readFailed(err error) closeReason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return closedReadStall
	case errors.Is(err, errNotQuery):
		return closedNotDNS
	}
	return closedByClient
}

// wholeFrame reports whether br holds a whole frame, its length and its
// message, which can be read without reading the connection.
func wholeFrame(br *bufio.Reader) bool {
	if br.Buffered() < 2 {
		return false
	}
	b, _ := br.Peek(2) // buffered: no read
	return br.Buffered() >= 2+int(binary.BigEndian.Uint16(b))
}

// pauseForRate holds the reader after a query, before it reads the next,
// until the rate allows the source's next query, at most the connection's
// idle timeout: a client pipelining over its rate is read at the rate, its
// burst at once, rather than answered and REFUSED in turn. The source is
// the one the query was charged to (sc.charged, by chargeRate): a pod may
// own the address since the connection was accepted. The server stopping
// ends the pause (the reader then answers what it read, and reads no
// more: waitForQuery).
func (s *Server) pauseForRate(tc *tcpConn, sc *scratch) {
	if s.rate == (quota.Rate{}) {
		return
	}
	if d := min(sc.charged.Wait(s.clock(), s.rate), s.idleTimeout(s.tcpLevel.Load())); d > 0 {
		tc.pause(d)
	}
}

// answerLong answers a TCP query of n octets, longer than maxQuery, from its
// header: FORMERR (REFUSED over the source's rate). The rest of the
// message is read off the connection, a few KiB at a time, and thrown
// away. It fails when the connection is to be closed: the message was cut
// short (the read's error), or is no query (errNotQuery: QR set, say). As
// in answerFast, every message is charged to its source's rate before it
// is parsed, those that are no query included.
func (s *Server) answerLong(c io.Reader, n int, src netip.AddrPort, out []byte, sc *scratch) ([]byte, error) {
	var hdr [dnswire.HeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		metricQueries.drop.Inc()
		return nil, err
	}
	if _, err := io.CopyN(io.Discard, c, int64(n-len(hdr))); err != nil {
		metricQueries.drop.Inc()
		return nil, err
	}
	var r request
	now := s.clock()
	pod, refused, over := s.chargeRate(hdr[:], &r, src, true, out, sc, now)
	if over {
		if refused == nil {
			return nil, errNotQuery
		}
		return refused, nil
	}
	if parse(hdr[:], &r, &sc.name) == verdictDrop {
		metricQueries.drop.Inc()
		return nil, errNotQuery
	}
	metricQueries.formerr.Inc()
	return s.answered(sc, dnswire.AppendErrorReply(out, hdr[:], &r, dnswire.RcodeFormErr), 0, &r, true, pod, src, now, ""), nil
}

// isServFail reports whether reply is a SERVFAIL.
func isServFail(reply []byte) bool {
	return len(reply) >= dnswire.HeaderLen && dnswire.HeaderRcode(reply) == dnswire.RcodeServFail
}
