//go:build linux

package agent

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestHungResolverFailsOpen: a resolver that stops reading a socket (its
// answer path hung on a query, as a deadlock there would hang it), the
// agent alive, has captured pods fail open: the agent holds its heartbeat
// back, `ztdns status` says capture fails open and why, and the pod's own
// nameserver answers it, within the staleness bound and a beat of queries
// waiting unread (logged here, not a bound of the test). Once the resolver
// reads again, the agent beats and captures again. (Before: the agent beat
// on whatever the resolver did, and every captured pod's queries went to
// a resolver that never answered, until the liveness probe restarted the
// agent, 20-35 s later.)
func TestHungResolverFailsOpen(t *testing.T) {
	n := newCaptureNode(t)
	// The pod's own nameserver, on the node, answers other than ztdns.
	const ownAnswer = "203.0.113.77"
	n.node.ServeNameserver(t, netip.MustParseAddr("10.96.0.10"), dnstest.ZoneOf(t, "address.internal. 300 IN A "+ownAnswer))
	var log testenv.Log
	c := n.startCapturing(t, func(cfg *Config) { cfg.Logger = slog.New(slog.NewTextHandler(&log, nil)) })
	stallsBefore := testutil.ToFloat64(metricResolverStalls)

	release := make(chan struct{})
	unhang := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unhang) // before the agent stops (cleanups run last first)
	entered := make(chan struct{}, 1)
	hang := func() {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}
	c.a.dataplane.hang.Store(&hang)

	// A miss hangs the socket of the pod's nameserver's slot: the
	// queries behind it wait unread.
	miss := c.pod.Command(t.Context(), n.cg, "dig", "+time=30", "+tries=1", "@10.96.0.10", "miss.example")
	if err := miss.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { miss.Process.Kill(); miss.Wait() })
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the miss never reached the resolver")
	}
	hungAt := time.Now()

	// The pod asks on: first into the hung socket, unanswered, then,
	// failed open, its own nameserver.
	dig := func() (string, error) {
		out, err := c.pod.Output(t, n.cg, 20*time.Second, "dig", "+short", "+time=1", "+tries=1", "@10.96.0.10", "address.internal")
		return strings.TrimSpace(out), err
	}
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		if out, err := dig(); err != nil || out != ownAnswer {
			return fmt.Errorf("the pod is not answered by its own nameserver (%s): %q, %v", ownAnswer, out, err)
		}
		return nil
	})
	t.Logf("failed open %v after the resolver hung", time.Since(hungAt).Round(100*time.Millisecond))
	st := c.status(t)
	t.Logf("status: failing open %v: %s", st.FailingOpen, st.ResolverStalled)
	if !st.FailingOpen || !strings.Contains(st.ResolverStalled, "udp 169.254.") {
		t.Errorf("status while the resolver hangs: failing open %v, resolver stalled %q; want failing open, a UDP resolver address named",
			st.FailingOpen, st.ResolverStalled)
	}
	if got := testutil.ToFloat64(metricResolverStalls) - stallsBefore; got != 1 {
		t.Errorf("ztdns_resolver_stalls_total rose by %v, want 1", got)
	}

	unhang()
	testenv.EventuallyNil(t, 30*time.Second, func() error { return n.askFromPod(t, c.pod) })
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		if st := c.status(t); st.FailingOpen || st.ResolverStalled != "" {
			return fmt.Errorf("status once the resolver reads again: failing open %v, resolver stalled %q", st.FailingOpen, st.ResolverStalled)
		}
		return nil
	})
	for _, line := range []string{"heartbeat held back", "the resolver reads again"} {
		if n := strings.Count(log.String(), line); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", line, n, log.String())
		}
	}
}

// TestStallHeldAtTheBeatAfter: once a beat has seen queries waiting
// unread on a resolver socket whose loop hangs, the next beat is held back
// even when it runs early against the one before: beats are timed by when
// their goroutine runs, and one that ran late (by 280 ms on a loaded test
// machine) followed by one on time are 720 ms apart. (Before: a stall
// counted only from a whole beat on at the default --heartbeat-stale, so
// about every other time, the jitter of two beats at rest, and always
// after a late one, the heartbeat was held back a beat later than the
// README's bound, --heartbeat-stale and a beat.) The beats' times are the
// test's: nothing here waits on the clock.
func TestStallHeldAtTheBeatAfter(t *testing.T) {
	pods := dnstest.NewHangingPods()
	s := resolver.New(resolver.Options{Pods: pods, Limits: quota.Limits{QPS: -1}, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { s.Close() })
	conn, err := resolver.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go s.ServeUDP(conn)
	t.Cleanup(pods.Unhang) // before the server closes: its loop must end
	client, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	c := &dataplane{cfg: CaptureConfig{StaleAfter: redirect.DefaultStaleAfter}, log: slog.New(slog.DiscardHandler), stalled: s.Stalled}
	pods.Hanging.Store(true)
	q := new(dns.Msg).SetQuestion("address.internal.", dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write(wire); err != nil {
		t.Fatal(err)
	}
	pods.WaitHung(t, "the query")
	if _, err := client.Write(wire); err != nil { // waits unread behind the hung one
		t.Fatal(err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the second query queued in the socket", func() bool {
		queued := 0
		rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return queued > 0
	})
	late := time.Now()
	if c.holdBeat(late) {
		t.Fatal("the beat that first sees a query waiting is held back")
	}
	if !c.holdBeat(late.Add(720 * time.Millisecond)) {
		t.Error("the beat after, 720 ms on, is not held back with the query still waiting unread")
	}
	pods.Unhang()
}
