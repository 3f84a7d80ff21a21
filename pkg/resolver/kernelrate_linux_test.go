//go:build linux

package resolver

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
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
	stop := make(chan struct{})
	sent := 0
	go func() {
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
	eventually(t, "the kernel drops the flooder's queries", func() bool { return ls.kernel.drops(flooderIP) > 1000 })
	ls.askVictim(t, 5)
	close(stop)

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
	eventually(t, "the flooder is answered within its rate", func() bool { n, _ := f.answered(); return n > before })
}

// TestKernelRateBurst: a fresh source sending a burst at once gets exactly
// its burst through the kernel (its next query is 10 ms of rate away);
// the rest is dropped and counted.
func TestKernelRateBurst(t *testing.T) {
	testenv.RequireRoot(t)
	const burst, sent = 100, 150
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 100, Burst: burst}, KernelRate: true}, liveUpstream(t), liveUpstream(t))
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
	eventually(t, "every query answered or dropped", func() bool {
		n, _ := f.answered()
		return n+dropped() == sent
	})
	if n, _ := f.answered(); n != burst || ls.kernel.drops(src) < sent-burst-1 {
		t.Errorf("%d of %d queries sent at once answered, %d dropped in the kernel; want the burst of %d, the rest (but one) in the kernel", n, sent, ls.kernel.drops(src), burst)
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
	eventually(t, "the burst answered and the rest dropped", func() bool {
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
