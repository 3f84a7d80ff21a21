//go:build linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// holdingUpstream answers every A query with 203.0.113.7, but nothing
// for "stuck.example." until the test ends: a query for it holds its
// source's forwarding slot.
type holdingUpstream struct{ done <-chan struct{} }

func (u holdingUpstream) Reply(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
	if len(req.Question) != 1 {
		return nil
	}
	if req.Question[0].Name == "stuck.example." {
		<-u.done
		return nil
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(203, 0, 113, 7)}}
	return m
}

// TestLinkLocalClientIsItsPod: a pod asking from its link-local address
// (fe80::…, through its veth, to the node's link-local address on it)
// counts against its own limits, as when it asks from its pod IP: while
// its pod IP (IPv6: the resolver listens on [::]) holds its one
// forwarding slot, its forwarded queries
// from fe80:: get SERVFAIL, over UDP and TCP. A link-local client on an
// interface no recorded pod is behind (another namespace, same address)
// stays a source of its own and is answered; so is the pod's once its
// DEL is carried out. Before, the pod's link-local address was a second
// source, with a share of every per-source bound of its own.
func TestLinkLocalClientIsItsPod(t *testing.T) {
	node := testenv.NewNode(t)
	pod := node.AddPod(t, testenv.PodConfig{})
	other := node.AddPod(t, testenv.PodConfig{}) // recorded by no ADD
	nodeLL, podLL := netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::2")
	for _, p := range []*testenv.Pod{pod, other} {
		node.AddAddr(t, nodeLL.String()+"/64", p.HostVeth)
		p.AddAddr(t, podLL.String()+"/64", "eth0")
	}

	// The agent forwards from the test's namespace (its goroutines run
	// there; only its listening sockets are bound in the node's).
	done := make(chan struct{})
	upstream := dnstest.Start(t, "127.0.0.1:0", holdingUpstream{done: done})
	t.Cleanup(func() { close(done) }) // before the upstream closes, which waits for its handlers
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	const port = 53
	cfg := Config{
		Source:         configdir.New(t.TempDir()),
		Listen:         []netip.AddrPort{netip.AddrPortFrom(netip.IPv6Unspecified(), port)},
		Upstreams:      []netip.AddrPort{upstream.Addr},
		Socket:         socket,
		Limits:         quota.Limits{QPS: -1, Forwarding: 1},
		ForwardTimeout: 30 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	_, client := runInNode(t, node, cfg)
	add := addWeb0(t, client, pod, "c0ffee11")

	podIP := dialIn(t, pod, "udp6", netip.AddrPortFrom(pod.IPv6, 0), netip.AddrPortFrom(pod.Gateway6(), port))
	podLinkLocal := linkLocalDial(t, pod, "udp6", podLL, nodeLL, port)
	otherLinkLocal := linkLocalDial(t, other, "udp6", podLL, nodeLL, port)
	if r := exchangeOn(t, podLinkLocal, "before.example."); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("the pod from fe80::, its slot free: %v, want its answer", r)
	}
	stuck := new(dns.Msg)
	stuck.SetQuestion("stuck.example.", dns.TypeA)
	if err := podIP.WriteMsg(stuck); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the stuck query forwarded", func() bool { return upstream.Queries("stuck.example.") == 1 })

	// The agent learns which pod is behind the veth once it has the
	// pod's record: until then the link-local client is a source of its
	// own, and answered.
	n := 0
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		n++
		r := exchangeOn(t, podLinkLocal, fmt.Sprintf("refused%d.example.", n))
		if r == nil || r.Rcode != dns.RcodeServerFailure {
			return fmt.Errorf("the pod from fe80:: while its pod IP holds its slot: %v, want SERVFAIL", r)
		}
		return nil
	})
	tcp := linkLocalDial(t, pod, "tcp6", podLL, nodeLL, port)
	if r := exchangeOn(t, tcp, "refused-tcp.example."); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("the pod from fe80:: over TCP while its pod IP holds its slot: %v, want SERVFAIL", r)
	}
	if r := exchangeOn(t, otherLinkLocal, "other.example."); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Errorf("fe80::2 behind an interface no recorded pod is behind: %v, want its answer", r)
	}

	if err := client.CNIDel(context.Background(), control.CNIDelRequest{ContainerID: add.ContainerID, Netns: pod.Path()}); err != nil {
		t.Fatal(err)
	}
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		n++
		r := exchangeOn(t, podLinkLocal, fmt.Sprintf("after-del%d.example.", n))
		if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			return fmt.Errorf("the namespace from fe80:: after its DEL: %v, want its answer", r)
		}
		return nil
	})
}

// runInNode runs an agent with cfg in node's network namespace (its
// goroutines stay in the test's) until the test ends; it returns the agent
// and a client of its control socket once it is ready.
func runInNode(t *testing.T, node *testenv.Node, cfg Config) (*Agent, *control.Client) {
	t.Helper()
	a, err := newAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- node.Do(func() error { return a.run(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	client := control.NewClient(cfg.Socket, 2*time.Second)
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		select {
		case err := <-stopped:
			stopped <- err
			t.Fatalf("agent stopped: %v", err)
		default:
		}
		st, err := client.Status(context.Background())
		if err == nil && !st.Ready {
			err = errors.New("not ready: " + st.NotReady)
		}
		return err
	})
	return a, client
}

// addWeb0 records pod as shop/web-0, with its two addresses, by the CNI
// ADD containerID, and returns the request.
func addWeb0(t *testing.T, client *control.Client, pod *testenv.Pod, containerID string) control.CNIAddRequest {
	t.Helper()
	cookie, err := netns.Cookie(pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	add := control.CNIAddRequest{ContainerID: containerID, Netns: pod.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0",
		IPs: []netip.Addr{pod.IPv4, pod.IPv6}, NetnsCookie: cookie}
	if _, err := client.CNIAdd(context.Background(), add); err != nil {
		t.Fatal(err)
	}
	return add
}

// dialIn is a DNS connection from p's namespace to server over network,
// from local if it is valid.
func dialIn(t *testing.T, p *testenv.Pod, network string, local, server netip.AddrPort) *dns.Conn {
	t.Helper()
	var c net.Conn
	err := p.Do(func() error {
		d := net.Dialer{}
		if local.IsValid() {
			if network == "tcp6" {
				d.LocalAddr = net.TCPAddrFromAddrPort(local)
			} else {
				d.LocalAddr = net.UDPAddrFromAddrPort(local)
			}
		}
		var err error
		c, err = d.Dial(network, server.String())
		return err
	})
	if err != nil {
		t.Fatalf("a client in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &dns.Conn{Conn: c}
}

// linkLocalDial is dialIn from address from on p's eth0 to to on the
// other end of the link. The interface is named by its index: Go's cache
// of interface names is the process's, whatever namespace a thread is in.
func linkLocalDial(t *testing.T, p *testenv.Pod, network string, from, to netip.Addr, port uint16) *dns.Conn {
	t.Helper()
	zone := strconv.Itoa(int(p.Ifindex(t, "eth0")))
	return dialIn(t, p, network, netip.AddrPortFrom(from.WithZone(zone), 0), netip.AddrPortFrom(to.WithZone(zone), port))
}

// exchangeOn sends an A query for name on c and returns the reply to it,
// nil (the test marked failed) when none came.
func exchangeOn(t *testing.T, c *dns.Conn, name string) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMsg(q); err != nil {
		t.Errorf("%s: %v", name, err)
		return nil
	}
	for {
		r, err := c.ReadMsg()
		if err != nil {
			t.Errorf("%s: no reply: %v", name, err)
			return nil
		}
		if r.Id == q.Id {
			return r
		}
	}
}
