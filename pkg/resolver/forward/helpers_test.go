package forward

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestMain fails the run if any goroutine of this package or of miekg/dns
// outlives the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			os.Stderr.WriteString("FAIL: goroutines leaked:\n\n" + leaked + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to wait for goroutines running our code or the
// test servers' to end, and returns the stacks of those that did not.
func leakedGoroutines(wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") {
				continue // this one
			}
			if strings.Contains(g, "ztdns/pkg/resolver/forward") || strings.Contains(g, "github.com/miekg/dns") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testUpstream is a DNS server on a loopback port, UDP and TCP, run by
// miekg/dns with a handler the test chooses. It counts the queries it gets.
type testUpstream struct {
	addr    netip.AddrPort
	queries atomic.Int64
	// asked is the question of the last query it got.
	asked atomic.Pointer[dns.Question]
	// stop is closed before the servers shut down, so that handlers that
	// sleep or hang return.
	stop chan struct{}
}

// handlerFunc answers one query; a handler that writes nothing stays silent.
type handlerFunc func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg)

func startUpstream(tb testing.TB, h handlerFunc) *testUpstream {
	tb.Helper()
	pc, ln := testenv.ListenPair(tb)
	u := &testUpstream{
		addr: netip.MustParseAddrPort(pc.LocalAddr().String()),
		stop: make(chan struct{}),
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if len(req.Question) == 1 {
			u.asked.Store(&req.Question[0])
		}
		u.queries.Add(1)
		h(u, w, req)
	})
	acceptAll := func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept }
	dnstest.StartServers(tb,
		&dns.Server{PacketConn: pc, Handler: handler, MsgAcceptFunc: acceptAll},
		&dns.Server{Listener: ln, Handler: handler, MsgAcceptFunc: acceptAll})
	tb.Cleanup(func() { close(u.stop) }) // before the servers shut down: cleanups run last first
	return u
}

// silentUpstream returns a loopback address that takes queries, UDP and
// TCP, and never answers.
func silentUpstream(tb testing.TB) *testUpstream {
	tb.Helper()
	return startUpstream(tb, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		if w.LocalAddr().Network() == "tcp" {
			<-u.stop // keep the connection open and quiet
		}
	})
}

// answerA answers every A query with one record per address, TTL ttl.
func answerA(ttl uint32, addrs ...string) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
				A:   net.ParseIP(a),
			})
		}
		if o := req.IsEdns0(); o != nil {
			m.SetEdns0(1232, o.Do())
		}
		_ = w.WriteMsg(m)
	}
}

// answerRcode answers every query with rcode and nothing else.
func answerRcode(rcode int) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		_ = w.WriteMsg(m)
	}
}

// answerNegative answers with rcode and, if soaTTL > 0, an SOA in authority.
func answerNegative(rcode int, soaTTL, minimum uint32) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		if soaTTL > 0 {
			m.Ns = append(m.Ns, testSOA(soaTTL, minimum))
		}
		_ = w.WriteMsg(m)
	}
}

func testSOA(ttl, minimum uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns1.example.com.",
		Mbox:    "hostmaster.example.com.",
		Serial:  2024010101,
		Refresh: 7200,
		Retry:   3600,
		Expire:  1209600,
		Minttl:  minimum,
	}
}

// delayed runs h after d, or not at all if the upstream stops first.
func delayed(d time.Duration, h handlerFunc) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		select {
		case <-time.After(d):
			h(u, w, req)
		case <-u.stop:
		}
	}
}

// query packs a client query. opts tweak the message before packing.
func query(tb testing.TB, name string, qtype uint16, opts ...func(*dns.Msg)) []byte {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	for _, o := range opts {
		o(m)
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatalf("pack query: %v", err)
	}
	return b
}

func withEDNS(do bool) func(*dns.Msg) {
	return func(m *dns.Msg) { m.SetEdns0(1232, do) }
}

func withCD(m *dns.Msg) { m.CheckingDisabled = true }

func withID(id uint16) func(*dns.Msg) { return func(m *dns.Msg) { m.Id = id } }

func withOpcode(op int) func(*dns.Msg) { return func(m *dns.Msg) { m.Opcode = op } }

// forward calls f.Forward and fails the test on error.
func forward(tb testing.TB, f *Forwarder, req []byte, tcp bool, ups ...netip.AddrPort) *dns.Msg {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := f.Forward(ctx, req, tcp, ups)
	if err != nil {
		tb.Fatalf("Forward: %v", err)
	}
	return dnstest.Unpack(tb, b)
}

// guard bounds how long a test waits for a Forward that must return: far
// beyond any bound the Forwarder keeps, so that it fires only when Forward
// would not return at all, never because the machine is slow.
const guard = 30 * time.Second

// forwardGuarded calls f.Forward with a context of its own that never
// ends, so that only the Forwarder bounds the wait, and fails the test if
// it has not returned within guard. It logs how long Forward took.
func forwardGuarded(tb testing.TB, f *Forwarder, req []byte, tcp bool, ups ...netip.AddrPort) *dns.Msg {
	tb.Helper()
	return awaitForward(tb, startForward(context.Background(), f, req, tcp, ups), "")
}

// forwardResult is what a Forward started by startForward returned.
type forwardResult struct {
	reply []byte
	err   error
}

// startForward calls f.Forward with ctx in a goroutine of its own and
// returns where its result will arrive. The channel is buffered and the
// goroutine calls nothing of a test's, so that a Forward the test gave up
// on may outlive it: it returns into the channel when the test's cleanup
// closes f.
func startForward(ctx context.Context, f *Forwarder, req []byte, tcp bool, ups []netip.AddrPort) <-chan forwardResult {
	done := make(chan forwardResult, 1)
	go func() {
		b, err := f.Forward(ctx, req, tcp, ups)
		done <- forwardResult{b, err}
	}()
	return done
}

// awaitForward waits for the Forward started by startForward and returns
// its unpacked reply, failing the test if it returned an error or has not
// returned within guard. It logs how long it waited; after, if not empty,
// names what the wait began with (as "Close"), for the log and the failure.
func awaitForward(tb testing.TB, done <-chan forwardResult, after string) *dns.Msg {
	tb.Helper()
	start := time.Now()
	select {
	case r := <-done:
		if after == "" {
			tb.Logf("Forward returned after %v", time.Since(start))
		} else {
			tb.Logf("Forward returned %v after %s", time.Since(start), after)
		}
		if r.err != nil {
			tb.Fatalf("Forward: %v", r.err)
		}
		return dnstest.Unpack(tb, r.reply)
	case <-time.After(guard):
		if after == "" {
			tb.Fatalf("Forward still waiting after %v", guard)
		} else {
			tb.Fatalf("Forward still waiting %v after %s", guard, after)
		}
		return nil
	}
}

func newForwarder(tb testing.TB, opts ...Option) *Forwarder {
	tb.Helper()
	f := New(opts...)
	tb.Cleanup(func() {
		if err := f.Close(); err != nil {
			tb.Errorf("close forwarder: %v", err)
		}
	})
	return f
}

// fakeClock is a settable clock for cache tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// firstA returns the address of the first A record in m, or "".
func firstA(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// rawUDPUpstream is a hand-driven UDP upstream for tests that need to send
// exactly chosen packets: serve gets each query and the address to answer.
func rawUDPUpstream(tb testing.TB, serve func(pc net.PacketConn, from net.Addr, q []byte)) netip.AddrPort {
	tb.Helper()
	here := func(listen func() error) error { return listen() }
	return udpUpstreamWith(tb, here, netip.MustParseAddrPort("127.0.0.1:0"), func(_ <-chan struct{}, pc net.PacketConn, from net.Addr, q []byte, _ bool) {
		serve(pc, from, q)
	})
}

// udpUpstreamWith serves UDP on addr, its socket opened inside open (a
// network namespace's Do, say): serve gets each query, whether it is the
// first, and a channel closed at cleanup. It returns the address.
func udpUpstreamWith(tb testing.TB, open func(listen func() error) error, addr netip.AddrPort, serve func(stop <-chan struct{}, pc net.PacketConn, from net.Addr, q []byte, first bool)) netip.AddrPort {
	tb.Helper()
	var pc net.PacketConn
	if err := open(func() (err error) {
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}); err != nil {
		tb.Fatalf("listen udp %s: %v", addr, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65535)
		for first := true; ; first = false {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					tb.Errorf("upstream read: %v", err)
				}
				return
			}
			serve(stop, pc, from, append([]byte(nil), buf[:n]...), first)
		}
	})
	tb.Cleanup(func() {
		close(stop)
		pc.Close()
		wg.Wait()
	})
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// rawTCPUpstream accepts TCP connections and hands each to serve.
func rawTCPUpstream(tb testing.TB, serve func(c net.Conn)) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen tcp: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				serve(c)
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}
