//go:build linux

package resolver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestNodeProbeExempt: a query sent from the very address it asks and
// from a privileged port (the agent's /healthz probe, which only root on
// the node can send) is held to no per-source limit, with the kernel's
// filter on the socket and without it: a burst far past the rate is
// answered whole over UDP, and over TCP on more connections than a source
// may hold, each asking once. The same address from an unprivileged port,
// and another address from a privileged port, are limited as any source
// is. Over IPv6 too, where the loopback has no other address to ask from.
func TestNodeProbeExempt(t *testing.T) {
	testenv.RequireRoot(t) // privileged ports; the kernel's filter
	for _, tc := range []struct {
		listen string
		kernel bool
	}{{"127.0.0.1:0", true}, {"127.0.0.1:0", false}, {"[::1]:0", true}, {"[::1]:0", false}} {
		t.Run(fmt.Sprintf("%s kernel filter %v", tc.listen, tc.kernel), func(t *testing.T) {
			const burst, conns, sent = 5, 2, 30
			kernel := tc.kernel
			ls := startProbeServer(t, tc.listen, Options{Limits: quota.Limits{QPS: 1, Burst: burst, TCPConns: conns}, KernelRate: kernel})
			switch {
			case kernel && ls.kernel == nil:
				testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
			case !kernel && ls.kernel != nil:
				t.Fatal("the kernel's filter is on")
			}
			self, other := ls.addr.Addr(), netip.MustParseAddr("127.0.0.6")
			for _, c := range []struct {
				name       string
				from       netip.Addr
				privileged bool
				exempt     bool
			}{
				{"the address asked, from a privileged port", self, true, true},
				{"the address asked, from another port", self, false, false},
				{"another address, from a privileged port", other, true, false},
			} {
				if c.from.Is4() != self.Is4() {
					continue
				}
				dropped := func() uint64 {
					n := ls.unknown.Get(c.from, 0).Usage().RateLimited
					if ls.kernel != nil {
						n += ls.kernel.drops(c.from)
					}
					return n
				}
				before := dropped()
				answered := udpBurst(t, c.from, c.privileged, ls.addr, sent)
				// Every query answered or dropped: nothing is on its way.
				testenv.Eventually(t, 30*time.Second, c.name+": every UDP query answered or dropped", func() bool {
					return answered.Load()+int64(dropped()-before) == sent
				})
				switch n := answered.Load(); {
				case c.exempt && n != sent:
					t.Errorf("%s: %d of %d UDP queries sent at once answered, want all", c.name, n, sent)
				case !c.exempt && n == sent:
					t.Errorf("%s: all %d UDP queries sent at once answered, over a burst of %d", c.name, n, burst)
				}
				ok := tcpConnsAsking(t, c.from, c.privileged, ls.addr, sent)
				switch {
				case c.exempt && ok != sent:
					t.Errorf("%s: %d of %d TCP connections held open answered, want all", c.name, ok, sent)
				case !c.exempt && ok == sent:
					t.Errorf("%s: all %d TCP connections held open answered, over a bound of %d and a burst of %d", c.name, ok, conns, burst)
				}
			}
		})
	}
}

// startProbeServer serves the limits tests' table on listen, a loopback
// address with port 0, with opts.
func startProbeServer(t *testing.T, listen string, opts Options) *limitsServer {
	t.Helper()
	udp, tcp := listenPair(t, listen)
	opts.Pods = podcache.New()
	fwd := forward.New()
	opts.Forwarder = fwd
	s := New(opts)
	s.SetTable(limitsTable())
	serveUntilCleanup(t, s, fwd, udp, tcp)
	return &limitsServer{Server: s, addr: addrPortOf(udp.LocalAddr()), fwd: fwd}
}

// udpBurst sends n queries at once from from (a privileged port, or one
// the kernel picks), counting the replies until the test ends.
func udpBurst(t *testing.T, from netip.Addr, privileged bool, to netip.AddrPort, n int) *atomic.Int64 {
	t.Helper()
	conn := fromPort(t, privileged, func(port uint16) (net.Conn, error) {
		return net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, port)), net.UDPAddrFromAddrPort(to))
	})
	return burstOn(t, conn, n)
}

// burstOn sends n queries at once on conn, counting the replies until the
// test ends (conn closed then).
func burstOn(t *testing.T, conn net.Conn, n int) *atomic.Int64 {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	var answered atomic.Int64
	go func() {
		buf := make([]byte, 65535)
		for {
			if _, err := conn.Read(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ECONNREFUSED and the like
			}
			answered.Add(1)
		}
	}()
	q := packQuery(t, tableName, dns.TypeA)
	for range n {
		if _, err := conn.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	return &answered
}

// tcpConnsAsking opens n connections from from, one after the other, each
// kept open until all are, and asks one query on each: it returns how many
// were answered NOERROR (others were reset, or REFUSED over the rate).
func tcpConnsAsking(t *testing.T, from netip.Addr, privileged bool, to netip.AddrPort, n int) int {
	t.Helper()
	ok := 0
	for range n {
		conn := fromPort(t, privileged, func(port uint16) (net.Conn, error) {
			return net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, port)), net.TCPAddrFromAddrPort(to))
		})
		if conn == nil {
			continue // reset as it was accepted
		}
		// Reset, not closed: no privileged port kept in TIME_WAIT.
		defer func() { conn.(*net.TCPConn).SetLinger(0); conn.Close() }()
		m := new(dns.Msg)
		m.SetQuestion(tableName, dns.TypeA)
		c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
		if resp, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn}); err == nil && resp.Rcode == dns.RcodeSuccess {
			ok++
		}
	}
	return ok
}

// fromPort dials from a privileged port (600-1023, another when one is
// taken: other tests' agents probe from these) or from one the kernel
// picks; nil when the connection was reset as it was made.
func fromPort(t *testing.T, privileged bool, dial func(port uint16) (net.Conn, error)) net.Conn {
	t.Helper()
	for range 100 {
		var port uint16
		if privileged {
			port = uint16(600 + rand.N(424))
		}
		c, err := dial(port)
		switch {
		case err == nil:
			return c
		case errors.Is(err, syscall.ECONNRESET):
			return nil
		case privileged && (errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL)):
			continue
		}
		t.Fatal(err)
	}
	t.Fatal("no free privileged port")
	return nil
}

// TestNodeProbeNotFromAPod: a pod sending IPv6 from the node's address
// (which the node takes; IPv4 it would drop as martian) and from a
// privileged port of its own namespace is held to that address's rate in
// the kernel as any source is: the exemption is the node's own datagrams',
// which come in through the loopback. The node's own, from the same
// address and a privileged port, are all answered.
func TestNodeProbeNotFromAPod(t *testing.T) {
	node := testenv.NewNode(t)
	pod := node.AddPod(t, testenv.PodConfig{})
	const burst, sent = 5, 30
	fwd := forward.New()
	s := New(Options{Limits: quota.Limits{QPS: 0.01, Burst: burst}, KernelRate: true, Pods: podcache.New(), Forwarder: fwd}) // no new token while the test runs
	if s.kernel == nil {
		s.Close()
		fwd.Close()
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	s.SetTable(limitsTable())
	nodeAddr := pod.Gateway6() // the node's, on the pod's veth
	addr := serveInNode(t, node, s, fwd, netip.AddrPortFrom(nodeAddr, 0))
	q := packQuery(t, tableName, dns.TypeA)

	// The pod reaches the node over IPv6 (its link's neighbour discovery
	// done), asking from its own address: the spoofed datagrams below
	// are not lost on the way.
	var direct *net.UDPConn
	if err := pod.Do(func() (err error) {
		direct, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(pod.IPv6, 0)), net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	testenv.Eventually(t, 30*time.Second, "the pod's own query is answered", func() bool {
		direct.Write(q)
		direct.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := direct.Read(make([]byte, 512))
		return err == nil
	})

	// The pod's, from the node's address (IPV6_FREEBIND: not one of its
	// own) and port 700.
	var spoofed net.PacketConn
	if err := pod.Do(func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1) }); err != nil {
				return err
			}
			return serr
		}}
		spoofed, err = lc.ListenPacket(context.Background(), "udp6", netip.AddrPortFrom(nodeAddr, 700).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer spoofed.Close()
	for range sent {
		if _, err := spoofed.WriteTo(q, net.UDPAddrFromAddrPort(addr)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "the kernel drops the pod's datagrams past the burst", func() bool {
		return s.kernel.drops(nodeAddr) >= sent-burst
	})

	// The node's own, through the loopback.
	before := s.kernel.drops(nodeAddr)
	own := fromPort(t, true, func(port uint16) (c net.Conn, err error) {
		err = node.Do(func() error {
			uc, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(nodeAddr, port)), net.UDPAddrFromAddrPort(addr))
			if err == nil {
				c = uc
			}
			return err
		})
		return c, err
	})
	answered := burstOn(t, own, sent)
	testenv.Eventually(t, 30*time.Second, "the node's own queries are answered", func() bool { return answered.Load() == sent })
	if d := s.kernel.drops(nodeAddr) - before; d != 0 {
		t.Errorf("the kernel dropped %d of the node's own queries", d)
	}
}
