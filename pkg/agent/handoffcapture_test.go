//go:build linux

package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// captureNode is a node namespace with a bpf filesystem and a cgroup of
// its own, where capture agents replace each other.
type captureNode struct {
	node  *testenv.Node
	bpffs string
	cg    string
}

func newCaptureNode(t *testing.T) *captureNode {
	t.Helper()
	testenv.RequireRoot(t)
	return &captureNode{node: testenv.NewNode(t), bpffs: filepath.Join(testenv.NewBPFFS(t), "ztdns"), cg: testenv.NewCgroup(t).Path}
}

// start runs a capture agent on a thread in the node's namespace, as
// `ztdns agent` runs in the host's, and stops it when the test ends. Each
// of extra adjusts its Config first.
func (n *captureNode) start(t *testing.T, src source.Source, socket string, listen []netip.AddrPort, upstream netip.AddrPort,
	extra ...func(*Config)) (*Agent, *testAgent) {
	t.Helper()
	cfg := Config{
		Source:    src,
		Listen:    listen,
		Upstreams: []netip.AddrPort{upstream},
		Socket:    socket,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Capture:   &CaptureConfig{BPFFS: n.bpffs, Cgroup: n.cg},
	}
	for _, f := range extra {
		f(&cfg)
	}
	a, err := newAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- n.node.Do(func() error { return a.run(ctx) }) }()
	t.Cleanup(ta.stop)
	return a, ta
}

// TestHandoffKeepsCaptureFresh: an old agent that drains a slow forward
// for longer than the heartbeat's staleness bound, as it hands over, keeps
// capture on throughout: the programs never fail open, from before the
// hand-over until the successor beats on its own. (Before: the old agent
// stopped beating before it drained, the successor began only after the
// drain and its reconcile, and every pod on the node failed open
// mid-upgrade.)
func TestHandoffKeepsCaptureFresh(t *testing.T) {
	n := newCaptureNode(t)
	dir, socket, _, _ := handoffSetup(t)
	const slow = 4500 * time.Millisecond // more than the 3 s staleness bound
	// The agent forwards from the host's namespace (its goroutines run
	// there; only its listening sockets are bound in the node's).
	upstream := dnstest.Start(t, "127.0.0.1:0", dnstest.Delayed(slow, dnstest.Zone{}))
	up := upstream.Addr
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")}
	forwardLong := func(c *Config) { c.ForwardTimeout = 2 * slow } // the resolver's own bound, 5 s, is the shorter
	old, oldTA := n.start(t, configdir.New(dir), socket, listen, up, forwardLong)
	waitServedBy(t, socket, oldTA, up)
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		if open, err := old.capture.r.FailingOpen(); err != nil || open {
			return fmt.Errorf("the old agent's capture is failing open (%v)", err)
		}
		return nil
	})

	// The successor takes the sockets but holds its first table back: the
	// slow query goes to the old agent, which must drain it on hand-over.
	src := gated(configdir.New(dir))
	upNew := netip.MustParseAddrPort("127.0.0.1:9") // names the successor in its status
	succ, succTA := n.start(t, src, socket, listen, upNew, forwardLong)
	<-src.started
	answered := make(chan error, 1)
	go func() {
		answered <- n.node.Do(func() error {
			c := &dns.Client{Net: "udp", Timeout: 3 * slow, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
			m := new(dns.Msg)
			m.SetQuestion("slow.example.com.", dns.TypeA)
			_, _, err := c.Exchange(m, listen[0].String())
			return err
		})
	}()
	// The query is in the old agent's hands once the upstream has it.
	testenv.Eventually(t, 10*time.Second, "the slow query forwarded", func() bool { return upstream.Queries("slow.example.com") > 0 })
	close(src.open)

	// Watch the heartbeat as the programs judge it (the map both agents
	// share) until the successor has served on its own for longer than
	// the staleness bound.
	var failedOpen []time.Duration
	start := time.Now()
	var servedAt time.Time
	for servedAt.IsZero() || time.Since(servedAt) < 2*slow {
		if open, err := succ.capture.r.FailingOpen(); err != nil {
			t.Fatal(err)
		} else if open {
			failedOpen = append(failedOpen, time.Since(start))
		}
		select {
		case err := <-answered:
			if err != nil {
				t.Errorf("the slow query sent before the hand-over: %v", err)
			}
			servedAt = time.Now()
		default:
		}
		time.Sleep(50 * time.Millisecond)
		if time.Since(start) > time.Minute {
			t.Fatal("the slow query was not answered within a minute")
		}
	}
	waitServedBy(t, socket, succTA, upNew)
	if len(failedOpen) > 0 {
		t.Errorf("capture failed open during the hand-over (%d times, first %v after the successor got its table)", len(failedOpen), failedOpen[0])
	}
}
