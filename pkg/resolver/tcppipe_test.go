package resolver

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestPipelinedRepliesToASlowReaderAreBounded: a pod pipelines forwarded
// queries (to a local upstream, answered at once) on one TCP connection with a
// small receive buffer, and reads its replies a little at a time, fast
// enough for each write to end within tcpWriteTimeout, not for its
// replies' turns. The connection holds at most maxTCPPending of them
// (goroutines and bytes of the budget of replies in flight): past that,
// the server reads no more of its queries. Once a reply has waited longer
// than tcpWriteTimeout since it was ready, the connection is closed and
// everything it held is given back. The other pod's forwarded queries are
// answered meanwhile. Before: a goroutine per query read, each waiting
// for its turn to write with its reply's bytes held, as many as the pod
// sent, and the connection was never closed.
func TestPipelinedRepliesToASlowReaderAreBounded(t *testing.T) {
	const answer, queries = 8000, 3000
	ls, b := bigAnswer(t, answer)
	q := packQuery(t, "big.example.", dns.TypeTXT)
	ls.victimForwarded(t, "before the flood") // its upstream's connections are up
	testenv.Eventually(t, 30*time.Second, "the first answers' bytes given back", func() bool { return b.Used() == 0 })

	// What the connection may hold: its reader and one goroutine writing,
	// maxTCPPending queries' goroutines, and the test's client and the
	// other pod's queries (a few each); replies of at most twice their
	// size each (the forwarder's copy and the one being written).
	goroutines := runtime.NumGoroutine()
	maxGoroutines := goroutines + maxTCPPending + 24
	maxBytes := int64(2 * maxTCPPending * (answer + 512))

	c := slowTCPClient(t, ls.addr)
	testenv.Eventually(t, 30*time.Second, "the connection served", func() bool { return ls.usage(flooderIP).TCPConns == 1 })
	pipeline(c, q, queries)
	go func() { // reads 1 KiB every 100 ms: an 8 KB reply's write ends well within its time
		buf := make([]byte, 1024)
		for {
			time.Sleep(100 * time.Millisecond)
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()

	var mostGoroutines int
	var mostBytes int64
	victimAsked := false
	testenv.Eventually(t, 60*time.Second, "the connection closed for a reply that waited too long", func() bool {
		g, used := runtime.NumGoroutine(), b.Used()
		mostGoroutines, mostBytes = max(mostGoroutines, g), max(mostBytes, used)
		if g > maxGoroutines || used > maxBytes {
			t.Fatalf("%d goroutines (%d before the connection) and %d bytes of replies held: over maxTCPPending = %d replies of %d bytes",
				g, goroutines, used, maxTCPPending, answer)
		}
		if !victimAsked && used >= answer { // replies are waiting for the slow reader
			victimAsked = true
			ls.victimForwarded(t, "with the flooder's replies waiting")
			if r := ls.ask(t, victimIP, "tcp", "who.example."); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
				t.Fatalf("with the flooder's replies waiting, the victim's TCP query: %v", r)
			}
		}
		return ls.usage(flooderIP).TCPConns == 0
	})
	t.Logf("at most %d goroutines (%d before the connection) and %d bytes of replies held", mostGoroutines, goroutines, mostBytes)
	if !victimAsked {
		t.Error("no reply of the flooder's was ever seen waiting to be written")
	}
	testenv.Eventually(t, 30*time.Second, "every byte given back", func() bool { return b.Used() == 0 })
	testenv.Eventually(t, 30*time.Second, "the connection's goroutines ended", func() bool { return runtime.NumGoroutine() <= goroutines+4 })
	ls.victimForwarded(t, "after the connection closed")
}

// TestRepliesQueuedOnAResetConnectionAreGivenBack: a client that reads
// nothing until its connection holds maxTCPPending replies, then resets
// it: the reply being written and those queued behind it give back their
// bytes at once, and the connection's goroutines end, without waiting for
// the write timeout's close (set to longer than the test waits, so that
// only the reset can free them).
func TestRepliesQueuedOnAResetConnectionAreGivenBack(t *testing.T) {
	old := tcpWriteTimeout
	tcpWriteTimeout = 10 * time.Minute
	t.Cleanup(func() { tcpWriteTimeout = old })
	const answer = 8000
	ls, b := bigAnswer(t, answer)
	testenv.Eventually(t, 30*time.Second, "the first answer's bytes given back", func() bool { return b.Used() == 0 })
	goroutines := runtime.NumGoroutine()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: flooderIP.AsSlice()}}).Dial("tcp4", ls.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	pipeline(c, packQuery(t, "big.example.", dns.TypeTXT), 3000)
	testenv.Eventually(t, 30*time.Second, "maxTCPPending replies waiting", func() bool { return b.Used() >= maxTCPPending*answer })
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	testenv.Eventually(t, 30*time.Second, "every byte given back", func() bool { return b.Used() == 0 })
	testenv.Eventually(t, 30*time.Second, "the connection released", func() bool { return ls.usage(flooderIP).TCPConns == 0 })
	testenv.Eventually(t, 30*time.Second, "the connection's goroutines ended", func() bool { return runtime.NumGoroutine() <= goroutines+2 })
}

// slowTCPClient connects to addr from flooderIP with a receive buffer of
// 4 KiB, which a few replies fill; closed at the test's end.
func slowTCPClient(t *testing.T, addr netip.AddrPort) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: flooderIP.AsSlice()}, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	c, err := d.Dial("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pipeline writes q n times on c, as fast as the server reads them, from a
// goroutine of its own that gives up when a write fails or a minute has
// passed.
func pipeline(c net.Conn, q []byte, n int) {
	go func() {
		c.SetWriteDeadline(time.Now().Add(time.Minute))
		for range n {
			if dnstest.WriteTCP(c, q) != nil {
				return
			}
		}
	}()
}

// TestUnreadRepliesHeldByTheKernelAreBounded: a pod that pipelines queries
// and reads nothing gets at most tcpSendBuffer's worth of replies into the
// kernel's send queue of its connection (then they wait, bounded by
// maxTCPPending, for the write deadline). Before: autotuning let the
// kernel take megabytes for each such connection, charged to the agent.
func TestUnreadRepliesHeldByTheKernelAreBounded(t *testing.T) {
	const answer = 8000
	ls, b := bigAnswer(t, answer)
	c := slowTCPClient(t, ls.addr)
	pipeline(c, packQuery(t, "big.example.", dns.TypeTXT), 3000)
	// Once maxTCPPending replies wait, one of them being written, the
	// kernel has taken all it will.
	testenv.Eventually(t, 30*time.Second, "maxTCPPending replies waiting", func() bool { return b.Used() >= maxTCPPending*answer })
	queued, _ := tcpQueues(t, ls.addr, addrPortOf(c.LocalAddr()))
	t.Logf("the kernel holds %d bytes of replies for the connection", queued)
	if queued == 0 {
		t.Fatal("no reply queued in the kernel while replies wait to be written")
	}
	if queued > 2*tcpSendBuffer {
		t.Errorf("the kernel holds %d bytes of replies for a client that reads nothing, want at most %d", queued, 2*tcpSendBuffer)
	}
}

// TestRepliesOfAConnectionAcceptedBeforeServingAreBounded: a connection
// the kernel accepted on a listener before ServeTCP took it (the agent
// opens its listeners, then serves them) has the same bounded send buffer
// as the others: a client that asks for large answers and reads nothing
// gets at most tcpSendBuffer's worth of them queued in the kernel. Before:
// the buffer was set on the listener by ServeTCP, and a connection
// accepted before kept the kernel's autotuned one for its life (megabytes,
// up to net.ipv4.tcp_wmem's 4 MiB).
func TestRepliesOfAConnectionAcceptedBeforeServingAreBounded(t *testing.T) {
	s := New(Options{Limits: quota.Limits{QPS: -1}})
	t.Cleanup(func() { s.Close() })
	s.SetTable(headlessTable(t, 5000))
	ln, err := ListenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := addrPortOf(ln.Addr())
	c := slowTCPClient(t, addr)
	pipeline(c, packQuery(t, "web.ns.svc.cluster.local.", dns.TypeA), 200) // 65,535-byte answers
	client := addrPortOf(c.LocalAddr())
	go s.ServeTCP(ln)
	// The reader writes answers until one waits longer than the write
	// timeout, and the connection is closed: by then the kernel has
	// taken all it will.
	most, served := 0, false
	testenv.Eventually(t, 30*time.Second, "the connection served, then closed for an answer that waited too long", func() bool {
		if queued, _, ok := tcpQueuesIf(t, addr, client); ok {
			most = max(most, queued)
		}
		open := s.tcpOpen.Used()
		served = served || open > 0
		return served && open == 0
	})
	t.Logf("the kernel held at most %d bytes of answers for the connection", most)
	if most == 0 {
		t.Fatal("no answer was ever seen queued in the kernel")
	}
	if most > 2*tcpSendBuffer {
		t.Errorf("the kernel held %d bytes of answers for a client that reads nothing, want at most %d", most, 2*tcpSendBuffer)
	}
}

// TestQueriesOverTheRateHeldByTheKernelAreBounded: a pod pipelining
// queries over its rate on one TCP connection has its reader wait
// (pauseForRate) while it sends on, and the kernel queues what it sends
// on the server's socket until its window closes: at most
// tcpReceiveBuffer's worth (which the kernel doubles). Before: the
// kernel's default, 128 KiB a connection (113 KB queued seen), charged to
// the agent: 4 MB for a pod's 32 connections, 128 MiB for --max-tcp's
// 1,024.
func TestQueriesOverTheRateHeldByTheKernelAreBounded(t *testing.T) {
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 1, Burst: 1}, TCPIdleTimeout: time.Minute}, liveUpstream(t), liveUpstream(t))
	c := ls.dialFrom(t, flooderIP)
	go io.Copy(io.Discard, c) // it reads its replies
	pipeline(c, packQuery(t, tableName, dns.TypeA), 1<<20)
	client := addrPortOf(c.LocalAddr())
	// The window closed, with queries waiting to be sent and others to be
	// read (not a window the reader has just emptied, the update to come).
	most := 0
	testenv.Eventually(t, 30*time.Second, "the server's receive window closed, the client's queries waiting", func() bool {
		_, queued := tcpQueues(t, ls.addr, client)
		most = max(most, queued)
		info := tcpInfo(t, c)
		return info.Snd_wnd == 0 && info.Notsent_bytes > 0 && queued > 0
	})
	t.Logf("the kernel held at most %d bytes of queries for the server to read", most)
	if most > 2*tcpReceiveBuffer {
		t.Errorf("the kernel held %d bytes of queries the server did not read, want at most %d", most, 2*tcpReceiveBuffer)
	}
}

// tcpInfo is the kernel's TCP_INFO of c.
func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	if err := rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// tcpQueues reads, from /proc/net/tcp, the bytes queued to send and
// received but not read on the IPv4 connection from local to remote.
func tcpQueues(t *testing.T, local, remote netip.AddrPort) (send, recv int) {
	t.Helper()
	send, recv, ok := tcpQueuesIf(t, local, remote)
	if !ok {
		t.Fatalf("no connection %s -> %s in /proc/net/tcp", local, remote)
	}
	return send, recv
}

// tcpQueuesIf is tcpQueues, with ok false when there is no such
// connection.
func tcpQueuesIf(t *testing.T, local, remote netip.AddrPort) (send, recv int, ok bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hex := func(ap netip.AddrPort) string {
		a := ap.Addr().As4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	}
	want := hex(local) + " " + hex(remote)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[1]+" "+f[2] == want {
			tx, rx, _ := strings.Cut(f[4], ":")
			s, err := strconv.ParseInt(tx, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			r, err := strconv.ParseInt(rx, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(s), int(r), true
		}
	}
	return 0, 0, false
}

// bigAnswer starts a server whose flooder pod may forward without
// limits, against a budget with room for every reply (so only a
// connection's own bounds hold replies back), and whose flooder's
// upstream answers big.example's TXT with size bytes, every time: the
// forwarder caches nothing. A reply from the cache is answered on the
// connection's reader, which writes it as it writes a table answer;
// these tests need the replies of the slow path's goroutines, which
// queue for the connection's writer.
func bigAnswer(t *testing.T, size int) (*limitsServer, *quota.Budget) {
	t.Helper()
	return bigAnswerWith(t, size, Options{})
}

// bigAnswerWith is bigAnswer with opts (their limits and
// budget replaced).
func bigAnswerWith(t *testing.T, size int, opts Options) (*limitsServer, *quota.Budget) {
	t.Helper()
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(size)).Addr
	b := quota.NewBudget(64<<20, 0)
	opts.Limits, opts.Budget = quota.Limits{QPS: -1, Forwarding: -1}, b
	ls := startLimitsServer(t, opts, up, liveUpstream(t), forward.WithCacheSize(0))
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeTXT)
	if r, err := ls.tryExchange(flooderIP, "tcp", m); err != nil || txtBytes(r) != size {
		t.Fatalf("first answer: %v %v", r, err)
	}
	return ls, b
}

// TestCachedRepliesToAClientReadingNothingHoldOnlyItsConnection: a pod
// pipelines queries for an 8 KB answer the cache holds on one connection
// and reads nothing. The answers come from the cache on the connection's
// reader, which writes them itself: it stops reading once the kernel's
// send queue is full, and starts no goroutine and takes no forwarding
// slot. The kernel holds at most tcpSendBuffer's worth for the
// connection, the write's deadline closes it, every byte of the budget
// is given back, and another pod is answered meanwhile.
func TestCachedRepliesToAClientReadingNothingHoldOnlyItsConnection(t *testing.T) {
	const answer = 8000
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(answer)).Addr
	b := quota.NewBudget(64<<20, 0)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: -1}, Budget: b}, up, liveUpstream(t))
	q := new(dns.Msg)
	q.SetQuestion("big.example.", dns.TypeTXT)
	if r, err := ls.tryExchange(flooderIP, "tcp", q); err != nil || txtBytes(r) != answer { // into the cache
		t.Fatalf("first answer: %v %v", r, err)
	}
	ls.victimForwarded(t, "before the flood")
	testenv.Eventually(t, 30*time.Second, "the first answers' bytes given back", func() bool { return b.Used() == 0 })
	goroutines := runtime.NumGoroutine()

	c := slowTCPClient(t, ls.addr)
	pipeline(c, packQuery(t, "big.example.", dns.TypeTXT), 3000)
	testenv.Eventually(t, 30*time.Second, "a reply waiting to be written", func() bool { return b.Used() >= answer })
	queued, _ := tcpQueues(t, ls.addr, addrPortOf(c.LocalAddr()))
	if queued == 0 || queued > 2*tcpSendBuffer {
		t.Errorf("the kernel holds %d bytes of cached replies for a client that reads nothing, want some, at most %d", queued, 2*tcpSendBuffer)
	}
	if g := runtime.NumGoroutine(); g > goroutines+8 {
		t.Errorf("%d goroutines with the connection's reader writing (%d before it), want a few more at most", g, goroutines)
	}
	if n := ls.forwarding.Used(); n != 0 {
		t.Errorf("%d forwarding slots taken by cached answers, want none", n)
	}
	ls.victimForwarded(t, "with the flooder's reply waiting")
	testenv.Eventually(t, 30*time.Second, "the connection closed for a reply that waited too long", func() bool { return ls.usage(flooderIP).TCPConns == 0 })
	testenv.Eventually(t, 30*time.Second, "every byte given back", func() bool { return b.Used() == 0 })
	ls.victimForwarded(t, "after the connection closed")
}
