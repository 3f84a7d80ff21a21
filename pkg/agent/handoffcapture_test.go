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
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// captureNode is a node namespace with a bpf filesystem and a cgroup of
// its own, where capture agents replace each other.
type captureNode struct {
	node  *testenv.Node
	bpffs string
	cg    *testenv.Cgroup
}

func newCaptureNode(t *testing.T) *captureNode {
	t.Helper()
	testenv.RequireRoot(t)
	return &captureNode{node: testenv.NewNode(t), bpffs: filepath.Join(testenv.NewBPFFS(t), "ztdns"), cg: testenv.NewCgroup(t)}
}

// start runs a capture agent on a thread in the node's namespace, as
// `ztdns agent` runs in the host's, and stops it when the test ends. Each
// of extra adjusts its Config first.
func (n *captureNode) start(t *testing.T, src source.Source, socket string, listen []netip.AddrPort, upstream netip.AddrPort,
	extra ...func(*Config)) (*Agent, *testAgent) {
	t.Helper()
	a := n.newAgent(t, src, socket, listen, upstream, extra...)
	return a, n.run(t, a)
}

// newAgent makes the capture agent start runs.
func (n *captureNode) newAgent(t *testing.T, src source.Source, socket string, listen []netip.AddrPort, upstream netip.AddrPort,
	extra ...func(*Config)) *Agent {
	t.Helper()
	cfg := Config{
		Source:    src,
		Listen:    listen,
		Upstreams: []netip.AddrPort{upstream},
		Socket:    socket,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Capture:   &CaptureConfig{BPFFS: n.bpffs, Cgroup: n.cg.Path},
	}
	for _, f := range extra {
		f(&cfg)
	}
	a, err := newAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// run runs a on a thread in the node's namespace until the test ends.
func (n *captureNode) run(t *testing.T, a *Agent) *testAgent {
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- n.node.Do(func() error { return a.run(ctx) }) }()
	t.Cleanup(ta.stop)
	return ta
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
		if open, err := old.dataplane.r.FailingOpen(); err != nil || open {
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
		if open, err := succ.dataplane.r.FailingOpen(); err != nil {
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

// askFromPod asks the pod's nameserver for address.internal with dig, in
// the programs' cgroup: the query is captured when the pod is marked.
func (n *captureNode) askFromPod(t *testing.T, pod *testenv.Pod) error {
	t.Helper()
	out, err := pod.Output(t, n.cg, 20*time.Second, "dig", "+short", "+time=2", "+tries=1", "@10.96.0.10", "address.internal")
	if err != nil || strings.TrimSpace(out) != "198.51.100.1" {
		return fmt.Errorf("dig: %q %v", out, err)
	}
	return nil
}

// capturing is a capture agent serving on a node (handoffSetup's table and
// upstream) and a pod it captures.
type capturing struct {
	dir, socket string
	up          netip.AddrPort
	listen      []netip.AddrPort
	pod         *testenv.Pod
	a           *Agent
	ta          *testAgent
}

// startCapturing starts a capture agent on the node, captures a pod as
// default/pod once the agent serves, and waits until the pod is answered.
// Each of extra adjusts the agent's Config first.
func (n *captureNode) startCapturing(t *testing.T, extra ...func(*Config)) capturing {
	t.Helper()
	c := capturing{listen: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")}}
	c.dir, c.socket, _, c.up = handoffSetup(t)
	c.pod = n.node.AddPod(t, testenv.PodConfig{Nameservers: []string{"10.96.0.10"}})
	c.a, c.ta = n.start(t, configdir.New(c.dir), c.socket, c.listen, c.up, extra...)
	waitServedBy(t, c.socket, c.ta, c.up)
	if _, err := c.a.captureNetns(control.CaptureRequest{Netns: c.pod.Path(), Namespace: "default", Name: "pod"}); err != nil {
		t.Fatal(err)
	}
	testenv.EventuallyNil(t, 10*time.Second, func() error { return n.askFromPod(t, c.pod) })
	return c
}

// status asks the agent for its status over its control socket, as
// `ztdns status` does.
func (c capturing) status(t *testing.T) control.Status {
	t.Helper()
	st, err := control.NewClient(c.socket, 5*time.Second).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestHandoffToANewCapturePort: a successor whose --capture-port differs
// from the running agent's keeps the programs on the running agent's
// addresses until it serves its own: a captured pod is answered while the
// successor waits for its first table, after the hand-over, and, should
// the successor stop before taking over, by the old agent still. (Before:
// the successor pointed the programs at its port as it started, where
// nothing listened until its first table, and for good if it then
// stopped.)
func TestHandoffToANewCapturePort(t *testing.T) {
	for _, successorServes := range []bool{true, false} {
		name := map[bool]string{true: "successor serves", false: "successor stopped"}[successorServes]
		t.Run(name, func(t *testing.T) {
			n := newCaptureNode(t)
			old := n.startCapturing(t)

			src := gated(configdir.New(old.dir))
			upNew := netip.MustParseAddrPort("127.0.0.1:9")
			_, succTA := n.start(t, src, old.socket, old.listen, upNew, func(c *Config) { c.Capture.Port = redirect.DefaultPort + 1 })
			<-src.started // capture loaded, the first table held back
			if err := n.askFromPod(t, old.pod); err != nil {
				t.Errorf("while the successor waits for its table: %v", err)
			}
			if !successorServes {
				succTA.stopChecked(t, "the stopped successor")
				if err := n.askFromPod(t, old.pod); err != nil {
					t.Errorf("after the successor stopped: %v", err)
				}
				waitServedBy(t, old.socket, old.ta, old.up)
				return
			}
			close(src.open)
			waitServedBy(t, old.socket, succTA, upNew)
			if err := n.askFromPod(t, old.pod); err != nil {
				t.Errorf("after the hand-over: %v", err)
			}
			old.ta.stop()
			if err := n.askFromPod(t, old.pod); err != nil {
				t.Errorf("after the old agent stopped: %v", err)
			}
		})
	}
}

// TestCaptureRestartAfterASuccessorDiedBeforeListening: with capture, the
// agent restarted in place of a successor that died right after the
// hand-over starts afresh beside the old agent (handed over and fenced, its
// programs and maps still open) and captures the pod again. (Before: it
// could not start at all, see TestRestartAfterASuccessorDiedBeforeListening.)
func TestCaptureRestartAfterASuccessorDiedBeforeListening(t *testing.T) {
	n := newCaptureNode(t)
	old := n.startCapturing(t)

	takeOverAndDie(t, old.socket, handoff.Timeouts{})
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	_, succTA := n.start(t, configdir.New(old.dir), old.socket, old.listen, upNew)
	waitServedBy(t, old.socket, succTA, upNew)
	testenv.EventuallyNil(t, 10*time.Second, func() error { return n.askFromPod(t, old.pod) })
	old.ta.stop() // the DaemonSet controller deletes the old pod
	if err := n.askFromPod(t, old.pod); err != nil {
		t.Errorf("after the old agent stopped: %v", err)
	}
}

// plantIncompatiblePods pins, in place of the pods map, one of another
// layout: what a successor built with a changed layout finds. The running
// agent keeps its own map open; only the pin changes.
func (n *captureNode) plantIncompatiblePods(t *testing.T) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.bpffs, "pods")); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: "pods", Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1,
		Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: n.bpffs})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

// TestHandoffWithAnIncompatibleMap: a successor that finds a pinned map of
// another layout (an upgrade changed it) replaces it, and swaps in its
// programs, only once it has taken over: should it stop before, the
// running agent captures on as before, with its programs and its maps;
// once it has, the pod is captured through its own map, pinned in place of
// the other, which holds the pod's mark from the moment its programs are
// attached. (Before: it replaced the map and its programs as it started;
// stopped then, it left the programs reading an empty map, and the running
// agent, ready again, marking pods in one no program read: no pod was
// captured. And later: its programs read the new map empty until its
// reconcile marked the pods again, a few milliseconds for one pod, longer
// the more pods, in which every pod's queries went to its own nameserver.)
func TestHandoffWithAnIncompatibleMap(t *testing.T) {
	for _, successorServes := range []bool{true, false} {
		name := map[bool]string{true: "successor serves", false: "successor stopped"}[successorServes]
		t.Run(name, func(t *testing.T) {
			n := newCaptureNode(t)
			old := n.startCapturing(t)
			cookie, err := netns.Cookie(old.pod.Path())
			if err != nil {
				t.Fatal(err)
			}

			n.plantIncompatiblePods(t)
			src := gated(configdir.New(old.dir))
			upNew := netip.MustParseAddrPort("127.0.0.1:9")
			succ := n.newAgent(t, src, old.socket, old.listen, upNew)
			// What the successor's programs find in their pods map as they
			// are attached: read before the agent goes on.
			type marks struct {
				pods []redirect.MarkedPod
				err  error
			}
			attached := make(chan marks, 1)
			succ.programsSwitched = func() {
				pods, err := succ.dataplane.r.Pods()
				attached <- marks{pods, err}
			}
			succTA := n.run(t, succ)
			<-src.started // capture loaded, the first table held back
			if err := n.askFromPod(t, old.pod); err != nil {
				t.Errorf("while the successor waits for its table: %v", err)
			}
			if !successorServes {
				succTA.stopChecked(t, "the stopped successor")
				waitServedBy(t, old.socket, old.ta, old.up)
				if err := n.askFromPod(t, old.pod); err != nil {
					t.Errorf("after the successor stopped: %v", err)
				}
				return
			}
			close(src.open)
			waitServedBy(t, old.socket, succTA, upNew)
			select {
			case m := <-attached:
				if m.err != nil {
					t.Fatal(m.err)
				}
				if !slices.ContainsFunc(m.pods, func(p redirect.MarkedPod) bool { return p.NetnsCookie == cookie }) {
					t.Errorf("the successor's programs were attached to a pods map without the captured pod (netns cookie %d), which holds %v: "+
						"its queries went to its own nameserver until the successor marked it again", cookie, m.pods)
				}
			default:
				t.Fatal("the successor serves, but never switched the programs to its own")
			}
			testenv.EventuallyNil(t, 10*time.Second, func() error { return n.askFromPod(t, old.pod) })
			old.ta.stop()
			if err := n.askFromPod(t, old.pod); err != nil {
				t.Errorf("after the old agent stopped: %v", err)
			}
			m, err := ebpf.LoadPinnedMap(filepath.Join(n.bpffs, "pods"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.ValueSize() == 4 {
				t.Error("the map of the other layout is still pinned: an agent started next would replace the successor's marks")
			}
		})
	}
}

// TestCaptureSurvivesASuccessorWithoutATable: with capture, a successor
// that gives the hand-over up for want of a table leaves capture on: the
// old agent beats throughout, before, during and long after the exchange,
// and answers a captured pod's query for a ServiceEntry host. (Before: the
// successor took over with no table and never beat, the old agent stopped
// beating as it drained, and once the heartbeat was stale every pod on the
// node failed open.)
func TestCaptureSurvivesASuccessorWithoutATable(t *testing.T) {
	short := handoffTimeouts(handoff.Timeouts{SyncWait: 2 * time.Second})
	n := newCaptureNode(t)
	old := n.startCapturing(t, short)

	src := neverSyncs(old.dir)
	_, succTA := n.start(t, src, old.socket, old.listen, netip.MustParseAddrPort("127.0.0.1:9"), short)
	<-src.started
	// Watch the heartbeat as the programs judge it until the successor has
	// been gone for twice the staleness bound.
	var failedOpen int
	var gaveUp error
	var goneAt time.Time
	deadline := time.Now().Add(time.Minute)
	for goneAt.IsZero() || time.Since(goneAt) < 2*redirect.DefaultStaleAfter {
		if open, err := old.a.dataplane.r.FailingOpen(); err != nil {
			t.Fatal(err)
		} else if open {
			failedOpen++
		}
		if goneAt.IsZero() {
			select {
			case gaveUp = <-succTA.done:
				succTA.done <- nil
				goneAt = time.Now()
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Error("the successor without a table is still running after a minute: it took over")
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if failedOpen > 0 {
		t.Errorf("capture failed open (seen %d times)", failedOpen)
	}
	if !goneAt.IsZero() {
		wantGaveUpError(t, gaveUp)
	}
	if err := n.askFromPod(t, old.pod); err != nil {
		t.Errorf("after the successor gave up: %v", err)
	}
	waitServedBy(t, old.socket, old.ta, old.up)
}
