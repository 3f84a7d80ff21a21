//go:build linux

package redirect

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/netns"
)

func TestMain(m *testing.M) {
	testenv.RunHelper() // Go-resolver client runs of this binary
	runHelper()         // clients and servers in the test cgroup
	os.Exit(m.Run())
}

// What the test DNS server answers for every name: an answer with these
// can only have come through the redirect, because the pods' nameservers
// exist nowhere.
var (
	marker4 = netip.MustParseAddr("198.51.100.1")
	marker6 = netip.MustParseAddr("2001:db8:ffff::1")
)

// Nameservers that exist nowhere: a query to them that is not redirected
// dies in the node namespace, which has no route for them.
const (
	nowhere4  = "203.0.113.53"
	nowhere4b = "198.51.100.53"
	nowhere6  = "2001:db8::53"
)

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// teeLogger is testLogger that also writes to log, for a test to read.
func teeLogger(tb testing.TB, log *testenv.Log) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.MultiWriter(tb.Output(), log), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// captureEnv is the test topology (README.md, "The two commands") with the
// programs attached to a test cgroup and a test DNS server standing in for
// the resolver on every slot address in the node namespace.
type captureEnv struct {
	node *testenv.Node
	cg   *testenv.Cgroup
	cfg  Config
	r    *Redirector
	dns  *dnstest.Server
}

type envOptions struct {
	staleAfter time.Duration // 0: DefaultStaleAfter
	manualBeat bool          // no background heartbeat
	answer     dnstest.Answerer
	// captureOnly is Config.CaptureNameservers (nil: every destination).
	captureOnly []netip.Prefix
	// socketsPerPod is Config.SocketsPerPod (0: DefaultSocketsPerPod).
	socketsPerPod int
	// log, when set, also gets what the Redirector logs.
	log *testenv.Log
}

func newCaptureEnv(tb testing.TB, opts envOptions) *captureEnv {
	tb.Helper()
	testenv.RequireRoot(tb)
	for _, bin := range []string{"ip", "dig", "getent"} {
		testenv.LookPath(tb, bin)
	}

	node := testenv.NewNode(tb)
	if err := node.Do(func() error {
		_, err := EnsureInterface(testLogger(tb), DefaultInterface, DefaultInterfaceAddrs())
		return err
	}); err != nil {
		tb.Fatalf("resolver interface: %v", err)
	}
	if opts.answer == nil {
		opts.answer = dnstest.Marker(marker4, marker6)
	}
	e := &captureEnv{node: node}
	e.dns = node.StartDNSServer(tb, resolverAddrs(), opts.answer)
	e.cg = testenv.NewCgroup(tb)
	e.cfg = Config{
		BPFFS:      filepath.Join(testenv.NewBPFFS(tb), "ztdns"),
		CgroupPath: e.cg.Path,
		Resolver4:  DefaultResolver4(),
		Resolver6:  DefaultResolver6(),
		StaleAfter: opts.staleAfter,
		Logger:     testLogger(tb),

		CaptureNameservers: opts.captureOnly,
		SocketsPerPod:      opts.socketsPerPod,
	}
	if opts.log != nil {
		e.cfg.Logger = teeLogger(tb, opts.log)
	}
	e.r = mustLoad(tb, e.cfg)
	if !opts.manualBeat {
		keepBeating(tb, e.r)
	}
	return e
}

func resolverAddrs() []netip.AddrPort {
	r4, r6 := DefaultResolver4(), DefaultResolver6()
	return append(r4[:], r6[:]...)
}

// mustLoad loads and closes the Redirector at cleanup.
func mustLoad(tb testing.TB, cfg Config) *Redirector {
	tb.Helper()
	r, err := Load(cfg)
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return r
}

// keepBeating writes the heartbeat every 100 ms until cleanup, the way the
// agent does every second.
func keepBeating(tb testing.TB, r *Redirector) {
	tb.Helper()
	tb.Cleanup(beatUntilStopped(tb, r, 100*time.Millisecond))
}

func beat(tb testing.TB, r *Redirector) {
	tb.Helper()
	if err := r.Heartbeat(); err != nil {
		tb.Fatalf("Heartbeat: %v", err)
	}
}

// beatUntilStopped writes the heartbeat now and every interval until the
// returned stop is called, so that a check meant to run while it is fresh
// does not depend on how fast a loaded machine starts the client.
func beatUntilStopped(tb testing.TB, r *Redirector, interval time.Duration) (stop func()) {
	tb.Helper()
	beat(tb, r)
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := r.Heartbeat(); err != nil {
					tb.Errorf("Heartbeat: %v", err)
					return
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// pod adds an unmarked pod whose resolv.conf lists nameservers.
func (e *captureEnv) pod(tb testing.TB, nameservers ...string) *testenv.Pod {
	tb.Helper()
	return e.node.AddPod(tb, testenv.PodConfig{Nameservers: nameservers})
}

// markedPod adds a pod and marks its network namespace the way the agent
// does: cookie and IPs read from the namespace.
func (e *captureEnv) markedPod(tb testing.TB, flags PodFlags, nameservers ...string) (*testenv.Pod, uint64) {
	tb.Helper()
	p := e.pod(tb, nameservers...)
	return p, e.mark(tb, p, flags)
}

// mark marks a pod's network namespace and returns its cookie.
func (e *captureEnv) mark(tb testing.TB, p *testenv.Pod, flags PodFlags) uint64 {
	tb.Helper()
	cookie, err := netns.Cookie(p.Path())
	if err != nil {
		tb.Fatal(err)
	}
	info := podInfoOf(tb, p.Path())
	info.Flags = flags
	if err := e.r.Mark(cookie, info); err != nil {
		tb.Fatal(err)
	}
	return cookie
}

// podInfoOf is the PodInfo of the network namespace at netnsPath: its
// first IPv4 and IPv6 address.
func podInfoOf(tb testing.TB, netnsPath string) PodInfo {
	tb.Helper()
	addrs, err := netns.Addrs(netnsPath, netns.MaxAddrs)
	if err != nil {
		tb.Fatal(err)
	}
	var p PodInfo
	for _, a := range addrs {
		switch {
		case a.Is4() && !p.IPv4.IsValid():
			p.IPv4 = a
		case a.Is6() && !p.IPv6.IsValid():
			p.IPv6 = a
		}
	}
	return p
}

// slotOf returns the slot whose resolver address a query arrived on.
func (e *captureEnv) slotOf(local netip.AddrPort) int {
	if i := slices.Index(e.cfg.Resolver4[:], local); i >= 0 {
		return i
	}
	return slices.Index(e.cfg.Resolver6[:], local)
}

// reported returns what Pods reports of the pod marked with cookie.
func (e *captureEnv) reported(tb testing.TB, cookie uint64) MarkedPod {
	tb.Helper()
	pods, err := e.r.Pods()
	if err != nil {
		tb.Fatal(err)
	}
	for _, p := range pods {
		if p.NetnsCookie == cookie {
			return p
		}
	}
	tb.Fatalf("netns cookie %d is not marked", cookie)
	return MarkedPod{}
}

func (e *captureEnv) podCounters(tb testing.TB, cookie uint64) PodCounters {
	tb.Helper()
	return e.reported(tb, cookie).Counters
}

func (e *captureEnv) counters(tb testing.TB) Counters {
	tb.Helper()
	c, err := e.r.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// dig runs dig in the netns, inside the test cgroup when cg is set, with
// one short try so that a query that is not redirected fails fast.
func dig(tb testing.TB, ns *testenv.Netns, cg *testenv.Cgroup, args ...string) (string, error) {
	tb.Helper()
	args = append([]string{"+short", "+time=2", "+tries=1"}, args...)
	return ns.Output(tb, cg, 10*time.Second, "dig", args...)
}

// uniqueName returns a fresh query name, so each check finds its own
// queries in the server's log.
func uniqueName(label string) string {
	return testenv.UniqueName(label+"-") + ".ztdns.test"
}

// detachPinnedLink detaches the pinned link of program prog, as `bpftool
// link detach` does: the pin stays, holding a defunct link.
func detachPinnedLink(tb testing.TB, bpffs, prog string) {
	tb.Helper()
	l, err := link.LoadPinnedLink(linkPinPath(bpffs, prog), nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = l.Detach()
	l.Close()
	if err != nil {
		tb.Fatal(err)
	}
}
