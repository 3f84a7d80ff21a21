package resolver

// A client's TCP connection: its state (waiting, idle, stopped, paused)
// and its reader, which reads the framed queries and answers them, or
// hands them to the slow path. Its replies are written by its tcpWriter
// (tcpwrite.go); admitConn (tcpadmit.go) lets it in.

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
		msg, n, own, err := readFrame(c, br, first[0])
		switch {
		case err != nil:
			return readFailed(err)
		case n > maxQuery:
			// Longer than any query we take: answered from its header,
			// the rest read off the connection and thrown away, so a
			// pod cannot make the resolver hold 64 KiB per query.
			reply, err := s.answerLong(br, n, tc.src, out[:0], sc)
			if err != nil {
				return readFailed(err)
			}
			w.writeNow(reply)
			s.pauseForRate(tc, sc)
			continue
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

// readFrame reads the rest of a frame whose first octet, read already, is
// first: the second octet of its length n, then its message, within
// tcpReadTimeout, the deadline set only when the reader has to wait for
// it. msg is the reader's own bytes, valid until its next read (the query
// is answered, or copied for the slow path, before), unless own: a
// message longer than the reader's buffer gets one of its own. A message
// longer than maxQuery is left unread, msg nil, for answerLong, with the
// deadline set for it. It fails with the read's error; a message cut
// short is counted dropped.
func readFrame(c *net.TCPConn, br *bufio.Reader, first byte) (msg []byte, n int, own bool, err error) {
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
		return nil, 0, false, err
	}
	n = int(first)<<8 | int(second)
	arm(n)
	if n > maxQuery {
		return nil, n, false, nil
	}
	if own = n > br.Size(); own {
		msg = make([]byte, n)
		_, err = io.ReadFull(br, msg)
	} else {
		msg, err = br.Peek(n)
		br.Discard(len(msg))
	}
	if err != nil {
		metricQueries.drop.Inc() // a truncated frame: nothing sensible to answer
		return nil, n, own, err
	}
	return msg, n, own, nil
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
