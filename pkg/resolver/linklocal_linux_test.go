//go:build linux

package resolver

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// The link-local addresses of the link-local test: the node's on every
// host veth (as Calico's gateway is), and each pod's on its eth0, the same
// in both pods.
var (
	nodeLinkLocal = netip.MustParseAddr("fe80::1")
	podLinkLocal  = netip.MustParseAddr("fe80::2")
)

// stuckName's upstream never answers while the test runs: a query for it
// holds its source's forwarding slot.
const stuckName = "stuck.example."

// holding answers as liveAnswers, but nothing for stuckName until the
// test ends.
type holding struct{ done <-chan struct{} }

func (h holding) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	if len(req.Question) == 1 && dns.CanonicalName(req.Question[0].Name) == stuckName {
		<-h.done
		return nil
	}
	return liveAnswers().Reply(req, local)
}

// TestLinkLocalClientAnswered: a client asking from a link-local address
// (a node process, or a pod through its veth, on a resolver listening on
// [::]) gets every answer, the forwarded ones included, on the interface
// its query came in on. Two pods have the same link-local address, each on
// a link of its own, as the node's end of each veth has the same one: the
// query's interface is all that tells them apart. Each is a source of its
// own: a pod holding its only forwarding slot gets SERVFAIL for its next
// forwarded query, and the other pod, same address, still gets its answer;
// over TCP, the first pod is the same source as over UDP, refused too.
// Before: a forwarded reply (and the limits' SERVFAIL) was sent without
// the client's interface (sin6_scope_id 0), so the kernel sent it out of
// the first interface with a link-local route, the first pod's, and the
// second pod never got it; and both pods were one source. And a TCP
// client's zone was its interface's name (fe80::2%veth…), a UDP one's its
// index (fe80::2%7): the same client on the same link was two sources.
func TestLinkLocalClientAnswered(t *testing.T) {
	node := testenv.NewNode(t)
	pods := []*testenv.Pod{node.AddPod(t, testenv.PodConfig{}), node.AddPod(t, testenv.PodConfig{})}
	for _, p := range pods {
		node.AddAddr(t, nodeLinkLocal.String()+"/64", p.HostVeth)
		p.AddAddr(t, podLinkLocal.String()+"/64", "eth0")
	}

	done := make(chan struct{})
	upstream := dnstest.Start(t, "127.0.0.1:0", holding{done: done})
	t.Cleanup(func() { close(done) }) // before the upstream closes (cleanups run last first), which waits for its handlers
	fwd := forward.New(forward.WithTimeout(30 * time.Second))
	s := New(Options{
		Limits:    quota.Limits{QPS: -1, Forwarding: 1},
		Pods:      podcache.New(),
		Forwarder: fwd,
		Upstreams: func(netip.AddrPort, netip.AddrPort) ([]netip.AddrPort, bool) {
			return []netip.AddrPort{upstream.Addr}, true
		},
	})
	s.SetTable(limitsTable(model.Service{Namespace: "default", Name: "ext", ExternalName: "web.default.svc.cluster.local"}))
	port := serveInNode(t, node, s, fwd, netip.MustParseAddrPort("[::]:0")).Port()

	clients := make([]*net.UDPConn, len(pods))
	for i, p := range pods {
		clients[i] = linkLocalClient(t, p, port)
	}
	for i, c := range clients {
		for _, q := range []struct{ name, want string }{
			{tableName, "198.51.100.1"},                       // the fast path
			{"ext.default.svc.cluster.local.", "10.96.0.20"},  // the slow path, from the table (a CNAME chased)
			{fmt.Sprintf("who%d.example.", i), "203.0.113.7"}, // forwarded
		} {
			r := askOn(t, c, q.name)
			if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || !strings.Contains(r.Answer[len(r.Answer)-1].String(), q.want) {
				t.Errorf("pod %d, %s: %v, want %s", i+1, q.name, r, q.want)
			}
		}
	}

	// The first pod takes its one forwarding slot; its next forwarded
	// query is refused, and the reply still finds it.
	first, second := clients[0], clients[1]
	stuck := new(dns.Msg)
	stuck.SetQuestion(stuckName, dns.TypeA)
	if err := sendQuery(first, stuck); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the stuck query forwarded", func() bool { return upstream.Queries(stuckName) == 1 })
	if r := askOn(t, first, "refused.example."); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("pod 1 over its forwarding bound: %v, want SERVFAIL", r)
	}
	if r := askOn(t, second, "other.example."); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Errorf("pod 2, same link-local address on another link, while pod 1 holds its slot: %v, want its answer", r)
	}
	tcp := linkLocalTCPClient(t, pods[0], port)
	q := new(dns.Msg)
	q.SetQuestion("refused-tcp.example.", dns.TypeA)
	tcp.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tcp.WriteMsg(q); err != nil {
		t.Fatal(err)
	}
	if r, err := tcp.ReadMsg(); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("pod 1 over TCP, its slot held over UDP: %v (%v), want SERVFAIL: the same source", r, err)
	}
}

// serveInNode serves s on listen (port 0: any free one for both UDP and
// TCP) in node's network namespace until the test ends, and returns where.
func serveInNode(t *testing.T, node *testenv.Node, s *Server, fwd *forward.Forwarder, listen netip.AddrPort) netip.AddrPort {
	t.Helper()
	var conn *net.UDPConn
	var ln *net.TCPListener
	// In the node's namespace: Do runs fn on a goroutine of its own.
	if err := node.Do(func() (err error) {
		conn, ln, err = bindPair(listen)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s, fwd, conn, ln)
	return addrPortOf(conn.LocalAddr())
}

// linkLocalClient is a UDP socket in p bound to podLinkLocal on its eth0,
// connected to the node's link-local address and port on the same link.
// The interface is named by its index: the name eth0 is every pod's, and
// Go's cache of interface names is the process's, whatever namespace a
// thread is in.
func linkLocalClient(t *testing.T, p *testenv.Pod, port uint16) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	zone := strconv.Itoa(int(p.Ifindex(t, "eth0")))
	err := p.Do(func() (err error) {
		c, err = net.DialUDP("udp6",
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(podLinkLocal.WithZone(zone), 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(nodeLinkLocal.WithZone(zone), port)))
		return err
	})
	if err != nil {
		t.Fatalf("a link-local client in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// linkLocalTCPClient is a DNS connection over TCP from p, as
// linkLocalClient's socket.
func linkLocalTCPClient(t *testing.T, p *testenv.Pod, port uint16) *dns.Conn {
	t.Helper()
	var c net.Conn
	zone := strconv.Itoa(int(p.Ifindex(t, "eth0")))
	err := p.Do(func() (err error) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(podLinkLocal.WithZone(zone), 0))}
		c, err = d.Dial("tcp6", netip.AddrPortFrom(nodeLinkLocal.WithZone(zone), port).String())
		return err
	})
	if err != nil {
		t.Fatalf("a link-local TCP client in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &dns.Conn{Conn: c}
}

func sendQuery(c *net.UDPConn, m *dns.Msg) error {
	m.Id = dns.Id()
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = c.Write(b)
	return err
}

// askOn sends an A query for name on c and returns the reply to it (nil
// when none came), passing over replies to earlier queries.
func askOn(t *testing.T, c *net.UDPConn, name string) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	if err := sendQuery(c, q); err != nil {
		t.Errorf("%s: %v", name, err)
		return nil
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Errorf("%s: no reply: %v", name, err)
			return nil
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) == nil && r.Id == q.Id {
			return r
		}
	}
}

// TestSockaddrRoundTrip: what putSockaddr writes for a reply,
// parseSockaddr reads back as the client it was made from: a link-local
// client's interface (its zone, an index) included, which the reply needs
// to leave by that interface; an IPv4 client v4-mapped on an IPv6 socket.
// A zone that is no index (no client parseSockaddr read has one) is an
// error, not a reply sent out of whatever interface.
func TestSockaddrRoundTrip(t *testing.T) {
	for _, c := range []struct {
		client string
		inet4  bool
	}{
		{"192.0.2.1:53000", true},
		{"192.0.2.1:53000", false},
		{"[2001:db8::1]:53000", false},
		{"[fe80::2%7]:53000", false},
		{"[fe80::2%4294967295]:1", false},
	} {
		client := netip.MustParseAddrPort(c.client)
		var sa [sockaddrLen]byte
		n, err := putSockaddr(&sa, client, c.inet4)
		if err != nil {
			t.Errorf("%s (inet4 %v): %v", client, c.inet4, err)
			continue
		}
		if got, ok := parseSockaddr(sa[:n]); !ok || got != client {
			t.Errorf("%s (inet4 %v): read back as %v (%v)", client, c.inet4, got, ok)
		}
	}
	var sa [sockaddrLen]byte
	for _, c := range []struct {
		client string
		inet4  bool
	}{
		{"[fe80::2%eth0]:53000", false},
		{"[2001:db8::1]:53000", true},
	} {
		if _, err := putSockaddr(&sa, netip.MustParseAddrPort(c.client), c.inet4); err == nil {
			t.Errorf("%s (inet4 %v): no error", c.client, c.inet4)
		}
	}
}
