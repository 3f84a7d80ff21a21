//go:build linux

package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
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
