//go:build linux

package resolver

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// TestKernelRate: a pod sending far over its rate has the excess dropped in
// the kernel (counted per pod and in the metric), while another pod's
// queries are answered.
func TestKernelRate(t *testing.T) {
	testenv.RequireRoot(t)
	const qps = 100
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: qps, Burst: qps}, KernelRate: true}, liveUpstream(t), liveUpstream(t))
	if ls.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	f := startUDPFlood(t, flooderIP, ls.addr)
	q := packQuery(t, tableName, dns.TypeA)
	stop, stopped := make(chan struct{}), make(chan struct{})
	sent := 0
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			f.conn.Write(q)
			sent++
		}
	}()
	testenv.Eventually(t, 30*time.Second, "the kernel drops the flooder's queries", func() bool { return ls.kernel.drops(flooderIP) > 1000 })
	ls.askVictim(t, 5)
	close(stop)
	<-stopped // a last query of the flood would take the token asked for below

	u := ls.usage(flooderIP)
	if kernel := ls.kernel.drops(flooderIP); u.RateLimited < kernel {
		t.Errorf("flooder's rate-limited count %d leaves out the %d the kernel dropped", u.RateLimited, kernel)
	}
	if u := ls.usage(victimIP); u.RateLimited != 0 {
		t.Errorf("victim rate-limited %d times, want 0", u.RateLimited)
	}
	if got := scrape(t, ls.Collector(), "ztdns_resolver_kernel_rate_limited_total")["ztdns_resolver_kernel_rate_limited_total{}"]; got < 1000 {
		t.Errorf("ztdns_resolver_held_drops_total = %v, want the kernel's drops", got)
	}
	// Within its rate, the flooder is answered again.
	time.Sleep(time.Second / qps)
	before, _ := f.answered()
	if _, err := f.conn.Write(q); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the flooder is answered within its rate", func() bool { n, _ := f.answered(); return n > before })
}

// TestKernelRateBurst: a fresh source sending a burst at once gets exactly
// its burst through the kernel (its next query is a second of rate away);
// the rest is dropped and counted.
func TestKernelRateBurst(t *testing.T) {
	testenv.RequireRoot(t)
	// One token a second: sending the 150 takes far less than that even
	// on a loaded machine (at 100 q/s a send slowed past 10 ms let a
	// 101st through).
	const burst, sent = 100, 150
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 1, Burst: burst}, KernelRate: true}, liveUpstream(t), liveUpstream(t))
	if ls.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	src := netip.MustParseAddr("127.0.0.6") // no pod: an address of its own
	f := startUDPFlood(t, src, ls.addr)
	q := packQuery(t, tableName, dns.TypeA)
	for range sent {
		if _, err := f.conn.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	// Dropped by the kernel, or (a query the kernel let through as the
	// next token came) by the resolver's own check.
	dropped := func() int { return int(ls.kernel.drops(src) + ls.unknown.Get(src, 0).Usage().RateLimited) }
	testenv.Eventually(t, 30*time.Second, "every query answered or dropped", func() bool {
		n, _ := f.answered()
		return n+dropped() == sent
	})
	if n, _ := f.answered(); n != burst || ls.kernel.drops(src) < sent-burst-1 {
		t.Errorf("%d of %d queries sent at once answered, %d dropped in the kernel; want the burst of %d, the rest (but one) in the kernel", n, sent, ls.kernel.drops(src), burst)
	}
}

// TestKernelRateRemembersItsKeysOnEveryCPU: the sources map holds
// kernelRateSources keys besides the free entries each CPU of a common LRU
// map may hold back, so on a node with many CPUs a pod's key is not
// forgotten (and its burst given back) before that many sources were seen.
// Kernels since 6.16 size what a CPU holds back by the map instead; this
// machine's kernel may not show the starvation, so the size is checked.
func TestKernelRateRemembersItsKeysOnEveryCPU(t *testing.T) {
	testenv.RequireRoot(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 1, Burst: 1}, KernelRate: true}, liveUpstream(t), liveUpstream(t))
	if ls.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ls.kernel.sources.MaxEntries(), uint32(kernelRateSources+128*cpus); got < want {
		t.Errorf("the sources map holds %d keys, want at least %d: %d besides 128 for each of %d CPUs", got, want, kernelRateSources, cpus)
	}
}

// TestRateOnASocketWithoutTheFilter: when the kernel's filter is loaded but
// cannot be put on a UDP socket, the resolver applies the rate on that
// socket itself: a source past its burst there is dropped and counted, not
// answered. Its own server: the hook is set before any socket is served.
func TestRateOnASocketWithoutTheFilter(t *testing.T) {
	testenv.RequireRoot(t)
	const qps, burst = 10, 20
	var clock atomic.Int64 // the resolver's rate runs on the test's clock
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	s := New(Options{Limits: quota.Limits{QPS: qps, Burst: burst}, KernelRate: true, Now: now})
	t.Cleanup(func() { s.Close() })
	if s.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	tbl, _ := table.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "default", Name: "a", Hosts: []string{"address.internal"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}},
	}}, table.Options{})
	s.SetTable(tbl)
	s.attachRate = func(*net.UDPConn) error { return errors.New("no filter for this socket (test)") }
	udp, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeUDP(udp)
	before := testutil.ToFloat64(metricQueries.rateLimited)

	f := startUDPFlood(t, flooderIP, addrPortOf(udp.LocalAddr()))
	q := packQuery(t, tableName, dns.TypeA)
	for range burst + 10 {
		if _, err := f.conn.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, "the burst answered and the rest dropped", func() bool {
		n, _ := f.answered()
		return n == burst && s.unknown.Get(flooderIP, 0).Usage().RateLimited == 10
	})
	if kernel := s.kernel.drops(flooderIP); kernel != 0 {
		t.Errorf("the kernel dropped %d of the flooder's queries on a socket without its filter", kernel)
	}
	if got := testutil.ToFloat64(metricQueries.rateLimited) - before; got != 10 {
		t.Errorf("ztdns_resolver_queries_total{outcome=rate_limited} rose by %v, want 10", got)
	}
}

// The dual-stack pod of the tests below: an IPv4 and the IPv6 loopback
// address.
var (
	dualIPv4 = netip.MustParseAddr("127.0.0.7")
	dualIPv6 = netip.IPv6Loopback()
)

// serveIPv6 serves ls on a UDP socket on [::1] too (with the IPv6 filter),
// and returns its address once it answers.
func (ls *limitsServer) serveIPv6(t *testing.T) netip.AddrPort {
	t.Helper()
	udp, err := ListenUDP(netip.MustParseAddrPort("[::1]:0"))
	if err != nil {
		testenv.Unavailable(t, "no IPv6 loopback: %v", err)
	}
	go ls.ServeUDP(udp)
	addr := addrPortOf(udp.LocalAddr())
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(tableName, dns.TypeA)
	if _, _, err := c.Exchange(m, addr.String()); err != nil {
		t.Fatalf("no answer on %s: %v", addr, err)
	}
	return addr
}

// setPods gives the registry the limits server's two pods and more.
func (ls *limitsServer) setPods(more ...model.Pod) {
	ls.pods.SetSourcePods(append([]model.Pod{
		{Namespace: "flood", Name: "flooder", IPs: []netip.Addr{flooderIP}},
		{Namespace: "default", Name: "victim", IPs: []netip.Addr{victimIP}},
	}, more...))
}

// startDualStackPod starts a limits server with the rate in the kernel
// (testenv.Unavailable if its socket filter cannot be loaded), serving on
// [::1] too, with a pod "dual" of two addresses, dualIPv4 and dualIPv6,
// and a flood from each address to the server.
func startDualStackPod(t *testing.T, qps float64, burst int) (ls *limitsServer, f4, f6 *udpFlood) {
	t.Helper()
	ls = startLimitsServer(t, Options{Limits: quota.Limits{QPS: qps, Burst: burst}, KernelRate: true}, liveUpstream(t), liveUpstream(t))
	if ls.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	addr6 := ls.serveIPv6(t)
	ls.setPods(model.Pod{Namespace: "default", Name: "dual", IPs: []netip.Addr{dualIPv4, dualIPv6}})
	return ls, startUDPFlood(t, dualIPv4, ls.addr), startUDPFlood(t, dualIPv6, addr6)
}

// sendAll sends n queries from f at once and waits until each is answered
// or counted as dropped by dropped (which counts from before); it returns
// how many were answered.
func sendAll(t *testing.T, f *udpFlood, n int, dropped func() int) int {
	t.Helper()
	before, _ := f.answered()
	droppedBefore := dropped()
	q := packQuery(t, tableName, dns.TypeA)
	for range n {
		if _, err := f.conn.Write(q); err != nil {
			t.Fatal(err)
		}
	}
	var answered int
	testenv.Eventually(t, 30*time.Second, "every query answered or dropped", func() bool {
		a, _ := f.answered()
		answered = a - before
		return answered+dropped()-droppedBefore >= n
	})
	if d := dropped() - droppedBefore; answered+d != n {
		t.Errorf("%d queries sent: %d answered and %d dropped", n, answered, d)
	}
	return answered
}

// TestKernelRateOnePerPod: a dual-stack pod sending a burst from its IPv4
// and its IPv6 address at once gets one burst in all through the kernel,
// as over TCP, not one per address; its drops are counted once.
func TestKernelRateOnePerPod(t *testing.T) {
	testenv.RequireRoot(t)
	const qps, burst, each = 10, 100, 100
	ls, f4, f6 := startDualStackPod(t, qps, burst)
	q := packQuery(t, tableName, dns.TypeA)
	start := time.Now()
	for range each {
		for _, f := range []*udpFlood{f4, f6} {
			if _, err := f.conn.Write(q); err != nil {
				t.Fatal(err)
			}
		}
	}
	took := time.Since(start)
	answered := func() int { n4, _ := f4.answered(); n6, _ := f6.answered(); return n4 + n6 }
	dropped := func() int { return int(ls.usage(dualIPv4).RateLimited) }
	testenv.Eventually(t, 30*time.Second, "every query answered or dropped", func() bool { return answered()+dropped() >= 2*each })
	// The burst, and what the rate gave while the queries were sent.
	most := burst + 1 + int(took.Seconds()*qps)
	n, d := answered(), dropped()
	t.Logf("%d sent in %v: %d answered, %d dropped", 2*each, took, n, d)
	if n < burst || n > most || n+d != 2*each {
		t.Errorf("%d queries sent at once from the pod's two addresses: %d answered, %d dropped; want its one burst of %d (at most %d), the rest dropped",
			2*each, n, d, burst, most)
	}
	if u4, u6 := ls.usage(dualIPv4), ls.usage(dualIPv6); u4 != u6 {
		t.Errorf("the pod's usage by its IPv4 address %+v, by its IPv6 address %+v", u4, u6)
	}
}

// TestKernelRateRemovedPod: once a pod is gone from the registry, its
// addresses are charged to their own keys again, and an address a new pod
// takes over is charged to the new pod's key: neither inherits the gone
// pod's spent burst.
func TestKernelRateRemovedPod(t *testing.T) {
	testenv.RequireRoot(t)
	const qps, burst = 0.1, 20 // no new token while the test runs
	ls, f4, f6 := startDualStackPod(t, qps, burst)
	dual := ls.pods.Lookup(dualIPv4)
	podDropped := func() int { return int(ls.PodUsage(dual).RateLimited) }

	// The pod spends its burst from IPv4; IPv6 then has nothing left.
	if n := sendAll(t, f4, burst+5, podDropped); n != burst {
		t.Fatalf("%d of %d answered from IPv4, want the burst of %d", n, burst+5, burst)
	}
	if n := sendAll(t, f6, 5, podDropped); n != 0 {
		t.Fatalf("%d of 5 answered from IPv6 after the pod spent its burst from IPv4, want none", n)
	}

	// The pod goes; another takes its IPv4 address.
	ls.setPods(model.Pod{Namespace: "default", Name: "next", IPs: []netip.Addr{dualIPv4}})
	if err := ls.kernel.podAddrs.Lookup(dualIPv6.As16(), new([16]byte)); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the kernel's pod map still has the gone pod's IPv6 address (lookup: %v)", err)
	}
	ownDropped := func() int { return int(ls.kernel.drops(dualIPv6)) }
	// Its own key has a burst less the one query that found the socket.
	if n := sendAll(t, f6, burst-1, ownDropped); n != burst-1 {
		t.Errorf("%d of %d answered from the gone pod's IPv6 address, want all: it has its own key again", n, burst-1)
	}
	next := ls.pods.Lookup(dualIPv4)
	nextDropped := func() int { return int(ls.PodUsage(next).RateLimited) }
	if n := sendAll(t, f4, burst, nextDropped); n != burst {
		t.Errorf("%d of %d answered from the address a new pod took over, want all: the new pod's burst", n, burst)
	}
	if u := ls.PodUsage(next); u.RateLimited != 0 {
		t.Errorf("the new pod has %d rate-limited queries, the gone pod's", u.RateLimited)
	}
}

// TestMaxPodsMatchesTheHeader: the kernel's rate filter has room for the
// pods capture can mark. Reads the header; needs no kernel.
func TestMaxPodsMatchesTheHeader(t *testing.T) {
	if got, want := int64(maxPods), testenv.HeaderDefines(t, "../../bpf/ztdns.h")["ZTDNS_MAX_PODS"]; got != want {
		t.Errorf("maxPods is %d, bpf/ztdns.h's ZTDNS_MAX_PODS %d", got, want)
	}
}

// TestKernelRatePodMapFull: pod addresses past the room of the kernel's
// pod map keep keys of their own (said once in the log), and get their
// pod's key when room is made; an address that moves to another pod gets
// that pod's key.
func TestKernelRatePodMapFull(t *testing.T) {
	testenv.RequireRoot(t)
	defer func(n int) { kernelRatePodAddrs = n }(kernelRatePodAddrs)
	kernelRatePodAddrs = 2
	var log bytes.Buffer
	k, err := newKernelRate(quota.NewRate(10, 10), slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		testenv.Unavailable(t, "cannot load the socket filter: %v", err)
	}
	defer k.Close()
	// Each with its quota, as the pod registry gives every pod.
	a := &podcache.Pod{Namespace: "default", Name: "a", Quota: new(quota.Source)}
	b := &podcache.Pod{Namespace: "default", Name: "b", Quota: new(quota.Source)}
	ip1, ip2, ip3 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.2")
	inMap := func() map[netip.Addr]bool {
		got := map[netip.Addr]bool{}
		var key, value [16]byte
		for it := k.podAddrs.Iterate(); it.Next(&key, &value); {
			got[netip.AddrFrom16(key).Unmap()] = true
		}
		return got
	}
	follow := func(owners map[netip.Addr]*podcache.Pod) {
		k.followPods(func() map[netip.Addr]*podcache.Pod { return owners }, func() map[uint32]*podcache.Pod { return nil })
	}

	follow(map[netip.Addr]*podcache.Pod{ip1: a, ip2: a, ip3: b})
	follow(map[netip.Addr]*podcache.Pod{ip1: a, ip2: a, ip3: b}) // no change: logged once
	if got := inMap(); len(got) != 2 {
		t.Errorf("pod map holds %v, want two of the three addresses", got)
	}
	if n := strings.Count(log.String(), "no room for every pod address"); n != 1 {
		t.Errorf("logged %d times that the map is full, want once:\n%s", n, log.String())
	}
	for _, ip := range []netip.Addr{ip1, ip2, ip3} {
		k.mu.Lock()
		key, pods := k.keyOf(ip)
		k.mu.Unlock()
		if !inMap()[ip] && (pods || key != ip.As16()) {
			t.Errorf("%v is not in the pod map but is charged to %x, not its own key", ip, key)
		}
	}

	// a goes; b takes over its IPv6 address.
	follow(map[netip.Addr]*podcache.Pod{ip2: b, ip3: b})
	if got := inMap(); !got[ip2] || !got[ip3] || got[ip1] {
		t.Errorf("pod map holds %v, want b's two addresses", got)
	}
	k.mu.Lock()
	key2, _ := k.keyOf(ip2)
	key3, _ := k.keyOf(ip3)
	k.mu.Unlock()
	if key2 != key3 || key2 != k.keys[b.Quota] {
		t.Errorf("b's addresses charged to %x and %x, want b's key %x", key2, key3, k.keys[b.Quota])
	}
}

// TestKernelRatePodDropsOfItsLink: the drops the filter charged through a
// pod's link count as the pod's, whether the link has the pod's key or,
// the pod map full, a key of its own (its link key, as the filter charges
// it). Before, the link's key was looked up as a link-local address
// without a zone: the drops on either key were not the pod's.
func TestKernelRatePodDropsOfItsLink(t *testing.T) {
	testenv.RequireRoot(t)
	defer func(n int) { kernelRatePodAddrs = n }(kernelRatePodAddrs)
	kernelRatePodAddrs = 1
	k, err := newKernelRate(quota.NewRate(10, 10), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		testenv.Unavailable(t, "cannot load the socket filter: %v", err)
	}
	defer k.Close()
	a := &podcache.Pod{Namespace: "default", Name: "a", Quota: new(quota.Source)} // known by its link alone
	b := &podcache.Pod{Namespace: "default", Name: "b", Quota: new(quota.Source)}
	ip := netip.MustParseAddr("10.0.0.2")
	const ifindex = 7
	follow := func(owners map[netip.Addr]*podcache.Pod, links map[uint32]*podcache.Pod) {
		k.followPods(func() map[netip.Addr]*podcache.Pod { return owners }, func() map[uint32]*podcache.Pod { return links })
	}
	charge := func(key [16]byte, drops uint64) {
		t.Helper()
		if err := k.sources.Put(key, kernelSource{Drops: drops}); err != nil {
			t.Fatal(err)
		}
	}

	follow(nil, map[uint32]*podcache.Pod{ifindex: a})
	k.mu.Lock()
	own := k.keys[a.Quota]
	k.mu.Unlock()
	charge(own, 3)
	if got := k.podDrops(a); got != 3 {
		t.Errorf("a pod known by its link, 3 drops on its key: podDrops = %d", got)
	}

	// The map's one room taken by b's address first: a's link keeps its
	// own key.
	follow(map[netip.Addr]*podcache.Pod{ip: b}, nil)
	follow(map[netip.Addr]*podcache.Pod{ip: b}, map[uint32]*podcache.Pod{ifindex: a})
	if err := k.podAddrs.Lookup(linkKey(ifindex).As16(), new([16]byte)); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("the link is in the pod map (lookup: %v): nothing tested", err)
	}
	charge(own, 0)
	charge(linkKey(ifindex).As16(), 4)
	if got := k.podDrops(a); got != 4 {
		t.Errorf("a pod's link with no room in the map, 4 drops on the link's key: podDrops = %d", got)
	}
}

// drops is how many datagrams charged to src's key (its pod's, if it has
// one) the filter dropped.
func (k *kernelRate) drops(src netip.Addr) uint64 {
	k.mu.Lock()
	key, _ := k.keyOf(src)
	k.mu.Unlock()
	return k.dropsOf(key)
}

// TestKernelRateDropsNeverDecrease: ztdns_resolver_kernel_rate_limited_total
// keeps the drops of the keys the filter's map forgets, those since the
// last scrape too; Prometheus reads a counter that goes down as a reset
// and takes the whole rest for new drops. A source's datagrams are
// dropped through the filter, its key forgotten, and it is dropped again.
// Before: the drops between a scrape and the eviction were lost.
func TestKernelRateDropsNeverDecrease(t *testing.T) {
	testenv.RequireRoot(t)
	const burst, each = 10, 30
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 0.1, Burst: burst}, KernelRate: true}, liveUpstream(t), liveUpstream(t)) // no new token while the test runs
	if ls.kernel == nil {
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	src := netip.MustParseAddr("127.0.0.6") // no pod: an address of its own
	f := startUDPFlood(t, src, ls.addr)
	q := packQuery(t, tableName, dns.TypeA)
	key, _ := ls.kernel.keyOf(src)
	metric := func() float64 {
		t.Helper()
		return scrape(t, ls.Collector(), "ztdns_resolver_kernel_rate_limited_total")["ztdns_resolver_kernel_rate_limited_total{}"]
	}
	// send sends n queries and waits until the filter has dropped drops
	// charged to src's key in all; want is the drops of every key.
	var want uint64
	send := func(step string, n int, drops uint64) {
		t.Helper()
		want += drops - ls.kernel.drops(src)
		for range n {
			if _, err := f.conn.Write(q); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, 30*time.Second, step+": the filter drops the queries past the burst", func() bool { return ls.kernel.drops(src) >= drops })
		if got := ls.kernel.drops(src); got != drops {
			t.Fatalf("%s: the filter dropped %d of src's queries, want %d", step, got, drops)
		}
	}
	// forget deletes src's key, as the LRU map forgets a key (which it
	// may put off for a key on another CPU's list).
	forget := func() {
		t.Helper()
		if err := ls.kernel.sources.Delete(key); err != nil {
			t.Fatal(err)
		}
	}

	send("a first burst", each, each-burst)
	if got := metric(); got != float64(want) {
		t.Errorf("after the first burst: ztdns_resolver_kernel_rate_limited_total = %v, want %d", got, want)
	}
	send("more since the scrape", each, 2*each-burst)
	forget()
	if got := metric(); got != float64(want) {
		t.Errorf("src forgotten: ztdns_resolver_kernel_rate_limited_total = %v, want %d", got, want)
	}
	// Seen again: a fresh key, with a full burst.
	send("seen again", each, each-burst)
	if got := metric(); got != float64(want) {
		t.Errorf("src seen again: ztdns_resolver_kernel_rate_limited_total = %v, want %d", got, want)
	}
}

// links is a Links whose owners the test sets, telling the server as the
// agent's link owners do.
type links struct {
	mu       sync.Mutex
	owners   map[uint32]*podcache.Pod
	onChange []func()
}

func (l *links) Owner(ifindex uint32) *podcache.Pod { return l.Owners()[ifindex] }

func (l *links) Owners() map[uint32]*podcache.Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.owners)
}

func (l *links) OnChange(f func()) (stop func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onChange = append(l.onChange, f)
	return func() {}
}

func (l *links) set(owners map[uint32]*podcache.Pod) {
	l.mu.Lock()
	l.owners = owners
	fs := slices.Clone(l.onChange)
	l.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// floodIn is startUDPFlood from p's network namespace: from a link-local
// address, its zone p's interface's index.
func floodIn(t *testing.T, p *testenv.Pod, from, to netip.AddrPort) *udpFlood {
	t.Helper()
	var conn *net.UDPConn
	if err := p.Do(func() (err error) {
		conn, err = net.DialUDP("udp6", net.UDPAddrFromAddrPort(from), net.UDPAddrFromAddrPort(to))
		return err
	}); err != nil {
		t.Fatalf("a client in %s from %s: %v", p.Name, from, err)
	}
	return newUDPFlood(t, conn)
}

// TestKernelRateLinkLocalIsItsLink: in the kernel, a pod asking from its
// link-local addresses (fe80::…, through its veth to the node's) and its
// pod IP has one rate: its burst spent from fe80::2, nothing more is
// answered from its pod IP or from fe80::3, and every drop counts as the
// pod's. On a link no pod is behind, two link-local addresses share one
// rate: the link's. Before, the filter knew a link-local source by its
// address alone: each fe80:: address a pod took was a burst and a rate
// more.
func TestKernelRateLinkLocalIsItsLink(t *testing.T) {
	node := testenv.NewNode(t)
	pod := node.AddPod(t, testenv.PodConfig{})
	other := node.AddPod(t, testenv.PodConfig{}) // behind a link no pod is known behind
	nodeLL := netip.MustParseAddr("fe80::1")
	podLL := []netip.Addr{netip.MustParseAddr("fe80::2"), netip.MustParseAddr("fe80::3")}
	for _, p := range []*testenv.Pod{pod, other} {
		node.AddAddr(t, nodeLL.String()+"/64", p.HostVeth)
		for _, a := range podLL {
			p.AddAddr(t, a.String()+"/64", "eth0")
		}
	}

	const burst = 10
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "shop", Name: "web", IPs: []netip.Addr{pod.IPv4, pod.IPv6}}})
	known := pods.Lookup(pod.IPv6)
	owners := &links{}
	fwd := forward.New()
	s := New(Options{Limits: quota.Limits{QPS: 0.01, Burst: burst}, KernelRate: true, Pods: pods, Links: owners, Forwarder: fwd}) // no new token while the test runs
	if s.kernel == nil {
		s.Close()
		fwd.Close()
		testenv.Unavailable(t, "the resolver could not load its socket filter (see the log)")
	}
	s.SetTable(limitsTable())
	port := serveInNode(t, node, s, fwd, netip.MustParseAddrPort("[::]:0")).Port()
	// The link's owner told as the agent finds it, after the server began.
	hostVeth := node.Ifindex(t, pod.HostVeth)
	owners.set(map[uint32]*podcache.Pod{hostVeth: known})

	linkLocal := func(p *testenv.Pod, from netip.Addr) *udpFlood {
		zone := strconv.Itoa(int(p.Ifindex(t, "eth0")))
		return floodIn(t, p, netip.AddrPortFrom(from.WithZone(zone), 0), netip.AddrPortFrom(nodeLL.WithZone(zone), port))
	}
	podIP := floodIn(t, pod, netip.AddrPortFrom(pod.IPv6, 0), netip.AddrPortFrom(pod.Gateway6(), port))
	podLL2, podLL3 := linkLocal(pod, podLL[0]), linkLocal(pod, podLL[1])
	otherLL2, otherLL3 := linkLocal(other, podLL[0]), linkLocal(other, podLL[1])
	// One answer says the socket has its filter, from a source the test
	// asks nothing more of.
	otherIP := floodIn(t, other, netip.AddrPortFrom(other.IPv6, 0), netip.AddrPortFrom(other.Gateway6(), port))
	if n := sendAll(t, otherIP, 1, func() int { return 0 }); n != 1 {
		t.Fatalf("the server does not answer")
	}

	// Every drop of the filter, whatever key it charged.
	dropped := func() int { return int(s.kernel.totalDrops()) }
	if n := sendAll(t, podLL2, burst+5, dropped); n != burst {
		t.Fatalf("%d of %d answered from the pod's fe80::2, want its burst of %d", n, burst+5, burst)
	}
	if n := sendAll(t, podIP, 5, dropped); n != 0 {
		t.Errorf("%d of 5 answered from the pod IP after the pod spent its burst from fe80::2, want none: one rate", n)
	}
	if n := sendAll(t, podLL3, 5, dropped); n != 0 {
		t.Errorf("%d of 5 answered from the pod's fe80::3 after it spent its burst from fe80::2, want none: one rate", n)
	}
	if got := s.PodUsage(known).RateLimited; got != 15 {
		t.Errorf("the pod's rate-limited count is %d, want the 15 the kernel dropped", got)
	}

	// The other link: nobody's, one key for both its addresses.
	if n := sendAll(t, otherLL2, burst+5, dropped); n != burst {
		t.Fatalf("%d of %d answered from fe80::2 on a link no pod is behind, want the burst of %d", n, burst+5, burst)
	}
	if n := sendAll(t, otherLL3, 5, dropped); n != 0 {
		t.Errorf("%d of 5 answered from fe80::3 on the same link after fe80::2 spent its burst, want none: the link's one rate", n)
	}
	if got := s.kernel.drops(podLL[1].WithZone(strconv.Itoa(int(node.Ifindex(t, other.HostVeth))))); got != 10 {
		t.Errorf("the other link's key has %d drops, want the 10 of its two addresses", got)
	}
	if got := s.PodUsage(known).RateLimited; got != 15 {
		t.Errorf("the pod's rate-limited count is %d after another link's drops, want its own 15", got)
	}
}
