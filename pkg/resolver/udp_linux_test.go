//go:build linux

package resolver

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// TestUDPLoopAnswersBursts: the UDP loop waits in the netpoller without an
// empty read after a lone datagram, and reads again at once after several.
// Bursts larger than a batch must all be answered, also when they were
// queued before the loop started (the netpoller reported their arrival
// before anyone waited), and single queries and bursts of a few between
// them: a wait that trusted the netpoller while datagrams it had already
// reported were still queued would leave them unanswered.
func TestUDPLoopAnswersBursts(t *testing.T) {
	s, conn, client := udpServerAndClient(t)
	q := query("address.internal.", dns.TypeA, false)
	id := uint16(0)
	send := func(n int) map[uint16]bool {
		sent := map[uint16]bool{}
		for range n {
			id++
			binary.BigEndian.PutUint16(q, id)
			sent[id] = true
			if _, err := client.Write(q); err != nil {
				t.Fatal(err)
			}
		}
		return sent
	}
	buf := make([]byte, 1500)
	answered := func(burst int, want map[uint16]bool) {
		t.Helper()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		for len(want) > 0 {
			n, err := client.Read(buf)
			if err != nil {
				t.Fatalf("a burst of %d: %d queries unanswered: %v", burst, len(want), err)
			}
			if n >= 2 {
				delete(want, binary.BigEndian.Uint16(buf))
			}
		}
	}
	// Queued before the loop starts: datagrams dropped unanswered (too
	// short for a header), then a query. Writing answers wakes the
	// netpoller for the socket too, so only a burst the loop answers
	// nothing of shows a wait that comes too early.
	for range 2 * batchSize {
		if _, err := client.Write([]byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	queued := send(1)
	time.Sleep(50 * time.Millisecond) // the netpoller sees them arrive
	go s.ServeUDP(conn)
	answered(2*batchSize+1, queued)
	for _, burst := range []int{1, 3 * batchSize, 1, 2, batchSize, 1, batchSize + 1, 5, 1} {
		answered(burst, send(burst))
	}
}

// TestUDPBatchGrowsWhenFull: a socket's batch starts with room for one
// datagram, so the many sockets that stay idle cost little, and doubles
// each time a read fills it, up to batchSize; every query of a burst is
// answered while it grows.
func TestUDPBatchGrowsWhenFull(t *testing.T) {
	s, conn, client := udpServerAndClient(t)
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	b := s.newUDPBatch(conn, rc, conn.LocalAddr().(*net.UDPAddr).AddrPort())
	if len(b.in) != firstBatchSize {
		t.Fatalf("a new socket's batch has room for %d datagrams, want %d", len(b.in), firstBatchSize)
	}
	q := query("address.internal.", dns.TypeA, false)
	buf := make([]byte, 1500)
	// serve queues burst queries, runs the loop's reads until the socket
	// is empty (a short deadline ends the wait that follows), and reads
	// the answers.
	serve := func(burst int) {
		t.Helper()
		for range burst {
			if _, err := client.Write(q); err != nil {
				t.Fatal(err)
			}
		}
		waitQueued(t, rc, burst)
		for {
			conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if err := rc.Read(b.serveFn); err != nil {
				break // the deadline, in the wait on an empty socket
			}
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := range burst {
			if _, err := client.Read(buf); err != nil {
				t.Fatalf("a burst of %d: %d answered: %v", burst, i, err)
			}
		}
	}
	for _, c := range []struct{ burst, want int }{
		{1, 2}, // filled the batch of one
		{1, 2}, // one of two: no growth
		{3, 4}, // two of two, then one of four
		{4, 8}, // four of four, then nothing
		{100, batchSize},
		{100, batchSize}, // never beyond
	} {
		serve(c.burst)
		if len(b.in) != c.want || len(b.out) != c.want {
			t.Fatalf("after a burst of %d the batch has room for %d (in) and %d (out), want %d", c.burst, len(b.in), len(b.out), c.want)
		}
	}
}

// waitQueued waits until the socket of rc holds n datagrams, and fails the
// test if they are not all there within 5s: a write on loopback returns
// before the datagram is in the receiving socket when the softirq that
// delivers it is deferred. FIONREAD (SIOCINQ) on a UDP socket tells only the
// first datagram's size, so this counts them: with a peek offset set,
// each MSG_PEEK read moves on to the next datagram. The offset is unset
// again before waitQueued returns, for the reads of the loop under test.
func waitQueued(t *testing.T, rc syscall.RawConn, n int) {
	t.Helper()
	buf := make([]byte, 1<<16) // no datagram truncated: the offset moves by what is read
	count := func() (queued int, err error) {
		cerr := rc.Control(func(fd uintptr) {
			if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
				return
			}
			defer func() {
				if uerr := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEEK_OFF, -1); err == nil {
					err = uerr
				}
			}()
			for {
				_, _, rerr := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
				if rerr == unix.EAGAIN {
					return
				}
				if rerr != nil {
					err = rerr
					return
				}
				queued++
			}
		})
		if err == nil {
			err = cerr
		}
		return queued, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		queued, err := count()
		if err != nil {
			t.Fatalf("count the datagrams queued: %v", err)
		}
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a burst of %d: only %d datagrams queued in the socket after 5s", n, queued)
		}
		time.Sleep(time.Millisecond)
	}
}

// udpServerAndClient returns a server (not serving yet), a UDP socket of
// its on loopback and a client connected to it, with room to queue large
// bursts of answers; all are closed when the test ends.
func udpServerAndClient(t *testing.T) (*Server, *net.UDPConn, *net.UDPConn) {
	t.Helper()
	s := fuzzServer(t, rateInKernel)
	t.Cleanup(func() { s.Close() })
	conn, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if err := client.SetReadBuffer(1 << 20); err != nil {
		t.Fatal(err)
	}
	return s, conn, client
}
