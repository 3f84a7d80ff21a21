package resolver

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// TestForwardEndedForASourceUnderItsShare: with every slot taken, a source
// within its share gets the slot of the oldest forward of the source most
// over its share; that slot is given back exactly once, whether the
// forward's goroutine had started (it is cancelled) or not (it learns so
// when it starts).
func TestForwardEndedForASourceUnderItsShare(t *testing.T) {
	const slots = 8
	s := New(Options{MaxInflight: slots, Limits: quota.Limits{QPS: -1, Forwarding: -1}})
	defer s.Close()
	var a, b, c quota.Source
	start := func(src *quota.Source) *forwardSlot {
		t.Helper()
		fw := &forwardSlot{source: src}
		if v := s.startForward(fw); v != quota.Taken {
			t.Fatalf("forward %d of a source: verdict %d, want Taken", src.Usage().Forwarding+1, v)
		}
		return fw
	}
	var as []*forwardSlot
	for range 6 { // alone: held to no share
		as = append(as, start(&a))
	}
	bs := []*forwardSlot{start(&b), start(&b)} // at its share, 8/(2+1)
	cancelled := 0
	for i, fw := range append(as, bs...) {
		if i == 0 {
			continue // a's oldest has not started yet
		}
		if !s.forwards.arm(fw, func() { cancelled++ }) {
			t.Fatal("a forward no one ended was not armed")
		}
	}
	if s.forwarding.Used() != slots {
		t.Fatalf("%d slots taken, want all %d", s.forwarding.Used(), slots)
	}

	// c holds nothing: within its share, it takes a's oldest, not started.
	c1 := start(&c)
	if s.forwards.arm(as[0], func() {}) {
		t.Error("a's oldest forward, ended before it started, was armed")
	}
	if s.forwards.remove(as[0]) {
		t.Error("a's ended forward was still among those in flight: its slot would be given back twice")
	}
	// Again: a's next oldest, started, is cancelled.
	c2 := start(&c)
	if cancelled != 1 {
		t.Errorf("%d forwards cancelled, want 1: a's second", cancelled)
	}
	if s.forwards.remove(as[1]) {
		t.Error("a's cancelled forward was still among those in flight")
	}
	if u := a.Usage(); u.Forwarding != 4 || u.ForwardRefused != 2 {
		t.Errorf("a holds %d forwards and was refused %d, want 4 and 2", u.Forwarding, u.ForwardRefused)
	}
	if u := b.Usage(); u.Forwarding != 2 || u.ForwardRefused != 0 {
		t.Errorf("b, at its share, holds %d forwards and was refused %d, want 2 and 0", u.Forwarding, u.ForwardRefused)
	}
	if s.forwarding.Used() != slots {
		t.Errorf("%d slots taken, want all %d", s.forwarding.Used(), slots)
	}

	// The rest end as forwards do, each giving its slot back once.
	for _, fw := range append(append(as[2:], bs...), c1, c2) {
		if !s.forwards.remove(fw) {
			t.Fatal("a forward in flight was not among those in flight")
		}
		s.endForward(fw.source)
	}
	if s.forwarding.Used() != 0 || s.forwarding.Holders() != 0 || s.forwards.list.Front() != nil {
		t.Errorf("after every forward ended: %d slots taken by %d sources, list from %p; want none", s.forwarding.Used(), s.forwarding.Holders(), s.forwards.list.Front())
	}
}

// TestTCPConnectionKeepsItsUpstreams: a TCP connection's misses go to the
// pod's own nameserver found by the first lookup that found it (here its
// first forward's), for as long as it lives, its CNAME chases' lookups
// included; a new connection, and UDP, get what the lookup says now. The
// pod opened the connection to one nameserver: capture's slot for the
// address may be given to another while the connection stays open.
// Before: each query was forwarded where the lookup said at the time.
func TestTCPConnectionKeepsItsUpstreams(t *testing.T) {
	first, second := markerUpstream(t, 1), markerUpstream(t, 2)
	us := startUpstreamsServer(t)
	us.pick(first, true)

	local := us.dial(t) // answered from the table alone: no lookup
	if got := us.answer(t, local, "address.internal."); got != "198.51.100.1" || us.lookups.Load() != 0 {
		t.Fatalf("a table name: %s after %d upstream lookups, want 198.51.100.1 after none", got, us.lookups.Load())
	}
	kept := us.dial(t)
	if got := us.answer(t, kept, "one.example."); got != "203.0.113.1" {
		t.Fatalf("the connection's first forward: %s, want the first upstream's 203.0.113.1", got)
	}
	us.pick(second, true) // the address's slot now names another nameserver
	for _, name := range []string{"two.example.", "out.default.svc.cluster.local."} {
		if got := us.answer(t, kept, name); got != "203.0.113.1" {
			t.Errorf("%s on the connection opened before: %s, want the first upstream's 203.0.113.1", name, got)
		}
	}
	if got := us.answer(t, us.dial(t), "three.example."); got != "203.0.113.2" {
		t.Errorf("a new connection: %s, want the second upstream's 203.0.113.2", got)
	}
	if got := us.answer(t, local, "four.example."); got != "203.0.113.2" {
		t.Errorf("the first forward of a connection opened before the change: %s, want the second upstream's 203.0.113.2", got)
	}
	if got := us.answer(t, nil, "five.example."); got != "203.0.113.2" {
		t.Errorf("UDP: %s, want the second upstream's 203.0.113.2", got)
	}
}

// TestTCPConnectionKeepsOnlyThePodsNameserver: a lookup that finds only
// the configured upstreams (capture does not know the pod's nameserver
// yet: the agent restarted, say) is used for that forward and not kept;
// the connection's next forward looks again, and keeps the pod's
// nameserver once a lookup finds it. Before: the connection kept the
// configured upstreams for life.
func TestTCPConnectionKeepsOnlyThePodsNameserver(t *testing.T) {
	fallback, pods, later := markerUpstream(t, 1), markerUpstream(t, 2), markerUpstream(t, 3)
	us := startUpstreamsServer(t)
	us.pick(fallback, false)
	c := us.dial(t)
	if got := us.answer(t, c, "one.example."); got != "203.0.113.1" {
		t.Fatalf("the first forward, before the pod's nameserver is known: %s, want the configured upstream's 203.0.113.1", got)
	}
	us.pick(pods, true)
	if got := us.answer(t, c, "two.example."); got != "203.0.113.2" {
		t.Errorf("the next forward, the pod's nameserver known: %s, want the pod's 203.0.113.2", got)
	}
	us.pick(later, true) // the address's slot now names another nameserver
	if got := us.answer(t, c, "three.example."); got != "203.0.113.2" {
		t.Errorf("once the pod's nameserver was found: %s, want the pod's 203.0.113.2 still", got)
	}
}

// markerUpstream is a nameserver that answers every A question with
// 203.0.113.n.
func markerUpstream(t *testing.T, n byte) netip.AddrPort {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.AddrFrom4([4]byte{203, 0, 113, n}), netip.MustParseAddr("2001:db8::1"))).Addr
}

// upstreamsServer is a Server on a loopback port whose misses go where
// the test picks, with a table of address.internal (198.51.100.1) and an
// ExternalName out.default.svc.cluster.local (to out.example).
type upstreamsServer struct {
	addr    string
	picked  atomic.Pointer[upstreamPick]
	lookups atomic.Int64
}

// upstreamPick is what the server's UpstreamFunc answers.
type upstreamPick struct {
	addr netip.AddrPort
	own  bool
}

func startUpstreamsServer(t *testing.T) *upstreamsServer {
	t.Helper()
	us := &upstreamsServer{}
	fwd := forward.New(forward.WithTimeout(5 * time.Second))
	s := New(Options{
		Forwarder: fwd,
		Upstreams: func(_, _ netip.AddrPort) ([]netip.AddrPort, bool) {
			us.lookups.Add(1)
			p := us.picked.Load()
			return []netip.AddrPort{p.addr}, p.own
		},
	})
	t.Cleanup(func() {
		s.Close()
		fwd.Close()
	})
	tbl, _ := table.Build(&model.Snapshot{
		Services: []model.Service{{Namespace: "default", Name: "out", ExternalName: "out.example"}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "default", Name: "a", Hosts: []string{"address.internal"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}},
		},
	}, table.Options{})
	s.SetTable(tbl)
	udp, tcp := listenPair(t, "127.0.0.1:0")
	go s.ServeUDP(udp)
	go s.ServeTCP(tcp)
	us.addr = udp.LocalAddr().String()
	return us
}

// pick has the lookup answer addr from now on: the pod's own nameserver,
// or not.
func (us *upstreamsServer) pick(addr netip.AddrPort, own bool) {
	us.picked.Store(&upstreamPick{addr, own})
}

func (us *upstreamsServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", us.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// answer is the last address of the reply to name over c (nil: UDP).
func (us *upstreamsServer) answer(t *testing.T, c net.Conn, name string) string {
	t.Helper()
	q := packQuery(t, name, dns.TypeA)
	var r *dns.Msg
	if c != nil {
		r = exchangeTCP(t, c, q)
	} else {
		m := new(dns.Msg)
		if err := m.Unpack(q); err != nil {
			t.Fatal(err)
		}
		var err error
		if r, _, err = (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, us.addr); err != nil {
			t.Fatal(err)
		}
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("%s: %s, %d records; want an address", name, dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	a, ok := r.Answer[len(r.Answer)-1].(*dns.A)
	if !ok {
		t.Fatalf("%s: the last record is %v, want an address", name, r.Answer[len(r.Answer)-1])
	}
	return a.A.String()
}

// TestReleasedPodOnCaptureSlotIsForwarded: a query that arrives on a
// capture slot from a pod whose record says it is not captured (released:
// a socket it connected while captured) gets what its upstream says, over
// UDP and TCP, never the table's answer; a captured pod, and a source
// without a record (the agent's records not read yet), get the table's. On
// an address that is no capture slot, asked directly, a released pod gets
// the table's too.
func TestReleasedPodOnCaptureSlotIsForwarded(t *testing.T) {
	const vip, marker = "198.51.100.1", "203.0.113.7"
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t, "address.internal. 300 IN A "+marker)).Addr
	captured, released, unrecorded := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "unrecorded", IPs: []netip.Addr{unrecorded}}})
	pods.Attach(podcache.Attachment{Namespace: "default", Name: "captured", NetnsCookie: 1, IPs: []netip.Addr{captured}, Captured: true})
	pods.Attach(podcache.Attachment{Namespace: "default", Name: "released", NetnsCookie: 2, IPs: []netip.Addr{released}, Reason: "released"})

	slotUDP, slotTCP := listenPair(t, "127.0.0.1:0")
	directUDP, directTCP := listenPair(t, "127.0.0.1:0")
	slot := addrPortOf(slotUDP.LocalAddr())
	fwd := forward.New(forward.WithTimeout(5 * time.Second))
	s := New(Options{
		Pods:        pods,
		Forwarder:   fwd,
		Upstreams:   func(_, _ netip.AddrPort) ([]netip.AddrPort, bool) { return []netip.AddrPort{up}, true },
		CaptureSlot: func(local netip.AddrPort) bool { return local == slot },
	})
	t.Cleanup(func() {
		s.Close()
		fwd.Close()
	})
	tbl, _ := table.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "default", Name: "a", Hosts: []string{"address.internal"}, Addresses: []netip.Addr{netip.MustParseAddr(vip)}},
	}}, table.Options{})
	s.SetTable(tbl)
	for _, c := range []*net.UDPConn{slotUDP, directUDP} {
		go s.ServeUDP(c)
	}
	for _, ln := range []*net.TCPListener{slotTCP, directTCP} {
		go s.ServeTCP(ln)
	}

	for _, tt := range []struct {
		name string
		from netip.Addr
		at   *net.UDPConn
		want string
	}{
		{"captured pod, capture slot", captured, slotUDP, vip},
		{"released pod, capture slot", released, slotUDP, marker},
		{"pod without a record, capture slot", unrecorded, slotUDP, vip},
		{"released pod, asking the resolver directly", released, directUDP, vip},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			t.Run(tt.name+", "+proto, func(t *testing.T) {
				c := dnsClientFrom(tt.from, proto)
				m := new(dns.Msg).SetQuestion("address.internal.", dns.TypeA)
				r, _, err := c.Exchange(m, tt.at.LocalAddr().String())
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Answer) != 1 {
					t.Fatalf("%s: %s, %v; want one address", proto, dns.RcodeToString[r.Rcode], r.Answer)
				}
				if a, ok := r.Answer[0].(*dns.A); !ok || a.A.String() != tt.want {
					t.Errorf("answer %v, want %s", r.Answer[0], tt.want)
				}
			})
		}
	}
}

// dnsClientFrom is a client that asks over proto ("udp" or "tcp") from
// the address from, giving up after 5 s.
func dnsClientFrom(from netip.Addr, proto string) *dns.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if proto == "udp" {
		d.LocalAddr = &net.UDPAddr{IP: from.AsSlice()}
	} else {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	return &dns.Client{Net: proto, Dialer: d, Timeout: 5 * time.Second}
}
