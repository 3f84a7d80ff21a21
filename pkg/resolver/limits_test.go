package resolver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// The per-source limits tested with real sockets on loopback: every
// 127.0.0.0/8 address is a source of its own. Two pods: a flooder and a
// victim, whose queries must all be answered whatever the flooder does.
var (
	flooderIP = netip.MustParseAddr("127.0.0.2")
	victimIP  = netip.MustParseAddr("127.0.0.3")
)

// A name the table answers (the fast path), and a search-list expansion of
// it the table answers through the slow path (a CNAME to the real name);
// a Service's name, which the table answers for every type (a ServiceEntry
// host for A and AAAA only).
const (
	tableName   = "address.internal."
	aliasName   = "address.internal.default.svc.cluster.local."
	serviceName = "web.default.svc.cluster.local."
)

// limitsServer is a Server on one loopback port (UDP and TCP) with two
// pods, each forwarding to an upstream of its own.
type limitsServer struct {
	*Server
	addr netip.AddrPort
	pods *podcache.Cache
	fwd  *forward.Forwarder
}

// startLimitsServer serves with opts; upstreams are the flooder's (also
// every other source's but the victim's) and the victim's nameservers. The forwarder waits for an upstream up to 30 s, so
// a query sent to a silent one stays in flight for the whole test.
func startLimitsServer(t *testing.T, opts Options, flooderUp, victimUp netip.AddrPort, fwdOpts ...forward.Option) *limitsServer {
	t.Helper()
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{
		{Namespace: "flood", Name: "flooder", IPs: []netip.Addr{flooderIP}},
		{Namespace: "default", Name: "victim", IPs: []netip.Addr{victimIP}},
	})
	fwd := forward.New(append([]forward.Option{forward.WithTimeout(30 * time.Second), forward.WithBudget(opts.Budget)}, fwdOpts...)...)
	opts.Pods = pods
	opts.Forwarder = fwd
	opts.Upstreams = func(client, _ netip.AddrPort) ([]netip.AddrPort, bool) {
		if client.Addr() == victimIP {
			return []netip.AddrPort{victimUp}, true
		}
		return []netip.AddrPort{flooderUp}, true // the flooder's, and every other source's
	}
	s := New(opts)
	s.SetTable(limitsTable())

	udp, tcp := listenPair(t, "127.0.0.1:0")
	serveUntilCleanup(t, s, fwd, udp, tcp)
	ls := &limitsServer{Server: s, addr: addrPortOf(udp.LocalAddr()), pods: pods, fwd: fwd}
	// One answer, from an address of its own, says the server reads: its
	// socket has its filter (KernelRate) before the test sends anything.
	ls.ask(t, netip.MustParseAddr("127.0.0.1"), "udp", tableName)
	return ls
}

// limitsTable answers tableName (a ServiceEntry host) and serviceName,
// and the Services more.
func limitsTable(more ...model.Service) *table.Table {
	tbl, _ := table.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "default", Name: "a", Hosts: []string{"address.internal"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}},
	}, Services: append([]model.Service{
		{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}},
	}, more...)}, table.Options{})
	return tbl
}

// serveUntilCleanup serves s on udp and tcp until the test ends, then
// closes s and its forwarder fwd.
func serveUntilCleanup(t *testing.T, s *Server, fwd *forward.Forwarder, udp *net.UDPConn, tcp *net.TCPListener) {
	go s.ServeUDP(udp)
	go s.ServeTCP(tcp)
	t.Cleanup(func() {
		s.Close()
		fwd.Close()
	})
}

// listenPair opens UDP and TCP on one free port of addr, a loopback
// address and port 0 ("127.0.0.1:0", "[::1]:0").
func listenPair(t *testing.T, addr string) (*net.UDPConn, *net.TCPListener) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	udp, tcp, err := bindPair(ap)
	if err != nil && !errors.Is(err, errNoPairPort) && ap.Addr().Is6() {
		testenv.Unavailable(t, "no IPv6 loopback: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return udp, tcp
}

var errNoPairPort = errors.New("no port free for both UDP and TCP")

// bindPair binds ap's address for UDP and for TCP on one port, any; its
// error is ListenUDP's, or errNoPairPort. It does not call t.Fatal: a
// test binding in another namespace calls it on a goroutine of its own.
func bindPair(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	for range 20 { // the TCP port may be taken when the UDP one was free
		udp, err := ListenUDP(ap)
		if err != nil {
			return nil, nil, err
		}
		if tcp, err := ListenTCP(addrPortOf(udp.LocalAddr())); err == nil {
			return udp, tcp, nil
		}
		udp.Close()
	}
	return nil, nil, fmt.Errorf("%s: %w", ap.Addr(), errNoPairPort)
}

// usage is what the resolver counts for the pod at ip.
func (ls *limitsServer) usage(ip netip.Addr) quota.Usage { return ls.PodUsage(ls.pods.Lookup(ip)) }

// silentUpstream is a nameserver that reads every query and never answers;
// it counts the UDP queries it got.
type silentUpstream struct {
	addr     netip.AddrPort
	received atomic.Int64
}

func startSilentUpstream(t *testing.T) *silentUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	u := &silentUpstream{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			u.received.Add(1)
		}
	}()
	return u
}

// liveUpstream answers every A question with 203.0.113.7 (TTL 0).
func liveUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", liveAnswers()).Addr
}

// liveAnswers are liveUpstream's: 203.0.113.7 for every A question,
// 2001:db8::7 for every AAAA (TTL 0).
func liveAnswers() dnstest.Answerer {
	return dnstest.Marker(netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7"))
}

// useUpBytes takes n of the source's bytes of b until the test ends: no
// reply of the source's fits meanwhile.
func useUpBytes(t *testing.T, b *quota.Budget, source *quota.Source, n int) {
	t.Helper()
	if v := b.TryTake(source, n); v != quota.Taken {
		t.Fatalf("could not take the source's %d bytes: %d", n, v)
	}
	t.Cleanup(func() { b.Give(source, n) })
}

func packQuery(t testing.TB, name string, qtype uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = dns.Id()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// holdForwardingSlots takes n slots of the server's forwarding bound, all
// of them when n is its MaxInflight: one query from each of n sources (none
// over its fair share) for a name of ls's flooder upstream, a silent one
// in the tests that call it, so each stays in flight.
func (ls *limitsServer) holdForwardingSlots(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		src := netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)})
		startUDPFlood(t, src, ls.addr).send(t, [][]byte{packQuery(t, fmt.Sprintf("n%d.stuck.example.", i), dns.TypeA)}, 1, 0)
	}
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d forwarding slots taken", n), func() bool { return ls.forwarding.Used() == int64(n) })
}

// ask sends one query from the source address over proto and returns the
// reply, failing the test when none comes.
func (ls *limitsServer) ask(t *testing.T, from netip.Addr, proto, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, err := ls.tryExchange(from, proto, m)
	if err != nil {
		t.Error(err)
	}
	return r
}

// tryExchange sends m from the source address over proto and returns the
// reply.
func (ls *limitsServer) tryExchange(from netip.Addr, proto string, m *dns.Msg) (*dns.Msg, error) {
	r, _, err := dnsClientFrom(from, proto).Exchange(m, ls.addr.String())
	if err != nil {
		return nil, fmt.Errorf("%s query %v from %s: %w", proto, m.Question, from, err)
	}
	return r, nil
}

// askVictim has the victim ask table names, a search-list expansion (the
// slow path, still local) and a name its upstream answers, over UDP and TCP,
// rounds times; every answer must be right.
func (ls *limitsServer) askVictim(t *testing.T, rounds int) {
	t.Helper()
	for range rounds {
		for _, proto := range []string{"udp", "tcp"} {
			for name, want := range map[string]string{tableName: "198.51.100.1", aliasName: "198.51.100.1", "who.example.": "203.0.113.7"} {
				r := ls.ask(t, victimIP, proto, name)
				if r == nil {
					continue
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || !strings.Contains(r.Answer[len(r.Answer)-1].String(), want) {
					t.Errorf("victim's %s query for %s: %s %v, want %s", proto, name, dns.RcodeToString[r.Rcode], r.Answer, want)
				}
			}
		}
	}
}

// udpFlood sends queries from a socket bound to from, keeping at most
// window of them unanswered beyond stuck (queries expected never to be
// answered), and counts the replies by rcode as they come.
type udpFlood struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	rcodes  map[int]int
	replies int
	got     chan struct{}
}

func startUDPFlood(t *testing.T, from netip.Addr, to netip.AddrPort) *udpFlood {
	t.Helper()
	network := "udp4"
	if from.Is6() {
		network = "udp6"
	}
	conn, err := net.DialUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	return newUDPFlood(t, conn)
}

// newUDPFlood counts the replies conn reads, closed when the test ends.
func newUDPFlood(t *testing.T, conn *net.UDPConn) *udpFlood {
	t.Cleanup(func() { conn.Close() })
	f := &udpFlood{conn: conn, rcodes: map[int]int{}, got: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			f.mu.Lock()
			f.rcodes[m.Rcode]++
			f.replies++
			f.mu.Unlock()
			select {
			case f.got <- struct{}{}:
			default:
			}
		}
	}()
	return f
}

func (f *udpFlood) answered() (int, map[int]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rc := map[int]int{}
	for k, v := range f.rcodes {
		rc[k] = v
	}
	return f.replies, rc
}

// send sends every query, never more than stuck+window unanswered.
func (f *udpFlood) send(t *testing.T, queries [][]byte, stuck, window int) {
	t.Helper()
	for i, q := range queries {
		for {
			if n, _ := f.answered(); i-n < stuck+window {
				break
			}
			select {
			case <-f.got:
			case <-time.After(30 * time.Second):
				t.Fatalf("flood stalled after %d of %d queries", i, len(queries))
			}
		}
		if _, err := f.conn.Write(q); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFloodOfForwardedNamesLeavesOthersAnswered: one pod floods unique
// names that go to its nameserver, which never answers. It may have
// Limits.Forwarding of them in flight; every other one gets SERVFAIL at
// once, and the other pod's table names, search-list expansions and
// forwarded names are all answered, during the flood and after.
func TestFloodOfForwardedNamesLeavesOthersAnswered(t *testing.T) {
	const perPod, flood = 16, 2000
	silent := startSilentUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: perPod}, MaxInflight: 64}, silent.addr, liveUpstream(t))

	f := startUDPFlood(t, flooderIP, ls.addr)
	queries := make([][]byte, flood)
	for i := range queries {
		queries[i] = packQuery(t, fmt.Sprintf("n%d.flood.example.", i), dns.TypeA)
	}
	var wg sync.WaitGroup
	wg.Go(func() { ls.askVictim(t, 5) }) // during the flood
	f.send(t, queries, perPod, 64)
	wg.Wait()
	testenv.Eventually(t, 30*time.Second, "the flooder's queries beyond its share are answered", func() bool {
		n, _ := f.answered()
		return n == flood-perPod
	})
	ls.askVictim(t, 2) // while the flooder holds its share

	_, rcodes := f.answered()
	if rcodes[dns.RcodeServerFailure] != flood-perPod {
		t.Errorf("flooder's replies by rcode %v, want %d SERVFAIL", rcodes, flood-perPod)
	}
	if u := ls.usage(flooderIP); u.Forwarding != perPod || u.ForwardRefused != flood-perPod {
		t.Errorf("flooder's usage %+v, want %d forwarding and %d refused", u, perPod, flood-perPod)
	}
	// Nothing refused, and nothing held once its last TCP connection ends.
	testenv.Eventually(t, 30*time.Second, "the victim holds nothing and was refused nothing", func() bool { return ls.usage(victimIP) == quota.Usage{} })
	testenv.Eventually(t, 30*time.Second, "the silent upstream got the flooder's share", func() bool { return silent.received.Load() >= perPod })
	if got := silent.received.Load(); got != perPod {
		t.Errorf("the flooder's nameserver got %d queries, want its share of %d", got, perPod)
	}
}

// TestLocalAnswersDoNotWaitForForwarding: with every forwarded slot of the
// server taken by queries stuck on a silent upstream, names the table
// answers, on the fast path and the slow one, are still answered; forwarded
// ones get SERVFAIL at once.
func TestLocalAnswersDoNotWaitForForwarding(t *testing.T) {
	const slots = 8
	silent := startSilentUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: -1}, MaxInflight: slots}, silent.addr, silent.addr)

	// The server's slots all taken.
	ls.holdForwardingSlots(t, slots)
	f := startUDPFlood(t, flooderIP, ls.addr)
	var queries [][]byte
	for i := range 10 {
		queries = append(queries, packQuery(t, fmt.Sprintf("n%d.flood.example.", i), dns.TypeA))
	}
	f.send(t, queries, 0, 64)
	testenv.Eventually(t, 30*time.Second, "the queries over the server's bound are answered", func() bool {
		n, _ := f.answered()
		return n == 10
	})
	for _, proto := range []string{"udp", "tcp"} {
		for _, name := range []string{tableName, aliasName} {
			if r := ls.ask(t, victimIP, proto, name); r != nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0) {
				t.Errorf("%s query for %s with every forwarding slot taken: %s %v, want an answer", proto, name, dns.RcodeToString[r.Rcode], r.Answer)
			}
		}
		if r := ls.ask(t, victimIP, proto, "who.example."); r != nil && r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s query for a forwarded name with every slot taken: %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
		}
	}
}

// TestIdleTCPConnectionsFromOneSource: one pod opens thousands of TCP
// connections and sends nothing. It keeps Limits.TCPConns of them; the rest
// are closed at once, and the other pod's TCP queries are answered.
func TestIdleTCPConnectionsFromOneSource(t *testing.T) {
	const perPod, flood = 32, 3000
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, TCPConns: perPod}, TCPMaxConns: 256, TCPIdleTimeout: time.Hour},
		liveUpstream(t), liveUpstream(t))
	before := testutil.ToFloat64(metricTCPRejected.source)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: flooderIP.AsSlice()}}
	for i := range flood {
		c, err := d.Dial("tcp4", ls.addr.String())
		if errors.Is(err, syscall.ECONNRESET) {
			continue // refused so fast that the connect saw it
		}
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
	}
	testenv.Eventually(t, 30*time.Second, "every connection was accepted or refused", func() bool {
		u := ls.usage(flooderIP)
		return u.TCPConns+int(u.TCPRefused) == flood
	})
	if u := ls.usage(flooderIP); u.TCPConns != perPod || u.TCPRefused != flood-perPod {
		t.Errorf("flooder's usage %+v, want %d open and %d refused", u, perPod, flood-perPod)
	}
	if got := testutil.ToFloat64(metricTCPRejected.source) - before; got != flood-perPod {
		t.Errorf("ztdns_resolver_tcp_rejected_total{limit=source} rose by %v, want %d", got, flood-perPod)
	}
	ls.askVictim(t, 10)
}

// TestIdleTimeoutShortensUnderPressure: connections that went idle while
// few were open are closed soon after the server fills up, long before the
// idle timeout, and new clients are served.
func TestIdleTimeoutShortensUnderPressure(t *testing.T) {
	const maxConns = 40
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, TCPConns: -1}, TCPMaxConns: maxConns, TCPIdleTimeout: 10 * time.Minute},
		liveUpstream(t), liveUpstream(t))
	// Ten connections that each get an answer and then go idle.
	var early []net.Conn
	for range 10 {
		c := ls.dialFrom(t, flooderIP)
		exchangeTCP(t, c, packQuery(t, tableName, dns.TypeA))
		early = append(early, c)
	}
	// Three quarters of the bound open (from sources of five connections
	// each, none over its fair share): idle connections get a hundredth
	// of the timeout (6 s of ten minutes) from when they went idle...
	for i := range maxConns*3/4 - 10 {
		ls.dialFrom(t, netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i/5)}))
	}
	closed := make(chan int, len(early))
	for i, c := range early {
		go func() {
			c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			_, err := c.Read(make([]byte, 1))
			if errors.Is(err, io.EOF) {
				closed <- i
			} else {
				closed <- -1
			}
		}()
	}
	// ...and the server closes them within two minutes where ten were
	// configured.
	for range early {
		if i := <-closed; i < 0 {
			t.Errorf("an idle connection was not closed by the server under pressure")
		}
	}
	ls.askVictim(t, 1)
}

// exchangeTCP writes one framed query and reads one framed reply.
func exchangeTCP(t *testing.T, c net.Conn, q []byte) *dns.Msg {
	t.Helper()
	if err := dnstest.WriteTCP(c, q); err != nil {
		t.Fatal(err)
	}
	r, err := readTCPReply(c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readTCPReply(c net.Conn) (*dns.Msg, error) {
	b, err := dnstest.ReadTCP(c)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	return m, m.Unpack(b)
}

// TestRateLimitPerSource: a source over its rate has its UDP queries dropped
// and its TCP queries REFUSED; each source (a pod, or an address that is
// no pod) has a rate of its own; the refusals are counted per pod and in
// the metric. The clock is the test's, so the counts are exact.
func TestRateLimitPerSource(t *testing.T) {
	const qps, burst = 10, 20
	var clock atomic.Int64 // the test's: ns since 1970
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: qps, Burst: burst}, Now: now}, liveUpstream(t), liveUpstream(t))
	before := testutil.ToFloat64(metricQueries.rateLimited)

	f := startUDPFlood(t, flooderIP, ls.addr)
	send := func(n int) {
		for range n {
			if _, err := f.conn.Write(packQuery(t, tableName, dns.TypeA)); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(burst + 10)
	testenv.Eventually(t, 30*time.Second, "the burst answered and the rest dropped", func() bool {
		n, _ := f.answered()
		return n == burst && ls.usage(flooderIP).RateLimited == 10
	})
	clock.Add(int64(time.Second))
	send(qps + 5)
	testenv.Eventually(t, 30*time.Second, "a second's worth answered and the rest dropped", func() bool {
		n, _ := f.answered()
		return n == burst+qps && ls.usage(flooderIP).RateLimited == 15
	})
	if _, rcodes := f.answered(); rcodes[dns.RcodeSuccess] != burst+qps {
		t.Errorf("flooder's UDP replies by rcode %v, want %d NOERROR", rcodes, burst+qps)
	}

	// Over TCP, from an address that is no pod: REFUSED past the burst.
	other := netip.MustParseAddr("127.0.0.4")
	c := ls.dialFrom(t, other)
	var queries [][]byte
	for range burst + 5 {
		queries = append(queries, packQuery(t, tableName, dns.TypeA))
	}
	rcodes := map[int]int{}
	for _, r := range pipelineTCP(t, c, queries, len(queries)) {
		rcodes[r.Rcode]++
	}
	if rcodes[dns.RcodeSuccess] != burst || rcodes[dns.RcodeRefused] != 5 {
		t.Errorf("TCP replies by rcode %v, want %d NOERROR and 5 REFUSED", rcodes, burst)
	}
	if u := ls.unknown.Get(other, 0).Usage(); u.RateLimited != 5 {
		t.Errorf("%s: %d rate-limited, want 5", other, u.RateLimited)
	}

	ls.askVictim(t, 1) // a rate of its own, untouched
	if u := ls.usage(victimIP); u.RateLimited != 0 {
		t.Errorf("victim rate-limited %d times, want 0", u.RateLimited)
	}
	if got := testutil.ToFloat64(metricQueries.rateLimited) - before; got != 10+5+5 {
		t.Errorf("ztdns_resolver_queries_total{outcome=rate_limited} rose by %v, want 20", got)
	}
}

// pipelineTCP sends queries on c, at most window unanswered at a time, and
// returns the replies in the order they came.
func pipelineTCP(t *testing.T, c net.Conn, queries [][]byte, window int) []*dns.Msg {
	t.Helper()
	slots := make(chan struct{}, window)
	go func() {
		for _, q := range queries {
			slots <- struct{}{}
			if dnstest.WriteTCP(c, q) != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	var replies []*dns.Msg
	for range queries {
		r, err := readTCPReply(c)
		if err != nil {
			t.Fatalf("reply %d of %d: %v", len(replies)+1, len(queries), err)
		}
		replies = append(replies, r)
		<-slots
	}
	return replies
}

// txtBytes is the TXT data in r's answer.
func txtBytes(r *dns.Msg) int {
	n := 0
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			for _, s := range txt.Txt {
				n += len(s)
			}
		}
	}
	return n
}

func uniqueTXTQueries(t *testing.T, n int) [][]byte {
	var queries [][]byte
	for i := range n {
		queries = append(queries, packQuery(t, fmt.Sprintf("big%d.example.", i), dns.TypeTXT))
	}
	return queries
}

// TestLargeAnswersKeepTheCacheWithinItsBytes: thousands of unique names with
// large TXT answers over TCP are all answered in full, and the cache never
// holds more than its bytes.
func TestLargeAnswersKeepTheCacheWithinItsBytes(t *testing.T) {
	const cacheBytes, answer, names = 1 << 20, 16 << 10, 2000
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(answer)).Addr
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}}, up, up, forward.WithCacheBytes(cacheBytes))
	c := ls.dialFrom(t, flooderIP)
	queries := uniqueTXTQueries(t, names)
	most := int64(0)
	for batch := range names / 100 {
		for _, r := range pipelineTCP(t, c, queries[batch*100:(batch+1)*100], 8) {
			if r.Rcode != dns.RcodeSuccess || txtBytes(r) != answer {
				t.Fatalf("reply for %s: %s with %d bytes of TXT, want all %d", r.Question[0].Name, dns.RcodeToString[r.Rcode], txtBytes(r), answer)
			}
		}
		_, bytes := ls.fwd.CacheUsage()
		most = max(most, bytes)
	}
	entries, _ := ls.fwd.CacheUsage()
	if most > cacheBytes {
		t.Errorf("the cache held %d bytes, over its bound of %d", most, cacheBytes)
	}
	if entries < cacheBytes/answer/2 {
		t.Errorf("the cache holds %d answers of %d bytes, want it about full (%d bytes)", entries, answer, cacheBytes)
	}
}

// TestInflightBytesAreBounded: large answers asked many at a time over TCP
// hold at most the budget of bytes in flight; those that do not fit get
// SERVFAIL, the others come in full. The budget is less than two answers:
// a reply holds no more than its size while it is read, and with room for
// four the answers on loopback did not always overlap enough to be refused.
func TestInflightBytesAreBounded(t *testing.T) {
	const budget, answer, names = 32 << 10, 16 << 10, 400
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(answer)).Addr
	b := quota.NewBudget(budget, 0)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, Budget: b}, up, up, forward.WithCacheSize(0))
	c := ls.dialFrom(t, flooderIP)
	rcodes := map[int]int{}
	for _, r := range pipelineTCP(t, c, uniqueTXTQueries(t, names), 64) {
		rcodes[r.Rcode]++
		if r.Rcode == dns.RcodeSuccess && txtBytes(r) != answer {
			t.Fatalf("reply for %s: %d bytes of TXT, want all %d", r.Question[0].Name, txtBytes(r), answer)
		}
	}
	t.Logf("replies by rcode %v; peak %d of %d", rcodes, b.Peak(), budget)
	if rcodes[dns.RcodeSuccess] == 0 || rcodes[dns.RcodeServerFailure] == 0 || rcodes[dns.RcodeSuccess]+rcodes[dns.RcodeServerFailure] != names {
		t.Errorf("replies by rcode %v: want answers and SERVFAILs, nothing else", rcodes)
	}
	if b.Peak() > budget {
		t.Errorf("%d bytes of replies held at once, over the budget of %d", b.Peak(), budget)
	}
	testenv.Eventually(t, 30*time.Second, "every byte given back", func() bool { return b.Used() == 0 })
}

// TestRepliesOverTheSourcesBytesAreItsOutcome: a reply waiting to be
// written to its TCP client that does not fit what its pod may hold of
// the budget of replies in flight (its own bound, or its fair share) is
// the pod's outcome, forward_limited; one that does not fit the budget is
// the node's, overload.
func TestRepliesOverTheSourcesBytesAreItsOutcome(t *testing.T) {
	const budget, perSource = 64 << 10, 16 << 10
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(2000)).Addr
	b := quota.NewBudget(budget, perSource)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, Budget: b}, up, up)
	c := ls.dialFrom(t, flooderIP)
	q := packQuery(t, "big.example.", dns.TypeTXT)
	// Now cached: the answers below take bytes only while written.
	if r := exchangeTCP(t, c, q); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("first answer: %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	pod := ls.pods.Lookup(flooderIP).Quota
	for _, tc := range []struct {
		name              string
		holder            *quota.Source // what holds most of the budget meanwhile
		held              int
		limited, overload float64
	}{
		{"the pod at its own bound", pod, perSource - 100, 1, 0},
		{"the budget spent", nil, budget - 100, 0, 1},
	} {
		// The last reply's bytes are given back just after its write,
		// which the client may have read before then.
		testenv.Eventually(t, 30*time.Second, "the last reply's bytes given back", func() bool { return b.Used() == 0 })
		if b.TryTake(tc.holder, tc.held) != quota.Taken {
			t.Fatalf("%s: could not take %d bytes", tc.name, tc.held)
		}
		limited, overload := testutil.ToFloat64(metricQueries.forwardLimited), testutil.ToFloat64(metricQueries.overload)
		refused := ls.usage(flooderIP).BytesRefused
		requests := scrape(t, ls.Collector(), "ztdns_dns_requests_total")
		r := exchangeTCP(t, c, q)
		b.Give(tc.holder, tc.held)
		// The answer is counted as what the client got: a SERVFAIL of
		// ztdns's own (before: the reply it replaced, NOERROR from the
		// cache).
		var servfailNone, others float64
		for k, v := range scrape(t, ls.Collector(), "ztdns_dns_requests_total") {
			if d := v - requests[k]; strings.Contains(k, `rcode="SERVFAIL"`) && strings.Contains(k, `source="none"`) {
				servfailNone += d
			} else {
				others += d
			}
		}
		if servfailNone != 1 || others != 0 {
			t.Errorf("%s: ztdns_dns_requests_total rose by %v SERVFAIL from none and %v others, want 1 and 0", tc.name, servfailNone, others)
		}
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: %s, want SERVFAIL", tc.name, dns.RcodeToString[r.Rcode])
		}
		gotLimited := testutil.ToFloat64(metricQueries.forwardLimited) - limited
		gotOverload := testutil.ToFloat64(metricQueries.overload) - overload
		if gotLimited != tc.limited || gotOverload != tc.overload {
			t.Errorf("%s: forward_limited rose by %v and overload by %v, want %v and %v", tc.name, gotLimited, gotOverload, tc.limited, tc.overload)
		}
		// `ztdns pods` counts the pod's refusals, not the node's.
		if got := ls.usage(flooderIP).BytesRefused - refused; float64(got) != tc.limited {
			t.Errorf("%s: the pod's bytesRefused rose by %d, want %v", tc.name, got, tc.limited)
		}
	}
}

// TestReplyRefusedOnTheConnectionsSource: a TCP connection's replies are
// held as its source's, the one found as it was accepted, and a reply
// refused so is counted on that source, though the address is a pod's
// now (the pod appeared in the pod cache after the connection opened):
// not on the pod, which was refused nothing. Before: the refusal was
// counted on the source looked up again as the reply was refused.
func TestReplyRefusedOnTheConnectionsSource(t *testing.T) {
	const budget, perSource = 64 << 10, 16 << 10
	newcomerIP := netip.MustParseAddr("127.0.0.9")
	b := quota.NewBudget(budget, perSource)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, Budget: b}, liveUpstream(t), liveUpstream(t))
	c := ls.dialFrom(t, newcomerIP)
	// Answered: the connection was accepted, its source the address's
	// among unknown sources.
	if r := exchangeTCP(t, c, packQuery(t, tableName, dns.TypeA)); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("before the pod appeared: %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	conn := ls.unknown.Get(newcomerIP, 0)
	ls.pods.SetSourcePods([]model.Pod{
		{Namespace: "flood", Name: "flooder", IPs: []netip.Addr{flooderIP}},
		{Namespace: "default", Name: "victim", IPs: []netip.Addr{victimIP}},
		{Namespace: "default", Name: "newcomer", IPs: []netip.Addr{newcomerIP}},
	})
	pod := ls.pods.Lookup(newcomerIP).Quota
	if pod == nil || pod == conn {
		t.Fatalf("the pod's source %p, the connection's %p: want one of the pod's own", pod, conn)
	}
	useUpBytes(t, b, conn, perSource) // no reply of the connection's fits now
	// A search-list expansion, the slow path answered from the table, and
	// a name forwarded.
	for i, name := range []string{aliasName, "who.example."} {
		limited := testutil.ToFloat64(metricQueries.forwardLimited)
		if r := exchangeTCP(t, c, packQuery(t, name, dns.TypeA)); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s, the connection's source full: %s, want SERVFAIL", name, dns.RcodeToString[r.Rcode])
		}
		if got := conn.Usage().BytesRefused; got != uint64(i+1) {
			t.Errorf("%s: the connection's source refused %d replies for its bytes, want %d", name, got, i+1)
		}
		if got := pod.Usage().BytesRefused; got != 0 {
			t.Errorf("%s: the pod refused %d replies for its bytes, want 0: it held nothing", name, got)
		}
		if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; got != 1 {
			t.Errorf("%s: forward_limited rose by %v, want 1", name, got)
		}
	}
}

// TestMemoryPerConnectionAndForward measures what an idle TCP connection
// and a forwarded query waiting for its upstream cost, the two terms of the
// README's memory bound that scale with --max-tcp and --max-forwarding,
// and checks them against the figures the bound uses.
func TestMemoryPerConnectionAndForward(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes memory cost more than it does")
	}
	const n = 500
	silent := startSilentUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, TCPConns: -1, Forwarding: -1}, TCPMaxConns: 2 * n, MaxInflight: 2 * n,
		TCPIdleTimeout: time.Hour}, silent.addr, silent.addr)
	before := held()
	for range n {
		c, err := net.Dial("tcp4", ls.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	testenv.Eventually(t, 30*time.Second, "every connection served", func() bool { return ls.tcpOpen.Used() == n })
	// The test's own end of each connection is in the figure too.
	perConn := (held() - before) / n
	t.Logf("%d bytes per idle TCP connection, both ends", perConn)
	if perConn > tcpConnBound {
		t.Errorf("%d bytes per idle TCP connection, over the %d the memory bound uses", perConn, tcpConnBound)
	}

	f := startUDPFlood(t, flooderIP, ls.addr)
	var queries [][]byte
	for i := range n {
		queries = append(queries, packQuery(t, fmt.Sprintf("n%d.flood.example.", i), dns.TypeA))
	}
	before = held()
	for i := 0; i < n; i += 100 { // in batches the silent upstream's socket holds
		f.send(t, queries[i:i+100], 100, 0)
		testenv.Eventually(t, 30*time.Second, "the batch forwarded", func() bool { return silent.received.Load() == int64(i+100) })
	}
	perForward := (held() - before) / n
	t.Logf("%d bytes per forwarded query waiting for its upstream", perForward)
	if perForward > forwardBound {
		t.Errorf("%d bytes per forwarded query waiting, over the %d the memory bound uses", perForward, forwardBound)
	}
}

// TestMemoryPerConnectionWritingALargeAnswer: connections whose clients
// ask for a large answer of the table (a headless Service of 5,000
// endpoints: 65,535 bytes, more than the kernel takes for a client that
// does not read) and read nothing hold no more than the README's memory
// bound counts per TCP connection, beyond what the budget of replies in
// flight counts: the answer is held as its source's bytes while it is
// written (up to tcpWriteTimeout). Before: it was counted nowhere, some
// 83 KB a connection against the 24 KiB the bound counts.
func TestMemoryPerConnectionWritingALargeAnswer(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes memory cost more than it does")
	}
	old := tcpWriteTimeout
	tcpWriteTimeout = 10 * time.Minute // the answers wait while the test measures
	t.Cleanup(func() { tcpWriteTimeout = old })
	const n = 32 // a pod's connections
	b := quota.NewBudget(64<<20, 0)
	addr := netip.MustParseAddrPort(headlessServer(t, Options{Limits: quota.Limits{QPS: -1, TCPConns: -1}, Budget: b}, 5000))
	q := packQuery(t, "web.ns.svc.cluster.local.", dns.TypeA)

	before := held()
	var clients []netip.AddrPort
	for range n {
		c := slowTCPClient(t, addr)
		if err := dnstest.WriteTCP(c, q); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, addrPortOf(c.LocalAddr()))
	}
	testenv.Eventually(t, 30*time.Second, "every connection writing its answer", func() bool {
		for _, c := range clients {
			if send, _, ok := tcpQueuesIf(t, addr, c); !ok || send == 0 {
				return false
			}
		}
		return true
	})
	heap, budget := held()-before, b.Used()
	perConn := (heap - budget) / n
	t.Logf("%d bytes per TCP connection writing a large answer (both ends), %d of them the budget's", heap/n, budget/n)
	if perConn > tcpBusyConnBound {
		t.Errorf("%d bytes per TCP connection writing a large answer beyond the budget of replies in flight, over the %d the memory bound uses", perConn, tcpBusyConnBound)
	}
}

// held is the heap and stacks in use after a collection.
func held() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// What the README's memory bound counts per idle TCP connection, per
// connection writing its replies, and per forwarded query in flight.
const (
	tcpConnBound     = 16 << 10
	tcpBusyConnBound = 24 << 10
	forwardBound     = 16 << 10
)

// TestLongTCPQueryRefused: a TCP message longer than any query we take
// (maxQuery, the UDP bound) gets FORMERR from its header; the server
// reads the rest off the connection without holding it, and the next
// query on the same connection is answered.
func TestLongTCPQueryRefused(t *testing.T) {
	const announced, rounds = 60000, 50
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}}, liveUpstream(t), liveUpstream(t))
	c := ls.dialFrom(t, flooderIP)
	long := make([]byte, 2+announced)
	binary.BigEndian.PutUint16(long, announced)
	copy(long[2:], packQuery(t, "who.example.", dns.TypeA)) // a query, then junk
	binary.BigEndian.PutUint16(long[2:], 0x4242)            // its ID
	before := testutil.ToFloat64(metricQueries.formerr)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	allocated := ms.TotalAlloc
	c.SetDeadline(time.Now().Add(time.Minute))
	for i := range rounds {
		if _, err := c.Write(long); err != nil {
			t.Fatal(err)
		}
		r, err := readTCPReply(c)
		if err != nil {
			t.Fatalf("reply to long query %d: %v", i, err)
		}
		if r.Id != 0x4242 || !r.Response || r.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply to a %d-octet query: ID %#x %s, want FORMERR for ID 0x4242", announced, r.Id, dns.RcodeToString[r.Rcode])
		}
	}
	runtime.ReadMemStats(&ms)
	if got := ms.TotalAlloc - allocated; got > rounds*announced/4 {
		t.Errorf("%d bytes allocated for %d queries of %d octets: the server reads them into memory", got, rounds, announced)
	}
	if got := testutil.ToFloat64(metricQueries.formerr) - before; got != rounds {
		t.Errorf("ztdns_resolver_queries_total{outcome=formerr} rose by %v, want %d", got, rounds)
	}
	// The connection is still in step: the next query is answered.
	if r := exchangeTCP(t, c, packQuery(t, tableName, dns.TypeA)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("query after the long ones: %s %v, want the table's answer", dns.RcodeToString[r.Rcode], r.Answer)
	}
	// A query of exactly the largest size is taken.
	max := packQuery(t, "who.example.", dns.TypeA)
	max = append(max, make([]byte, maxQuery-len(max))...)
	if r := exchangeTCP(t, c, max); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("a %d-octet query: %s %v, want the upstream's answer", maxQuery, dns.RcodeToString[r.Rcode], r.Answer)
	}
}

// TestLongTCPMessagesChargeTheRate: a TCP message longer than any query
// is charged to its source's rate before it is looked at, as a short one
// is: messages that are no query (QR set) get no answer, and close their
// connection, but still spend the burst, and the pod's next query is
// REFUSED.
func TestLongTCPMessagesChargeTheRate(t *testing.T) {
	const burst, long = 5, 5000
	var clock atomic.Int64 // stands still: the burst never refills
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 1, Burst: burst}, Now: now}, liveUpstream(t), liveUpstream(t))
	dial := func() net.Conn {
		c := ls.dialFrom(t, flooderIP)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c
	}
	msg := make([]byte, 2+long)
	binary.BigEndian.PutUint16(msg, long)
	copy(msg[2:], packQuery(t, "who.example.", dns.TypeA))
	msg[2+2] |= 0x80 // QR: a response, which the resolver does not answer
	for i := range burst {
		c := dial()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if b, err := dnstest.ReadTCP(c); err == nil {
			t.Fatalf("long response %d: a reply of %d octets, want the connection closed", i, len(b))
		}
	}
	if r := exchangeTCP(t, dial(), packQuery(t, tableName, dns.TypeA)); r.Rcode != dns.RcodeRefused {
		t.Errorf("query after %d long responses: %s, want REFUSED (the burst of %d spent)", burst, dns.RcodeToString[r.Rcode], burst)
	}
	if u := ls.usage(flooderIP); u.RateLimited != 1 {
		t.Errorf("%d rate-limited, want 1", u.RateLimited)
	}
}

// startStalledReplies starts a server whose nameserver for the flooder
// sends sent octets of every reply, announced at 64 KiB, then stalls, and
// has the flooder pipeline perPod TXT queries to it over one TCP
// connection, which it returns.
func startStalledReplies(t *testing.T, perPod, sent int, b *quota.Budget) (*limitsServer, *dnstest.StallingServer, net.Conn) {
	t.Helper()
	stalling := dnstest.StartStalling(t, sent)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: perPod}, Budget: b}, stalling.Addr, liveUpstream(t),
		forward.WithCacheSize(0))
	c := ls.dialFrom(t, flooderIP)
	for i := range perPod {
		if err := dnstest.WriteTCP(c, packQuery(t, fmt.Sprintf("n%d.stall.example.", i), dns.TypeTXT)); err != nil {
			t.Fatal(err)
		}
	}
	return ls, stalling, c
}

// TestStalledRepliesHoldOnlyWhatArrived: a pod's nameserver announces 64
// KiB replies over TCP and stalls after a few octets, for as many queries
// as the pod may forward. Announced, they would take the whole budget of
// replies in flight; taken as they arrive, they hold little of it, and
// the other pod's forwarded queries are answered.
func TestStalledRepliesHoldOnlyWhatArrived(t *testing.T) {
	const perPod, sent = 16, 100
	const budget = perPod * 0xFFFF
	b := quota.NewBudget(budget, 0)
	ls, stalling, _ := startStalledReplies(t, perPod, sent, b)
	testenv.Eventually(t, 30*time.Second, "every reply started and stalled, and its first octets read", func() bool {
		return stalling.Stalled() == perPod && b.Used() >= perPod*sent
	})
	t.Logf("%d stalled replies hold %d bytes of the budget of %d", perPod, b.Used(), budget)
	if b.Used() > budget/8 {
		t.Errorf("%d stalled replies of %d octets each hold %d bytes of the budget", perPod, sent, b.Used())
	}
	ls.askVictim(t, 2)
}

// TestCachedAnswersTakeNoForwardingSlot: with every forwarding slot of the
// server held by queries stuck on a silent upstream, a forwarded name the
// cache holds fresh is still answered, over UDP and TCP, and so is an
// ExternalName whose target the cache holds (the CNAME and the target's
// address): the cache's answers are given on the goroutine that read the
// query, taking no slot. They count, and are logged, as answered by the
// cache. A name the cache does not hold still gets SERVFAIL at once: the
// bound is on upstream work. Before, every forwarded name got SERVFAIL
// (overload), cached or not.
func TestCachedAnswersTakeNoForwardingSlot(t *testing.T) {
	const slots = 8
	silent := startSilentUpstream(t)
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t,
		"who.example. 300 IN A 203.0.113.7",
		"out.example. 300 IN A 203.0.113.8",
	)).Addr
	al, log := startAccessLog(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: -1}, MaxInflight: slots, AccessLog: al}, silent.addr, up)
	tbl, _ := table.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "default", Name: "a", Hosts: []string{"address.internal"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}},
	}, Services: []model.Service{
		{Namespace: "default", Name: "out", ExternalName: "out.example"},
	}}, table.Options{})
	ls.SetTable(tbl)
	const external = "out.default.svc.cluster.local."
	for _, name := range []string{"who.example.", external} { // into the cache
		if r := ls.ask(t, victimIP, "udp", name); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s before the slots were taken: %v, want an answer", name, r)
		}
	}

	ls.holdForwardingSlots(t, slots)
	overload := testutil.ToFloat64(metricQueries.overload)
	lines := len(accessLines(t, log, 3)) // startLimitsServer's query, and the two above
	for _, proto := range []string{"udp", "tcp"} {
		for name, want := range map[string]string{"who.example.": "203.0.113.7", external: "203.0.113.8"} {
			r := ls.ask(t, victimIP, proto, name)
			if r == nil {
				continue
			}
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || !strings.Contains(r.Answer[len(r.Answer)-1].String(), want) {
				t.Errorf("%s query for %s, cached, with every forwarding slot taken: %s %v, want %s", proto, name, dns.RcodeToString[r.Rcode], r.Answer, want)
			}
		}
		if r := ls.ask(t, victimIP, proto, "new.example."); r != nil && r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s query for a name not cached with every slot taken: %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
		}
	}
	if got := testutil.ToFloat64(metricQueries.overload) - overload; got != 2 {
		t.Errorf("%v queries refused for the node's bound, want 2: the names not cached", got)
	}
	if ls.forwarding.Used() != slots {
		t.Errorf("%d slots taken, want the %d stuck", ls.forwarding.Used(), slots)
	}
	for _, l := range accessLines(t, log, lines+6)[lines:] {
		want := "cache"
		if l.Name == "new.example." {
			want = "none"
		}
		if l.Answered != want || (want == "cache" && l.Upstream != up.String()) {
			t.Errorf("logged %s over %s: answered=%s upstream=%s, want answered=%s", l.Name, l.Proto, l.Answered, l.Upstream, want)
		}
	}
}

// TestOfflineCacheLookupsBounded: the lookups of the cache one query makes
// on the goroutine that read it are bounded (maxOfflineLookups). With every
// forwarding slot held by queries stuck on a silent nameserver, an autopath
// query whose answer the cache holds at the bound's last lookup is answered
// (no slot), and one from the same pod, whose search list is longer, whose
// answer is the candidate after it, every candidate cached, gets SERVFAIL
// for the node's bound: past the bound it needed a slot, as a miss does
// (before: answered on the reading goroutine, however long the pod made
// its search list).
func TestOfflineCacheLookupsBounded(t *testing.T) {
	const slots = 8
	silent := startSilentUpstream(t)
	var domains []string
	for i := range maxOfflineLookups + 2 {
		domains = append(domains, fmt.Sprintf("d%d.example", i+1))
	}
	// The candidate each query's walk stops at: the bound's last lookup,
	// and the one after it.
	within, past := "within."+domains[maxOfflineLookups-1]+".", "past."+domains[maxOfflineLookups]+"."
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t,
		within+" 300 IN A 203.0.113.1",
		past+" 300 IN A 203.0.113.2",
	)).Addr
	al, log := startAccessLog(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: -1}, MaxInflight: slots, Autopath: true, AccessLog: al}, silent.addr, up)
	ls.pods.SetSourcePods([]model.Pod{{Namespace: "default", Name: "victim", IPs: []netip.Addr{victimIP}, DNSSearches: domains}})
	targets := map[string]string{"within.default.svc.cluster.local.": within, "past.default.svc.cluster.local.": past}
	answered := func(r *dns.Msg, target string) bool {
		return r.Rcode == dns.RcodeSuccess && len(r.Answer) == 2 &&
			r.Answer[0].(*dns.CNAME).Target == target && r.Answer[1].Header().Rrtype == dns.TypeA
	}
	for name, target := range targets { // every candidate into the cache
		if r := ls.ask(t, victimIP, "udp", name); r == nil || !answered(r, target) {
			t.Fatalf("%s before the slots were taken: %v, want a CNAME to %s and its address", name, r, target)
		}
	}
	// Past the bound, the online pass reuses what the offline pass found:
	// each candidate is one hit of the cache.
	const hits, misses = cacheHitsSeries, cacheMissesSeries
	cacheCounts := func() map[string]float64 { return addForwardCache(t, map[string]float64{}) }
	before := cacheCounts()
	if r := ls.ask(t, victimIP, "udp", "past.default.svc.cluster.local."); r == nil || !answered(r, past) {
		t.Fatalf("past.default.svc.cluster.local., cached: %v, want a CNAME to %s and its address", r, past)
	}
	if after := cacheCounts(); after[hits]-before[hits] != maxOfflineLookups+1 || after[misses] != before[misses] {
		t.Errorf("a walk of %d cached candidates: %v cache hits, %v misses; want %d, 0",
			maxOfflineLookups+1, after[hits]-before[hits], after[misses]-before[misses], maxOfflineLookups+1)
	}

	ls.holdForwardingSlots(t, slots)
	overload := testutil.ToFloat64(metricQueries.overload)
	lines := len(accessLines(t, log, 4)) // startLimitsServer's query, and the three above
	for _, proto := range []string{"udp", "tcp"} {
		if r := ls.ask(t, victimIP, proto, "within.default.svc.cluster.local."); r != nil && !answered(r, within) {
			t.Errorf("%s autopath query answered at the %dth cached lookup, with every slot taken: %s %v, want a CNAME to %s and its address",
				proto, maxOfflineLookups, dns.RcodeToString[r.Rcode], r.Answer, within)
		}
		if r := ls.ask(t, victimIP, proto, "past.default.svc.cluster.local."); r != nil && r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s autopath query answered at the %dth cached lookup, with every slot taken: %s %v, want SERVFAIL (it needs a slot)",
				proto, maxOfflineLookups+1, dns.RcodeToString[r.Rcode], r.Answer)
		}
	}
	if got := testutil.ToFloat64(metricQueries.overload) - overload; got != 2 {
		t.Errorf("%v queries refused for the node's bound, want 2: those past the bound on lookups", got)
	}
	if ls.forwarding.Used() != slots {
		t.Errorf("%d slots taken, want the %d stuck", ls.forwarding.Used(), slots)
	}
	for _, l := range accessLines(t, log, lines+4)[lines:] {
		want, limit := "cache", ""
		if strings.HasPrefix(l.Name, "past.") {
			want, limit = "none", limitNode
		}
		if l.Answered != want || l.Limit != limit {
			t.Errorf("logged %s over %s: answered=%s limit=%s, want answered=%s limit=%s", l.Name, l.Proto, l.Answered, l.Limit, want, limit)
		}
	}
}
