//go:build linux

package redirect

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// What the reachable nameservers of TestConnectedBeforeCaptureKeepsItsPeer
// answer: an answer with these came from the nameserver itself.
var (
	direct4 = netip.MustParseAddr("198.51.100.153")
	direct6 = netip.MustParseAddr("2001:db8:d::153")
)

// TestConnectedBeforeCaptureKeepsItsPeer: a UDP socket connected to its
// nameserver while its pod was not captured stays connected to it, and the
// kernel delivers that socket nothing but the nameserver's datagrams. Once
// the pod is marked, its queries on that socket must still reach the
// nameserver and be answered; redirected, the resolver's reply would be
// dropped and the client would time out for the socket's life. The dual-stack
// socket connected to ::ffff:a.b.c.d is the case that matters: the kernel
// runs the sendmsg hook for every send() or write() of it. A sendto() naming
// the peer runs it for any connected socket.
func TestConnectedBeforeCaptureKeepsItsPeer(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	ns4, ns6 := netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("2001:db8:53::53")
	servers := map[netip.Addr]*dnstest.Server{}
	for _, a := range []netip.Addr{ns4, ns6} {
		servers[a] = e.node.ServeNameserver(t, a, dnstest.Marker(direct4, direct6))
	}

	tests := []struct {
		name   string
		family string // of the socket
		peer   netip.AddrPort
		send   string
	}{
		{"AF_INET6 connected to ::ffff:a.b.c.d, write", "inet6", netip.AddrPortFrom(netip.AddrFrom16(ns4.As16()), 53), "write"},
		{"AF_INET6 connected to ::ffff:a.b.c.d, sendto the peer", "inet6", netip.AddrPortFrom(netip.AddrFrom16(ns4.As16()), 53), "sendto"},
		{"AF_INET6 connected to an IPv6 nameserver, sendto the peer", "inet6", netip.AddrPortFrom(ns6, 53), "sendto"},
		{"AF_INET connected, sendto the peer", "inet", netip.AddrPortFrom(ns4, 53), "sendto"},
		{"AF_INET connected, write", "inet", netip.AddrPortFrom(ns4, 53), "write"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := e.pod(t)
			name := uniqueName("connected")
			h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
				helperEnv+"="+helperConnected, helperFamily+"="+tt.family, helperAddr+"="+tt.peer.String(),
				helperSend+"="+tt.send, helperName+"="+name)

			// Captured only now, the heartbeat fresh.
			cookie := e.mark(t, p, 0)
			out, err := h.Finish("go")
			if err != nil || !slices.Contains(testenv.ParseAddrs(out), direct4) {
				t.Fatalf("client: %v, printed %q; want %s from the nameserver it is connected to", err, out, direct4)
			}
			if qs := servers[tt.peer.Addr().Unmap()].ReceivedFor(name); len(qs) != 1 {
				t.Errorf("the nameserver saw %+v, want the query", qs)
			}
			if qs := e.dns.ReceivedFor(name); len(qs) != 0 {
				t.Errorf("the resolver saw %+v, want nothing", qs)
			}
			if c := e.podCounters(t, cookie); c.Redirected != 0 {
				t.Errorf("pod counters %+v, want nothing redirected", c)
			}
		})
	}

	// A socket connected once the pod is captured is redirected as ever.
	t.Run("AF_INET6 connected to ::ffff:a.b.c.d once captured, write", func(t *testing.T) {
		p, cookie := e.markedPod(t, 0)
		name := uniqueName("connected")
		h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
			helperEnv+"="+helperConnected, helperFamily+"=inet6", helperAddr+"="+netip.AddrPortFrom(netip.AddrFrom16(ns4.As16()), 53).String(),
			helperSend+"=write", helperName+"="+name)
		out, err := h.Finish("go")
		if err != nil || !slices.Contains(testenv.ParseAddrs(out), marker4) {
			t.Fatalf("client: %v, printed %q; want %s from the resolver", err, out, marker4)
		}
		if qs := servers[ns4].ReceivedFor(name); len(qs) != 0 {
			t.Errorf("the nameserver saw %+v, want nothing", qs)
		}
		if c := e.podCounters(t, cookie); c.Redirected == 0 {
			t.Errorf("pod counters %+v: nothing redirected", c)
		}
	})
}

// TestDNSServerInPodAnswersFromPort53: a DNS server in a marked pod,
// bound to port 53, answers a client that asked from port 53 (BIND's
// query-source port 53, a server forwarding to it). Its reply goes to port
// 53 and must reach the client, not the node's resolver as a query.
func TestDNSServerInPodAnswersFromPort53(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	p, cookie := e.markedPod(t, 0)
	testenv.StartHelper(t, t.Context(), p, e.cg, "ready", helperEnv+"="+helperEcho)

	name := uniqueName("server")
	q := new(dns.Msg)
	q.SetQuestion(name+".", dns.TypeA)
	query, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var reply []byte
	if err := e.node.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 53})
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDPAddrPort(query, netip.AddrPortFrom(p.IPv4, 53)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 4096)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if from != netip.AddrPortFrom(p.IPv4, 53) {
			return fmt.Errorf("reply from %s, want %s:53", from, p.IPv4)
		}
		reply = buf[:n]
		return nil
	}); err != nil {
		t.Fatalf("client on port 53: %v", err)
	}
	if !bytes.Equal(reply, query) {
		t.Errorf("the server's reply is %x, want %x", reply, query)
	}
	if qs := e.dns.ReceivedFor(name); len(qs) != 0 {
		t.Errorf("the resolver saw %+v, want nothing", qs)
	}
	if c := e.podCounters(t, cookie); c.Redirected != 0 {
		t.Errorf("pod counters %+v, want nothing redirected", c)
	}
	for slot := range Slots {
		if ns, ok := e.r.Nameserver(cookie, slot); ok {
			t.Errorf("slot %d learned %s, want no slot taken", slot, ns)
		}
	}
}
