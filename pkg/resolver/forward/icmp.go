package forward

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/internal/sockaddr"
)

// ICMP errors on a forwarding UDP socket.
//
// The kernel tells a connected UDP socket of an ICMP error about a datagram
// it sent (a port unreachable: nothing listens there) by failing its next
// read (ECONNREFUSED), whoever sent the ICMP: it need only quote the
// socket's addresses and ports, and a process that may send raw packets
// (NET_RAW, which a pod has by default) can guess the one unknown, the
// socket's port, in the ephemeral range's 28,000 tries, and end every
// forwarded exchange early with a SERVFAIL. A forged reply needs the query's
// ID as well: some 2^31 tries.
//
// So the sockets set IP_RECVERR (IPV6_RECVERR): the kernel then also queues
// each ICMP error on the socket's error queue, with the address of its
// sender (SO_EE_OFFENDER) and the destination of the datagram it quotes,
// which the kernel matched to the socket's peer. An exchange ends early
// only for an error sent by that destination itself: a nameserver's own
// "port unreachable". Behind a ClusterIP, conntrack rewrites the backend's
// ICMP to come from the ClusterIP, as it rewrites its replies
// (nf_nat_icmp_reply_translation; TestRealRefusalServfailsAtOnce); where
// the socket itself was connected to the backend (socket-level load
// balancing, as Cilium's), the destination quoted is the backend. Any
// other ICMP error is ignored, counted and logged, and the exchange waits
// on for its reply until the timeout. (A Service without endpoints needs
// no ICMP: kube-proxy's reject of a node's own datagram fails the send,
// EPERM.)
//
// With IP_RECVERR the kernel still sets the socket's pending error, and
// sets it for errors it would otherwise drop (host unreachable from a
// router): the next receive returns it, ahead of any datagram queued, and
// clears it; reading the error queue to its end clears it too. An entry
// waits in the queue, charged to the socket's receive buffer, until it is
// read: the queue is read to its end at every error, so ignored errors
// cannot fill the buffer and crowd out the reply. The pending error alone
// is never believed: the kernel queues an entry (which may be read at
// once) before it sets the pending error, so a pending error may come
// after its entry was read, and it sets one too for an entry the queue
// had no room for.

// udpSocket reads the datagrams of an exchange's connected socket, reading
// its error queue on every error (see above). Its waits are its poller's
// (udpPoller), until ctx ends.
type udpSocket struct {
	fd       int
	w        *udpWait
	poller   *udpPoller
	ctx      context.Context
	upstream netip.AddrPort
	icmp     *icmpLog
}

// wait waits until the socket has something new, or ctx ends (its error).
func (s *udpSocket) wait() error { return s.poller.wait(s.ctx, s.w) }

// recv receives the datagram queued first on the socket into buf, or with
// peek returns its size without reading it (MSG_PEEK|MSG_TRUNC with no
// buffer: Linux returns the real length). It waits while nothing is
// queued, and reads on past ICMP errors to ignore. An ICMP error that
// ends the exchange is returned as its errno (syscall.ECONNREFUSED for a
// port unreachable), wrapped.
func (s *udpSocket) recv(buf []byte, peek bool) (int, error) {
	for {
		var n int
		var err error
		if peek {
			n, err = peekSize(s.fd)
		} else {
			n, err = rawRead(s.fd, buf)
		}
		again := err == unix.EAGAIN
		if err == nil {
			return n, nil
		}
		if !again && !icmpErrno(err) {
			return 0, err // not an ICMP error's: the exchange ends with it
		}
		// An ICMP error pending, or nothing to read: perhaps after an ICMP
		// error whose pending error a resend's write took (a send returns
		// it as a receive does). The queue says.
		if ends := s.readErrorQueue(s.fd); ends != nil {
			return 0, ends
		}
		if again {
			if err := s.wait(); err != nil {
				return 0, err
			}
		}
		// Only errors to ignore, or woken: read on.
	}
}

// write sends b on the socket, waiting for room while there is none. A
// send returns the socket's pending error, as a receive does, and sends
// nothing: an ICMP error's, which the error queue keeps for the reader
// to judge, is no reason to send nothing, and b is sent again, once.
func (s *udpSocket) write(b []byte) error {
	askedRoom := false
	for {
		err := sendUDP(s.fd, b)
		if err != unix.EAGAIN {
			if err != nil {
				err = os.NewSyscallError("write", err)
			}
			return err
		}
		if !askedRoom {
			askedRoom = true
			if err := s.poller.wantRoom(s.fd, s.w); err != nil {
				return os.NewSyscallError("epoll_ctl", err)
			}
			continue // room may have come before it was asked for
		}
		if err := s.wait(); err != nil {
			return err
		}
	}
}

// peekSize is the size of the datagram queued first on fd, which stays
// queued: recvfrom with MSG_PEEK|MSG_TRUNC and no buffer (Linux returns the
// real length), nor an address, which unix.Recvfrom would make (asking
// the socket its protocol: a system call more).
func peekSize(fd int) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), 0, 0, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// sendUDP sends b on fd without waiting. A send returns the socket's
// pending error, as a receive does, and sends nothing: an ICMP error's is
// no reason to send nothing, and b is sent again, once.
func sendUDP(fd int, b []byte) error {
	_, err := rawWrite(fd, b)
	if icmpErrno(err) {
		_, err = rawWrite(fd, b)
	}
	return err
}

// icmpErrno reports whether err is one an ICMP or ICMPv6 error sets on a
// UDP socket (icmp_err_convert, icmpv6_err_convert).
func icmpErrno(err error) bool {
	switch err {
	case unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN, unix.ENONET,
		unix.ENOPROTOOPT, unix.EPROTO, unix.EMSGSIZE, unix.EOPNOTSUPP, unix.EACCES:
		return true
	}
	return false
}

// readErrorQueue reads the socket's error queue to its end, or to the
// first ICMP error that ends the exchange, which it returns.
func (s *udpSocket) readErrorQueue(fd int) (ends error) {
	// What the kernel puts beside an entry: its sock_extended_err and the
	// offender's address, as IP_RECVERR's (or IPV6_RECVERR's) one message.
	var oob [128]byte
	// The datagram the error quotes is of no interest: its first octet is
	// read (with no buffer at all, Recvmsg would ask the socket's type).
	var quoted [1]byte
	for {
		_, oobn, _, to, err := unix.Recvmsg(fd, quoted[:], oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return nil // EAGAIN: read to its end
		}
		ee, offender, ok := icmpError(oob[:oobn])
		if !ok {
			continue // a local error, not an ICMP's
		}
		dest := s.upstream.Addr()
		if a, ok := sockaddrAddr(to); ok {
			dest = a
		}
		errno := syscall.Errno(ee.Errno)
		if offender == dest {
			return fmt.Errorf("ICMP type %d code %d from %s: %w", ee.Type, ee.Code, offender, errno)
		}
		s.icmp.ignored(s.upstream, offender, ee, errno)
	}
}

// icmpError finds an ICMP error in the control messages of an error queue
// entry: its sock_extended_err and its sender (SO_EE_OFFENDER, which
// follows it), IPv4-mapped addresses unmapped.
func icmpError(oob []byte) (ee unix.SockExtendedErr, offender netip.Addr, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return ee, offender, false
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR) &&
			!(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		d := m.Data
		const eeLen = 16 // sizeof(struct sock_extended_err)
		if len(d) < eeLen+2 {
			continue
		}
		ee = unix.SockExtendedErr{
			Errno:  binary.NativeEndian.Uint32(d[0:]),
			Origin: d[4],
			Type:   d[5],
			Code:   d[6],
		}
		if ee.Origin != unix.SO_EE_ORIGIN_ICMP && ee.Origin != unix.SO_EE_ORIGIN_ICMP6 {
			continue
		}
		if from, _, ok := sockaddr.Parse(d[eeLen:]); ok {
			return ee, from.Addr(), true
		}
	}
	return ee, offender, false
}

// sockaddrAddr is sa's address, IPv4-mapped addresses unmapped.
func sockaddrAddr(sa unix.Sockaddr) (netip.Addr, bool) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr), true
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr).Unmap(), true
	}
	return netip.Addr{}, false
}

// icmpLog counts and logs the ICMP errors the exchanges ignored: at most a
// line per ratelog.Every, for whoever sends them can send them at will.
type icmpLog struct {
	metrics *upstreamMetrics
	log     *slog.Logger
	limit   ratelog.Limiter
}

func (l *icmpLog) ignored(upstream netip.AddrPort, offender netip.Addr, ee unix.SockExtendedErr, errno syscall.Errno) {
	l.metrics.icmpIgnored(upstream)
	l.limit.Log(l.log, slog.LevelWarn, "ignored an ICMP error about a forwarded query: not from its upstream",
		"upstream", upstream, "from", offender, "type", ee.Type, "code", ee.Code, "error", errno.Error())
}
