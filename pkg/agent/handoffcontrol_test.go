//go:build linux

package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestHandoffKeepsTheControlSocket: throughout a hand-over, with the old
// agent draining a slow forward, the control socket's path leads to an
// agent: every connection the CNI plugin could make is taken, and every
// status request is answered (by the old agent before, the new one after,
// a request made in between waiting for the new one). (Before: the old
// agent removed the path before it drained, and the new one bound it only
// after its takeover and reconcile; meanwhile the plugin found no socket,
// which it does not try again, and under onAgentUnreachable "allow" the
// pod started uncaptured, under "fail" its ADD failed.)
func TestHandoffKeepsTheControlSocket(t *testing.T) {
	dir, socket, listen, _ := handoffSetup(t)
	const slow = 2 * time.Second
	upstream := dnstest.Start(t, "127.0.0.1:0", dnstest.Delayed(slow, dnstest.Zone{}))
	forwardLong := func(c *Config) { c.ForwardTimeout = 3 * slow }
	startTestAgent(t, dir, socket, listen, upstream.Addr, "", forwardLong)

	// The successor takes the sockets but holds its first table back: the
	// slow query goes to the old agent, which drains it as it hands over.
	src := gated(configdir.New(dir))
	upNew := netip.MustParseAddrPort("127.0.0.1:9") // names the successor in its status
	succ := runTestAgent(t, dir, socket, listen, upNew, "", forwardLong, func(c *Config) { c.Source = src })
	<-src.started
	answered := make(chan error, 1)
	go func() {
		c := &dns.Client{Net: "udp", Timeout: 3 * slow}
		m := new(dns.Msg)
		m.SetQuestion("slow.example.com.", dns.TypeA)
		_, _, err := c.Exchange(m, listen.String())
		answered <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the slow query forwarded", func() bool { return upstream.Queries("slow.example.com") > 0 })

	// Connect, as the plugin does, every few milliseconds; and ask for the
	// status, one request after another, each given all the time it needs.
	p := newSocketPoller()
	t.Cleanup(p.stop)
	p.run(func() error {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err
	})
	client := control.NewClient(socket, time.Minute)
	p.run(func() error { _, err := client.Status(context.Background()); return err })

	close(src.open)
	if err := <-answered; err != nil {
		t.Errorf("the slow query sent before the hand-over: %v", err)
	}
	waitServedBy(t, socket, succ, upNew)
	// A few more of each once the successor serves, then stop.
	after := p.count()
	testenv.Eventually(t, 30*time.Second, "connections and requests after the hand-over", func() bool { return p.count() >= after+10 })
	p.stop()
	made, failures := p.count(), p.failed()
	t.Logf("%d connections and status requests made during the hand-over", made)
	if len(failures) > 0 {
		t.Errorf("%d of %d connections and status requests failed during the hand-over; the first: %s",
			len(failures), made, strings.Join(failures[:min(len(failures), 5)], "; "))
	}
}

// TestHandedOverAgentRestartsWhenItsSuccessorStops: a `helm rollback`
// mid-rollout deletes the new pod while the old one lingers, its agent
// handed over and idle. The old agent notices its successor's end and
// exits with an error saying why; the kubelet restarts its container,
// which serves the node afresh: a captured pod's query is answered, and
// the control socket answers. (Before: the old agent stayed idle, and the
// node had no resolver, no control socket and no heartbeat, its pods
// failing open, until the old pod's liveness probe restarted it.)
func TestHandedOverAgentRestartsWhenItsSuccessorStops(t *testing.T) {
	n := newCaptureNode(t)
	const oldPod = "0d1f0000-0000-4000-8000-00000000000a"
	old := n.startCapturing(t, inPod(oldPod))
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	_, succTA := n.start(t, configdir.New(old.dir), old.socket, old.listen, upNew, inPod("0d1f0000-0000-4000-8000-00000000000b"))
	waitServedBy(t, old.socket, succTA, upNew)
	if err := n.askFromPod(t, old.pod); err != nil {
		t.Fatalf("after the hand-over: %v", err)
	}

	succTA.stopChecked(t, "the new agent") // the rollback deletes the new pod
	err := old.ta.exited(t, "the old agent is still idle a minute after its successor stopped: the node has no resolver")
	t.Logf("the old agent: %v", err)
	if !errors.Is(err, handoff.ErrSuccessorGone) || !strings.Contains(err.Error(), "exits for a fresh start") {
		t.Errorf("the old agent: Run = %v; want an error saying its successor stopped", err)
	}

	// The kubelet restarts the old pod's container.
	_, restarted := n.start(t, configdir.New(old.dir), old.socket, old.listen, old.up, inPod(oldPod))
	waitServedBy(t, old.socket, restarted, old.up)
	testenv.EventuallyNil(t, 10*time.Second, func() error { return n.askFromPod(t, old.pod) })
	if st := old.status(t); !st.Ready {
		t.Errorf("the restarted agent's status: %+v, want ready", st)
	}
}

// TestHandedOverAgentStaysIdleWhileALaterOneServes: agent A handed over to
// B, and B to C (an update while the first one rolls out); when B stops,
// A stays idle, since C serves: a fresh A would take the node from C. C
// serves on.
func TestHandedOverAgentStaysIdleWhileALaterOneServes(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	var logA testenv.Log
	a := startTestAgent(t, dir, socket, listen, up, "", func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logA, nil)) })
	upB, upC := netip.MustParseAddrPort("127.0.0.1:9"), netip.MustParseAddrPort("127.0.0.1:7")
	b := runTestAgent(t, dir, socket, listen, upB, "")
	waitServedBy(t, socket, b, upB)
	c := runTestAgent(t, dir, socket, listen, upC, "")
	waitServedBy(t, socket, c, upC)

	b.stopChecked(t, "B")
	testenv.Eventually(t, 30*time.Second, "A notices that B stopped", func() bool { return logA.Contains("staying idle") })
	select {
	case err := <-a.done:
		a.done <- nil
		t.Fatalf("A exited with C serving: %v", err)
	default:
	}
	waitServedBy(t, socket, c, upC)
	for i := range 8 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("UDP query %d: %v", i, err)
		}
	}
	c.stopChecked(t, "C")
	a.stopChecked(t, "A")
}

// TestAgentServesControlOnlyOnceItCanHandOver: an agent that cannot open
// its hand-off path exits saying so without ever having bound its control
// socket: one that answers status there (ready) can also be asked for its
// sockets. (Before: the control socket was served first and the hand-off
// path opened after; another agent starting in between, a rollback in the
// middle of a rollout, found this one answering, no hand-off listener, and
// bound fresh sockets, refused beside this one: it exited and the kubelet
// restarted it.) The inotify watch sees the order whatever the timing.
func TestAgentServesControlOnlyOnceItCanHandOver(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	// A directory with an entry at the hand-off path: Listen cannot replace it.
	if err := os.MkdirAll(filepath.Join(handoff.Path(socket), "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(in) })
	if _, err := unix.InotifyAddWatch(in, filepath.Dir(socket), unix.IN_CREATE); err != nil {
		t.Fatal(err)
	}

	err = runTestAgent(t, dir, socket, listen, up, "").exited(t, "the agent runs with no hand-off listener")
	t.Logf("Run: %v", err)
	if err == nil || !strings.Contains(err.Error(), "handoff") && !strings.Contains(err.Error(), handoff.Path(socket)) {
		t.Errorf("Run = %v; want an error about the hand-off path", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(in, buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			if name == filepath.Base(socket) {
				t.Errorf("the agent bound its control socket %s before it failed to open its hand-off path", socket)
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// socketPoller runs tries, each in a loop of its own every few
// milliseconds, until stopped, and keeps count of them and of their
// failures.
type socketPoller struct {
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	tries    int
	failures []string
}

func newSocketPoller() *socketPoller { return &socketPoller{done: make(chan struct{})} }

func (p *socketPoller) run(try func() error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			select {
			case <-p.done:
				return
			default:
			}
			err := try()
			p.mu.Lock()
			p.tries++
			if err != nil {
				p.failures = append(p.failures, err.Error())
			}
			p.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
}

// stop ends the loops and waits for them; a second stop does nothing.
func (p *socketPoller) stop() {
	p.stopOnce.Do(func() { close(p.done) })
	p.wg.Wait()
}

func (p *socketPoller) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tries
}

func (p *socketPoller) failed() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.failures)
}
