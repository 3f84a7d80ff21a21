package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// errMismatch reports a TCP reply that is not the answer to our query.
var errMismatch = errors.New("reply does not match the query")

// errNoMemory reports a reply that did not fit the budget of replies in
// flight; errSourceMemory one that did not fit what its source may hold of
// it (its own bound, or its fair share of a budget more than half spent),
// or whose bytes the budget took back for a source within its share.
var (
	errNoMemory     = errors.New("reply does not fit the budget of replies in flight")
	errSourceMemory = errors.New("reply does not fit the bytes its source may hold")
	errTakenBack    = fmt.Errorf("bytes taken back for a source within its share: %w", errSourceMemory)
)

// errNoSocket reports an exchange that could not open its socket: the agent
// is out of file descriptors (EMFILE, ENFILE: its open-file limit) or the
// kernel out of memory for one (ENOBUFS, ENOMEM). It says nothing of the
// upstream; the client gets SERVFAIL, and the agent serves on.
var errNoSocket = errors.New("no socket for the exchange")

// errNoPoller reports a UDP exchange whose Forwarder could not make its
// epoll set (udpPoller), for want of a descriptor or memory as well; the
// next exchange tries again.
var errNoPoller = fmt.Errorf("no epoll set for UDP exchanges: %w", errNoSocket)

// dialError is the error of an exchange's failed dial: errNoSocket when
// no socket could be opened.
func dialError(ctx context.Context, proto string, upstream netip.AddrPort, err error) error {
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE), errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		return fmt.Errorf("dial %s %s: %w: %w", proto, upstream, errNoSocket, err)
	}
	return ctxErrOr(ctx, fmt.Errorf("dial %s %s: %w", proto, upstream, err))
}

// refused is the error of a reply whose bytes the budget refused with v.
func refused(v quota.Verdict) error {
	if v == quota.OverSource {
		return errSourceMemory
	}
	return errNoMemory
}

// exchange sends query (already carrying its own random ID) to one upstream
// over the client's protocol and returns the first reply that matches it. A
// truncated UDP reply is returned as it is: the client sees TC and retries
// over TCP, which reaches the upstream over TCP in turn. The reply's bytes
// are taken from budget, for the source ctx carries (quota.WithSource), and
// stay taken when it is returned. Over UDP, rs (nil: none) may send the
// query again on the exchange's socket while it waits, and icmp is told of
// the ICMP errors the exchange ignored; p waits for its socket.
func exchange(ctx context.Context, upstream netip.AddrPort, query []byte, q dnswire.Question, tcp bool, budget *quota.Budget, rs *resender, icmp *icmpLog, p *udpPoller) ([]byte, error) {
	if tcp {
		return exchangeTCP(ctx, upstream, query, q, budget)
	}
	return exchangeUDP(ctx, upstream, query, q, budget, rs, icmp, p)
}

// exchangeUDP reads from a connected socket of its own, so packets from other
// addresses never reach it, and skips replies whose ID or question differ.
// An ICMP error ends it early only when the upstream sent it (icmp.go).
// It holds no buffer while it waits: it learns each datagram's size first
// and reads it into a buffer of exactly that size, so a query waiting on a
// slow upstream costs no 64 KiB, and a big reply only what it is. The
// socket is rs's to send the query on again until the exchange ends: the
// reply to either datagram, which carry the same ID, is the one.
func exchangeUDP(ctx context.Context, upstream netip.AddrPort, query []byte, q dnswire.Question, budget *quota.Budget, rs *resender, icmp *icmpLog, p *udpPoller) ([]byte, error) {
	fd, err := dialUDP(upstream) // IP_RECVERR set: an ICMP error about the query is queued
	if err != nil {
		return nil, dialError(ctx, "udp", upstream, err)
	}
	defer rawClose(fd) // which takes it out of p's set
	w, err := p.add(fd)
	if err != nil {
		return nil, dialError(ctx, "udp", upstream, err)
	}
	defer p.remove(w)
	s := udpSocket{fd: fd, w: w, poller: p, ctx: ctx, upstream: upstream, icmp: icmp}
	// Known to rs before the upstream can get the query; forgotten before
	// the socket is closed.
	rs.sent(fd, upstream, query)
	defer rs.done(fd)
	// The query leaves once the socket is in p's set, so nothing that
	// comes after can be missed. One that did not leave for want of room
	// (EAGAIN), or for the socket's pending error (an ICMP error's, about
	// a resend), is written again by s.write, which waits for room; any
	// other error (EPERM: the node rejects it, a Service without
	// endpoints) ends the exchange, as s.write's would, without a second
	// try. No read is tried before the first wait: the reply cannot have
	// come yet.
	_, sendErr := rawWrite(fd, query)
	switch {
	case sendErr == unix.EAGAIN || icmpErrno(sendErr):
		if err := s.write(query); err != nil {
			return nil, ctxErrOr(ctx, fmt.Errorf("send udp %s: %w", upstream, err))
		}
	case sendErr != nil:
		return nil, ctxErrOr(ctx, fmt.Errorf("send udp %s: %w", upstream, os.NewSyscallError("write", sendErr)))
	}
	if err := s.wait(); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("read udp %s: %w", upstream, err))
	}
	src := quota.SourceFrom(ctx)
	for {
		n, err := s.recv(nil, true)
		if err != nil {
			return nil, ctxErrOr(ctx, fmt.Errorf("read udp %s: %w", upstream, err))
		}
		if n < dnswire.HeaderLen { // not a reply: read it off the socket and go on
			var junk [dnswire.HeaderLen]byte
			if _, err := s.recv(junk[:], false); err != nil {
				return nil, ctxErrOr(ctx, fmt.Errorf("read udp %s: %w", upstream, err))
			}
			continue
		}
		if v := budget.TryTake(src, n); v != quota.Taken {
			return nil, fmt.Errorf("read udp %s: %d-octet reply: %w", upstream, n, refused(v))
		}
		buf := make([]byte, n)
		n, err = s.recv(buf, false)
		if err != nil {
			budget.Give(src, len(buf))
			return nil, ctxErrOr(ctx, fmt.Errorf("read udp %s: %w", upstream, err))
		}
		if n == len(buf) && matches(buf, query, q) {
			return buf, nil
		}
		// A stray or spoofed packet: keep waiting for ours.
		budget.Give(src, len(buf))
	}
}

func exchangeTCP(ctx context.Context, upstream netip.AddrPort, query []byte, q dnswire.Question, budget *quota.Budget) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", upstream.String())
	if err != nil {
		return nil, dialError(ctx, "tcp", upstream, err)
	}
	// A connection per query, closed by us: with a normal close each would
	// keep a local port in TIME_WAIT for a minute, and a pod asking over
	// TCP at its rate would use up the ports to its upstream (connect then
	// spends its time looking for a free one, for every pod). Reset it.
	defer conn.Close()
	defer conn.(*net.TCPConn).SetLinger(0)
	defer interruptOnDone(ctx, conn)()

	var length [2]byte
	binary.BigEndian.PutUint16(length[:], uint16(len(query)))
	frame := net.Buffers{length[:], query} // one writev, no copy of the query
	if _, err := frame.WriteTo(conn); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("send tcp %s: %w", upstream, err))
	}
	// The 16-bit length bounds a reply to 64 KiB; io.ReadFull copes with
	// short reads and turns a frame cut short into an error.
	if _, err := io.ReadFull(conn, length[:]); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("read tcp %s length: %w", upstream, err))
	}
	n := int(binary.BigEndian.Uint16(length[:]))
	if n < dnswire.HeaderLen {
		return nil, fmt.Errorf("read tcp %s: %d-octet reply is shorter than a header", upstream, n)
	}
	src := quota.SourceFrom(ctx)
	// The budget may take the reply's bytes back while the upstream
	// stalls: the read then ends at once, as when ctx ends.
	end := func() { interrupt(conn) }
	reply, err := readReply(conn, n, budget, src, end)
	if err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("read tcp %s reply: %w", upstream, err))
	}
	if !matches(reply, query, q) {
		budget.Give(src, len(reply))
		return nil, fmt.Errorf("tcp %s: %w", upstream, errMismatch)
	}
	return reply, nil
}

// firstChunk is what readReply allocates before a reply's first octets
// arrive: room for a classic 512-octet message.
const firstChunk = 512

// readReply reads a reply of n octets, taking them from budget as they
// arrive, not as they are announced: the upstream may be the pod's own
// choice, and one that announces 64 KiB and stalls holds only what it
// sent (its buffer at most twice that, firstChunk at least). The buffer
// starts at firstChunk and doubles when full, to n at most; each time it
// grows, only the growth is taken: the old buffer is garbage once copied
// into the new, so the budget holds the buffer's size, never more than n
// for one reply (a source bound to one reply of the largest size can read
// it). The reply's bytes stay taken when it is returned; on an error none
// are. They count against src's bound and share of the budget too (nil:
// the budget's alone). While the reply is read, the budget may take its
// bytes back for a source within its share (quota.Hold): end then
// interrupts the read, and the error is errTakenBack.
func readReply(r io.Reader, n int, budget *quota.Budget, src *quota.Source, end func()) ([]byte, error) {
	h := quota.NewHold(src, end)
	size := min(n, firstChunk)
	if v := budget.Grow(h, size); v != quota.Taken {
		return nil, fmt.Errorf("%d-octet reply: %w", n, refused(v))
	}
	buf := make([]byte, 0, size)
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := min(n, 2*cap(buf))
			if v := budget.Grow(h, grown-cap(buf)); v != quota.Taken {
				err := refused(v)
				if !budget.Drop(h) {
					err = errTakenBack
				}
				return nil, fmt.Errorf("%d-octet reply, %d octets read: %w", n, len(buf), err)
			}
			next := make([]byte, len(buf), grown)
			copy(next, buf)
			buf = next
		}
		k, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil && len(buf) < n {
			if !budget.Drop(h) {
				return nil, fmt.Errorf("%d-octet reply, %d octets read: %w", n, len(buf), errTakenBack)
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	if !budget.Keep(h) { // read whole just as its bytes were taken back
		return nil, fmt.Errorf("%d-octet reply: %w", n, errTakenBack)
	}
	return buf, nil
}

// interruptOnDone makes blocked I/O on conn return as soon as ctx ends (the
// deadline or a cancel when another upstream won). Call the result to stop.
// The deadline is ctx's timer's alone: conn gets none of its own, which
// would be a second timer for every exchange, set and deleted.
func interruptOnDone(ctx context.Context, conn deadliner) (stop func()) {
	s := context.AfterFunc(ctx, func() { interrupt(conn) })
	return func() { s() }
}

// interrupt makes blocked I/O on conn return at once.
func interrupt(conn deadliner) { _ = conn.SetDeadline(time.Unix(1, 0)) }

// deadliner is a TCP exchange's connection.
type deadliner interface{ SetDeadline(time.Time) error }

// ctxErrOr prefers the context's error, so an I/O error caused by the
// deadline or a cancel is reported as such.
func ctxErrOr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// matches reports whether reply answers query: a response with the same ID,
// opcode and question. Error replies without a question (FORMERR, NOTIMP)
// are accepted on ID and opcode alone, as servers that cannot parse a query
// cannot echo it.
func matches(reply, query []byte, q dnswire.Question) bool {
	rh, err := dnswire.ReadHeader(reply)
	if err != nil {
		return false
	}
	qh, _ := dnswire.ReadHeader(query)
	if rh.ID != qh.ID || rh.Flags&dnswire.FlagQR == 0 || rh.Opcode() != qh.Opcode() {
		return false
	}
	switch rh.QDCount {
	case 1:
		return dnswire.SameQuestion(reply, query, q)
	case 0:
		return rh.Rcode() != dnswire.RcodeSuccess && rh.Rcode() != dnswire.RcodeNXDomain
	default:
		return false
	}
}
