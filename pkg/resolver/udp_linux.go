//go:build linux

package resolver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/sockaddr"
)

// batchSize is how many datagrams one recvmmsg/sendmmsg moves at most.
// Under load it divides the syscalls per query by up to this much; at low
// load a batch holds one datagram and costs what recvfrom would.
const batchSize = 32

// A socket's batch starts with room for one datagram and doubles, up to
// batchSize, each time a read fills it. A full batch's buffers take 280 KB,
// and the agent has a socket (or several: --udp-sockets) on every address
// it serves (with capture, every resolver slot's address too): most of
// them stay idle and keep their 9 KB, or see one query at a time and keep
// 18 KB (a lone datagram fills a batch of one).
const firstBatchSize = 1

// mmsghdr is struct mmsghdr from <sys/socket.h>.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// sockaddrLen fits a sockaddr_in6, and so a sockaddr_in.
const sockaddrLen = sockaddr.Len

// udpBatch holds the buffers of one socket's read/answer/write cycle, for
// as many datagrams as its reads have needed so far (see firstBatchSize):
// the loop itself allocates only when the batch grows.
type udpBatch struct {
	in      []mmsghdr
	inIov   []unix.Iovec
	inName  [][sockaddrLen]byte
	inBuf   [][maxQuery]byte
	out     []mmsghdr
	outIov  []unix.Iovec
	outName [][sockaddrLen]byte
	outBuf  [][]byte
	sc      scratch

	// The syscall closures and their results, made once: a closure made per
	// call escapes to the heap, and an allocation per batch feeds the GC.
	// They use RawSyscall6: the calls never block (MSG_DONTWAIT; the
	// netpoller does the waiting), and the non-raw form wakes the runtime's
	// sysmon thread on every call, which at a few thousand queries a second
	// cost more CPU than the queries (golang/go#18236).
	serveFn, writeFn  func(fd uintptr) bool
	ioN, ioFrom, ioTo int
	ioErr             syscall.Errno // of the last write
	readErr           syscall.Errno // what ended the serving RawConn.Read

	progress loopProgress // counts the batches read (Server.Stalled)
}

func (s *Server) newUDPBatch(conn *net.UDPConn, rc syscall.RawConn, local netip.AddrPort) *udpBatch {
	b := &udpBatch{}
	if !s.opts.NoRequestMetrics { // else nothing is counted: save its 9 KB
		b.sc.batch = s.newBatchCounts()
	}
	b.resize(firstBatchSize)
	b.serveFn = func(fd uintptr) bool {
		n, e := b.read(fd)
		switch e {
		case 0:
			b.progress.reads.Add(1)
		case unix.EAGAIN, unix.EINTR:
			return false // wait in the netpoller
		default:
			b.readErr = e
			return true
		}
		s.answerUDP(conn, rc, local, b, n)
		full := n == len(b.in)
		if full && len(b.in) < batchSize {
			b.resize(min(2*len(b.in), batchSize))
		}
		// After a lone datagram that did not fill the batch the socket is
		// empty (recvmmsg looked for a second): wait in the netpoller,
		// which reports every datagram queued since it last reported one
		// (edge-triggered), without an empty read first. At modest rates
		// that saves a system call per query. After several, queries come
		// faster than they are answered and the next is likely there: read
		// again at once rather than through the scheduler. A full batch
		// may have left datagrams whose arrival was reported already, so
		// it always reads again. Ending the RawConn.Read does it: the next
		// one reads before it waits.
		return n > 1 || full
	}
	b.writeFn = func(fd uintptr) bool {
		if i := b.ioFrom; b.ioTo-i == 1 {
			// One reply, as at modest rates: sendto's doc says why.
			b.ioN, b.ioErr = 1, sendto(fd, b.outBuf[i], b.outName[i][:b.out[i].hdr.Namelen])
		} else {
			r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[i])), uintptr(b.ioTo-i), unix.MSG_DONTWAIT, 0, 0)
			b.ioN, b.ioErr = int(r), e
		}
		return b.ioErr != unix.EAGAIN && b.ioErr != unix.EINTR
	}
	return b
}

// resize gives the batch room for n datagrams. The buffers of the last
// cycle are dropped: call it between cycles.
func (b *udpBatch) resize(n int) {
	b.in, b.inIov, b.inName, b.inBuf = make([]mmsghdr, n), make([]unix.Iovec, n), make([][sockaddrLen]byte, n), make([][maxQuery]byte, n)
	b.out, b.outIov, b.outName, b.outBuf = make([]mmsghdr, n), make([]unix.Iovec, n), make([][sockaddrLen]byte, n), make([][]byte, n)
	for i := range n {
		b.inIov[i].Base = &b.inBuf[i][0]
		b.inIov[i].SetLen(maxQuery)
		b.in[i].hdr.Iov = &b.inIov[i]
		b.in[i].hdr.SetIovlen(1)
		b.in[i].hdr.Name = &b.inName[i][0]
		b.outBuf[i] = make([]byte, 0, 4096+512)
		b.out[i].hdr.Iov = &b.outIov[i]
		b.out[i].hdr.SetIovlen(1)
		b.out[i].hdr.Name = &b.outName[i][0]
	}
}

// serveUDPBatches is the UDP loop: read a batch, answer what the table can,
// hand the rest to the slow path, write the answers in one batch, and wait
// in the netpoller only when the socket is empty.
// kernelRated says the kernel's filter applies the query rate on conn.
func (s *Server) serveUDPBatches(conn *net.UDPConn, local netip.AddrPort, kernelRated bool) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	b := s.newUDPBatch(conn, rc, local)
	b.sc.kernelRated = kernelRated
	b.sc.local = local.Addr()
	b.sc.captureSlot = s.captureSlot(local)
	defer s.watchLoop(&b.progress, "udp", local, rc)()
	for {
		b.readErr = 0
		err := rc.Read(b.serveFn)
		if err == nil && b.readErr != 0 {
			err = b.readErr
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopping() {
				return nil
			}
			return err
		}
	}
}

// answerUDP answers the n datagrams of b and writes the replies.
func (s *Server) answerUDP(conn *net.UDPConn, rc syscall.RawConn, local netip.AddrPort, b *udpBatch, n int) {
	queued := 0
	now := s.clock() // one clock read per batch for the rate limits
	for i := range n {
		msg := b.inBuf[i][:b.in[i].len]
		if b.in[i].hdr.Flags&unix.MSG_TRUNC != 0 {
			metricQueries.drop.Inc()
			continue
		}
		// parseSockaddr, spelled out: one call per datagram, not two.
		src, scope, ok := sockaddr.Parse(b.inName[i][:b.in[i].hdr.Namelen])
		if !ok {
			continue
		}
		if scope != 0 {
			src = withScope(src, scope)
		}
		out := b.outBuf[queued][:0]
		reply, slow := s.answerFast(msg, src, false, out, &b.sc, now)
		if slow {
			if reply = s.slowUDP(conn, msg, src, local, out); reply != nil && !sameStart(reply, out) {
				// A reply of its own (the slow path's table answers, a
				// cut one): into the batch's buffer, which stays the
				// socket's.
				reply = append(out, reply...)
			}
		}
		if reply == nil {
			continue
		}
		b.outBuf[queued] = reply
		b.outIov[queued].Base = &reply[0]
		b.outIov[queued].SetLen(len(reply))
		b.outName[queued] = b.inName[i]
		b.out[queued].hdr.Namelen = b.in[i].hdr.Namelen
		queued++
	}
	if err := b.write(rc, queued); err != nil {
		s.log.Debug("writing UDP replies failed", "err", err)
	}
	if queued > 0 && b.sc.batch != nil { // nil: no metrics
		// Every answer of the batch waited for the whole batch: one
		// clock read times them all.
		s.flush(b.sc.batch, s.clock()-now)
	}
}

// slowUDP runs the slow path on msg, the batch's. What it answers on the
// socket's goroutine (from the table, or from the forwarder's cache, then
// appended to out) it returns, for the batch to write with the table's
// answers; nil: nothing to send now. A query that needs an upstream gets
// a copy of msg, and its goroutine writes its reply from the same socket.
func (s *Server) slowUDP(conn *net.UDPConn, msg []byte, src, local netip.AddrPort, out []byte) []byte {
	q := s.newSlowQuery(msg, src, local, nil)
	q.out = out
	if reply := q.answer(s.ctx); !q.needsUpstream {
		reply, _ = q.conclude(reply) // no hold over UDP: nothing to release
		return reply
	}
	q.msg, q.out = slices.Clone(msg), nil // the batch's are the next batch's
	q.forwardOnline(q.finishing(func(reply []byte, _ func()) {
		if reply == nil {
			return
		}
		if err := writeForwardedReply(conn, local, reply, src); err != nil {
			s.log.Debug("writing UDP reply failed", "client", src, "err", err)
		}
	}))
	return nil
}

// writeForwardedReply sends reply to client from conn (bound to local)
// as conn.WriteToUDPAddrPort would, with a raw sendto: the call through
// syscall.Syscall wakes the runtime's sysmon thread when it sleeps, as it
// does between two forwarded queries at modest rates (the forwarder's
// exchanges make only raw calls for the same reason), a wake-up and a
// sleep more for each.
func writeForwardedReply(conn *net.UDPConn, local netip.AddrPort, reply []byte, client netip.AddrPort) error {
	if len(reply) == 0 {
		return nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var sa [sockaddrLen]byte
	saLen, err := putSockaddr(&sa, client, local.Addr().Is4())
	if err != nil {
		return fmt.Errorf("socket %s: %w", local, err)
	}
	var errno syscall.Errno
	err = rc.Write(func(fd uintptr) bool {
		errno = sendto(fd, reply, sa[:saLen])
		return errno != unix.EAGAIN && errno != unix.EINTR
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return os.NewSyscallError("sendto", errno)
	}
	return nil
}

// sendto sends the datagram b (not empty) from fd to the sockaddr name,
// raw and without blocking: a lone reply (the batch's of one,
// writeForwardedReply's). sendto takes the buffer and address as they
// are, where sendmmsg first copies in and checks a header and its iovec.
func sendto(fd uintptr, b, name []byte) syscall.Errno {
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&name[0])), uintptr(len(name)))
	return e
}

// sameStart reports whether a and b start at the same byte: a was
// appended to b[:0] in place.
func sameStart(a, b []byte) bool {
	return len(a) > 0 && cap(b) > 0 && &a[0] == &b[:1][0]
}

// read fills the batch with the datagrams the socket holds, as many as
// the batch has room for, without waiting.
func (b *udpBatch) read(fd uintptr) (int, syscall.Errno) {
	for i := range b.in {
		b.in[i].hdr.Namelen = sockaddrLen
		b.in[i].hdr.Flags = 0
	}
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

// write sends the first n queued replies, retrying the rest when sendmmsg
// sends only part of the batch.
func (b *udpBatch) write(rc syscall.RawConn, n int) error {
	var firstErr error
	for sent := 0; sent < n; {
		b.ioFrom, b.ioTo = sent, n
		err := rc.Write(b.writeFn)
		r, errno := b.ioN, b.ioErr
		if err != nil {
			return err
		}
		if errno != 0 {
			// One bad destination (a client that vanished) must not cost
			// the rest of the batch: skip it and go on.
			if firstErr == nil {
				firstErr = errno
			}
			sent++
			continue
		}
		sent += r
	}
	return firstErr
}

// parseSockaddr reads a sockaddr_in or sockaddr_in6 as the kernel wrote it.
// The scope id of a sockaddr_in6, which the kernel sets for a link-local
// client (the interface the datagram came in on), becomes the address's
// zone, its decimal index: a reply to fe80::… needs it (putSockaddr), or
// the kernel sends it out of whichever interface has the first
// link-local route. It also keeps the same link-local address on two
// links two sources: the zone is the receiving interface's, which no
// sender chooses.
func parseSockaddr(b []byte) (netip.AddrPort, bool) {
	ap, scope, ok := sockaddr.Parse(b)
	if scope != 0 {
		ap = withScope(ap, scope)
	}
	return ap, ok
}

// withScope is ap zoned with the interface index scope, a sockaddr_in6's
// (parseSockaddr); an IPv4 client, v4-mapped and unmapped, has no zone.
func withScope(ap netip.AddrPort, scope uint32) netip.AddrPort {
	if !ap.Addr().Is6() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().WithZone(strconv.FormatUint(uint64(scope), 10)), ap.Port())
}

// tcpPeer is c's remote address as parseSockaddr reads a UDP client's.
// net spells a link-local address's zone with its interface's name
// (fe80::2%veth1), parseSockaddr with the index (fe80::2%7), and the
// zone is part of the per-source key: the same client on the same link
// must be one source over TCP and UDP. Only a zoned (link-local) address
// costs the getpeername; should it fail, net's spelling stays.
func tcpPeer(c *net.TCPConn) netip.AddrPort {
	src := addrPortOf(c.RemoteAddr())
	if src.Addr().Zone() == "" {
		return src
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return src
	}
	var sa [sockaddrLen]byte
	n := uint32(len(sa))
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall(unix.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		return src
	}
	if peer, ok := parseSockaddr(sa[:min(int(n), len(sa))]); ok {
		return peer
	}
	return src
}

// putSockaddr writes client into sa as parseSockaddr read it: a
// sockaddr_in for an AF_INET socket (inet4), else a sockaddr_in6, an IPv4
// client v4-mapped, a zone (parseSockaddr's interface index) its scope id.
// It returns the sockaddr's length.
func putSockaddr(sa *[sockaddrLen]byte, client netip.AddrPort, inet4 bool) (int, error) {
	var scope uint64
	if zone := client.Addr().Zone(); zone != "" && !inet4 { // zoned: IPv6, refused by Put when inet4
		var err error
		if scope, err = strconv.ParseUint(zone, 10, 32); err != nil {
			return 0, fmt.Errorf("client %s: zone is not an interface index", client)
		}
	}
	n := sockaddr.Put(sa, client, inet4, uint32(scope))
	if n == 0 {
		return 0, fmt.Errorf("IPv6 client %s on an IPv4 socket", client)
	}
	return n, nil
}
