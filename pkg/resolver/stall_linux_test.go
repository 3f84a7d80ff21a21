//go:build linux

package resolver

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// BenchmarkUDPLoop answers table queries through a socket's real loop
// (ServeUDP), one at a time (a batch per query, as at modest rates) and in
// bursts of a full batch: what the loop's progress count (Stalled) costs
// shows here, if anything.
func BenchmarkUDPLoop(b *testing.B) {
	for _, burst := range []int{1, batchSize} {
		b.Run(map[int]string{1: "single", batchSize: "burst"}[burst], func(b *testing.B) {
			s := fuzzServer(b, rateInKernel)
			b.Cleanup(func() { s.Close() })
			conn, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
			if err != nil {
				b.Fatal(err)
			}
			go s.ServeUDP(conn)
			client, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { client.Close() })
			if err := client.SetReadBuffer(1 << 20); err != nil {
				b.Fatal(err)
			}
			q := query("address.internal.", dns.TypeA, false)
			buf := make([]byte, 1500)
			b.ReportAllocs()
			for b.Loop() {
				for range burst {
					if _, err := client.Write(q); err != nil {
						b.Fatal(err)
					}
				}
				for range burst {
					if _, err := client.Read(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/query")
		})
	}
}

// TestStalledNamesTheSocketsNotRead: a UDP socket whose loop hangs in the
// answer path, with a query waiting behind the one it hangs on, and a TCP
// listener whose accept loop hangs, with a connection waiting, are
// reported stalled once queries have waited for the bound, not before;
// idle sockets never are, however long they stay so; and once the loops
// read again, nothing is, and the queries that waited are answered.
// (Stalled's clock is the caller's: no sleeping for the bound.)
func TestStalledNamesTheSocketsNotRead(t *testing.T) {
	pods := dnstest.NewHangingPods()
	s := fuzzServerWith(t, Options{Limits: rateInKernel, Pods: pods})
	t.Cleanup(func() { s.Close() })
	idle, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close() })
	go s.ServeUDP(idle)
	s2, conn, client := udpServerAndClient(t)
	s2.Close() // its socket served by s instead
	go s.ServeUDP(conn)
	ln, err := ListenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go s.ServeTCP(ln)
	t.Cleanup(pods.Unhang) // before the server closes: its loops must end
	testenv.Eventually(t, 10*time.Second, "the three loops watched", func() bool {
		s.stallMu.Lock()
		defer s.stallMu.Unlock()
		return len(s.progress) == 3
	})

	now := time.Now()
	const after = time.Second
	stalled := func(at time.Duration) []Stall {
		t.Helper()
		return s.Stalled(now.Add(at), after)
	}
	for _, at := range []time.Duration{0, time.Minute, time.Hour} {
		if got := stalled(at); len(got) != 0 {
			t.Fatalf("idle sockets, %v on: stalled %v", at, got)
		}
	}

	// Hang both loops: each is in Lookup with a query, a connection,
	// waiting behind.
	pods.Hanging.Store(true)
	q := query("address.internal.", dns.TypeA, false)
	if _, err := client.Write(q); err != nil {
		t.Fatal(err)
	}
	pods.WaitHung(t, "a query")
	if _, err := client.Write(q); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 0 {
			pods.WaitHung(t, "a connection")
		}
	}
	udpLocal, tcpLocal := addrPortOf(conn.LocalAddr()), addrPortOf(ln.Addr())
	// Looked at, at one time, until both are seen waiting: reported
	// from after on.
	seenAt := now.Add(time.Hour + time.Second)
	testenv.Eventually(t, 10*time.Second, "a query and a connection seen waiting", func() bool {
		if got := stalled(time.Hour + time.Second); len(got) != 0 {
			t.Fatalf("stalled %v as soon as seen", got)
		}
		return s.seenWaiting(seenAt) == 2
	})
	if got := stalled(time.Hour + time.Second + after - time.Millisecond); len(got) != 0 {
		t.Errorf("stalled %v before queries waited for %v", got, after)
	}
	got := stalled(time.Hour + time.Second + after)
	want := []Stall{{Network: "tcp", Local: tcpLocal, Since: seenAt}, {Network: "udp", Local: udpLocal, Since: seenAt}}
	slices.SortFunc(got, func(a, b Stall) int { return strings.Compare(a.Network, b.Network) })
	if !slices.Equal(got, want) {
		t.Errorf("stalled %v, want %v", got, want)
	}

	pods.Unhang()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	for i := range 2 {
		if _, err := client.Read(buf); err != nil {
			t.Fatalf("query %d that waited: %v", i+1, err)
		}
	}
	at := time.Hour + time.Second + after
	testenv.Eventually(t, 10*time.Second, "nothing stalled once the loops read again", func() bool {
		at += after
		return len(stalled(at)) == 0
	})
}

// TestFloodIsNoStall: a socket flooded with queries, its queue never
// empty, is read, so never stalled: a pod must not switch capture off by
// flooding (the agent stops its heartbeat for a stalled socket). Looks
// come a second apart, the heartbeat's pace: closer, a loop the loaded
// machine leaves unscheduled a while (a beat's goroutine runs hundreds of
// ms late there) would fail the test where the agent would see it read.
func TestFloodIsNoStall(t *testing.T) {
	s, conn, _ := udpServerAndClient(t)
	go s.ServeUDP(conn)
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for range 4 {
		c, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		senders.Go(func() {
			q := query("address.internal.", dns.TypeA, false)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.Write(q) // replies left unread: the client's queue overflows, not the server's
			}
		})
	}
	defer senders.Wait()
	defer close(stop)
	now := time.Now()
	seenWaiting := 0
	for i := range 6 {
		if got := s.Stalled(now.Add(time.Duration(i)*time.Second), time.Second/2); len(got) != 0 {
			t.Fatalf("look %d: a flooded socket is stalled: %v", i, got)
		}
		seenWaiting += s.seenWaiting(time.Time{})
		time.Sleep(time.Second)
	}
	if seenWaiting == 0 {
		t.Error("the flood never left a query waiting: no test of a busy socket")
	}
}

// seenWaiting counts the loops Stalled last saw with queries waiting, since
// the time at (since any time, for the zero time).
func (s *Server) seenWaiting(at time.Time) int {
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	n := 0
	for p := range s.progress {
		if !p.waitedSince.IsZero() && (at.IsZero() || p.waitedSince.Equal(at)) {
			n++
		}
	}
	return n
}
