//go:build linux

package resolver

// Whether the serving loops still read: the agent's heartbeat asks
// (Stalled), so that a resolver that stopped reading, the process alive, lets
// capture fail open instead of taking the node's DNS with it until the
// liveness probe restarts the agent.

import (
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loopProgress is one serving loop's (a UDP socket's, a TCP listener's
// accept loop) word on its progress.
type loopProgress struct {
	// reads counts what the loop took from its socket: batches of
	// datagrams, accepted connections (or accepts that failed). The
	// loop's alone to write, once a batch: the hot path pays one atomic
	// add per batch and nothing per query.
	reads atomic.Uint64
	// pausing is set while the accept loop waits out an error on
	// purpose (acceptretry): it is not stuck.
	pausing atomic.Bool

	network string // "udp" or "tcp"
	local   netip.AddrPort
	rc      syscall.RawConn

	// Stalled's own, under Server.stallMu: reads as it last saw them,
	// and since when queries have waited with none read since (zero:
	// they do not).
	seen        uint64
	waitedSince time.Time
}

// Stall is a socket on which queries wait and its loop reads none.
type Stall struct {
	Network string // "udp" or "tcp" (connections waiting to be accepted)
	Local   netip.AddrPort
	// Since is when queries were first seen waiting with none read
	// since.
	Since time.Time
}

// watchLoop registers a serving loop's progress with Stalled, until the
// function it returns is called as the loop ends.
func (s *Server) watchLoop(p *loopProgress, network string, local netip.AddrPort, rc syscall.RawConn) (unwatch func()) {
	p.network, p.local, p.rc = network, local, rc
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	s.progress[p] = struct{}{}
	return func() {
		s.stallMu.Lock()
		defer s.stallMu.Unlock()
		delete(s.progress, p)
	}
}

// Stalled returns the sockets on which queries (connections, on a TCP
// listener) have waited for at least after, with their loop reading
// nothing meanwhile: a loop stuck in the answer path, say. A loop that
// reads, however busy (a flood), and one whose socket holds nothing, however
// long idle, is not stalled. It compares with what the last call saw: call
// it at a steady pace (the agent's heartbeat, every second); queries first
// seen waiting by a call count from then, so a socket is reported no sooner
// than by the call after, and only when after has passed since.
func (s *Server) Stalled(now time.Time, after time.Duration) []Stall {
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	var stalls []Stall
	for p := range s.progress {
		reads := p.reads.Load()
		moved := reads != p.seen || p.pausing.Load()
		p.seen = reads
		if !queriesWait(p) {
			p.waitedSince = time.Time{}
			continue
		}
		if moved || p.waitedSince.IsZero() {
			// Waiting now: the loop may still read them.
			p.waitedSince = now
			continue
		}
		if now.Sub(p.waitedSince) >= after {
			stalls = append(stalls, Stall{Network: p.network, Local: p.local, Since: p.waitedSince})
		}
	}
	return stalls
}

// queriesWait reports whether p's socket holds something to read: a
// datagram (the receive queue's memory, SO_MEMINFO: FIONREAD tells only
// the first datagram's size, 0 for an empty one), or a connection to
// accept (a listener's tcpi_unacked is its accept queue). A socket that
// cannot be asked (closed as the loop ends) holds nothing.
func queriesWait(p *loopProgress) bool {
	waiting := false
	p.rc.Control(func(fd uintptr) {
		if p.network == "tcp" {
			var info unix.TCPInfo
			waiting = getsockopt(fd, unix.IPPROTO_TCP, unix.TCP_INFO, unsafe.Pointer(&info), unsafe.Sizeof(info)) &&
				info.Unacked > 0
			return
		}
		var mem [unix.SK_MEMINFO_VARS]uint32
		waiting = getsockopt(fd, unix.SOL_SOCKET, unix.SO_MEMINFO, unsafe.Pointer(&mem[0]), unsafe.Sizeof(mem)) &&
			mem[unix.SK_MEMINFO_RMEM_ALLOC] > 0
	})
	return waiting
}

// getsockopt reads a socket option into the size bytes at val, reporting
// whether it could. A raw system call, as the UDP loop's (see
// recvmmsg): it never blocks, and an ordinary one wakes the runtime's
// sysmon thread, asleep while the agent idles, which then polls for a
// while: about 15 wake-ups a second for a check that runs every second.
func getsockopt(fd uintptr, level, opt int, val unsafe.Pointer, size uintptr) bool {
	n := uint32(size)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(val), uintptr(unsafe.Pointer(&n)), 0)
	return e == 0
}
