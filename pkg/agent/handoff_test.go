package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

const manifest = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-address}
spec:
  hosts: [address.internal]
  addresses: [198.51.100.1]
`

type testAgent struct {
	cancel context.CancelFunc
	done   chan error
}

// startTestAgent runs an agent on listen that reads dir and forwards to
// upstream, waits until it is ready and stops it when the test ends. Each
// of extra adjusts its Config before it starts.
func startTestAgent(t *testing.T, dir, socket string, listen netip.AddrPort, upstream netip.AddrPort, metrics string, extra ...func(*Config)) *testAgent {
	t.Helper()
	ta := runTestAgent(t, dir, socket, listen, upstream, metrics, extra...)
	waitReadyWhileRunning(t, socket, ta)
	return ta
}

// runTestAgent is startTestAgent without waiting for readiness.
func runTestAgent(t *testing.T, dir, socket string, listen netip.AddrPort, upstream netip.AddrPort, metrics string, extra ...func(*Config)) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := Config{
		Source:      configdir.New(dir, configdir.WithLogger(log)),
		Listen:      []netip.AddrPort{listen},
		Upstreams:   []netip.AddrPort{upstream},
		Socket:      socket,
		MetricsAddr: metrics,
		Logger:      log,
		// TestRestartLosesNoQuery's load is four clients on one address
		// as fast as they can: no per-source rate limit.
		Limits: quota.Limits{QPS: -1},
	}
	for _, f := range extra {
		f(&cfg)
	}
	ta := &testAgent{cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- Run(ctx, cfg) }()
	t.Cleanup(ta.stop)
	return ta
}

func (ta *testAgent) stop() {
	ta.cancel()
	<-ta.done
	ta.done <- nil // a second stop returns at once
}

// stopChecked is stop, failing the test if Run returned an error; who
// names the agent in the failure.
func (ta *testAgent) stopChecked(t *testing.T, who string) {
	t.Helper()
	ta.cancel()
	if err := <-ta.done; err != nil {
		t.Errorf("%s: %v", who, err)
	}
	ta.done <- nil
}

// exited waits up to a minute for the agent to return on its own, and
// returns what Run returned; the test fails at once if it has not, saying
// what that means.
func (ta *testAgent) exited(t *testing.T, stillRunning string) error {
	t.Helper()
	select {
	case err := <-ta.done:
		ta.done <- nil
		return err
	case <-time.After(time.Minute):
		t.Fatal(stillRunning)
		return nil
	}
}

func waitReady(t *testing.T, socket string) {
	t.Helper()
	waitReadyWhileRunning(t, socket, nil)
}

// waitReadyWhileRunning is waitReady, failing at once with what Run
// returned if ta (nil: not watched) exits first: an agent that refused to
// start is not one slow to get ready.
func waitReadyWhileRunning(t *testing.T, socket string, ta *testAgent) {
	t.Helper()
	c := control.NewClient(socket, time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.Ready {
			return
		}
		if ta != nil {
			select {
			case exit := <-ta.done:
				ta.done <- exit
				t.Fatalf("agent exited before it was ready: %v (last status: %v %+v)", exit, err, st)
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within 10s: %v %+v", err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestartLosesNoQuery replaces a running agent with a new one while a
// client keeps asking, the way a DaemonSet rolling update with maxSurge
// does: the new agent takes over the sockets, then the old one is stopped.
// Every query must be answered.
func TestRestartLosesNoQuery(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	// The successor's own upstream names it in the status (waitServedBy).
	upNew := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{}).Addr
	metrics := testenv.FreePort(t).String() // in a DaemonSet both pods share the node's port
	old := startTestAgent(t, dir, socket, listen, up, metrics)

	var sent, lost atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 { // four clients, each waiting for its answer before the next query
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Net: "udp", Timeout: time.Second}
			m := new(dns.Msg)
			m.SetQuestion("address.internal.", dns.TypeA)
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if r, _, err := c.Exchange(m, listen.String()); err != nil || len(r.Answer) != 1 {
					lost.Add(1)
				}
			}
		}()
	}
	// Registered after the agents' stops, so it runs before them: a test
	// that fails half-way leaves no client asking.
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)
	// sentAtLeast waits until the clients have sent n queries in all;
	// each sends its next once the last is answered or lost.
	sentAtLeast := func(n int64, when string) {
		t.Helper()
		testenv.Eventually(t, time.Minute, fmt.Sprintf("%d queries sent %s", n, when), func() bool { return sent.Load() >= n })
	}
	const queries = 100 // before the successor starts, and after the old agent stopped
	sentAtLeast(queries, "before the successor starts")
	succ := runTestAgent(t, dir, socket, listen, upNew, metrics) // takes over
	waitServedBy(t, socket, succ, upNew)
	old.stop()
	sentAtLeast(sent.Load()+queries, "after the old agent stopped")
	stopLoad()
	t.Logf("restart under load: %d queries sent, %d lost", sent.Load(), lost.Load())
	if lost.Load() != 0 {
		t.Errorf("%d of %d queries lost across the restart", lost.Load(), sent.Load())
	}
	// The control socket and the probe port belong to the new agent now.
	waitServedBy(t, socket, succ, upNew)
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil {
		t.Fatalf("probe port after the restart: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz after the restart: %s", resp.Status)
	}
	body := testenv.Metrics(t, metrics)
	for _, m := range []string{`ztdns_resolver_queries_total{outcome="local"}`, "ztdns_table_names", "ztdns_forward_cache_hits_total", "go_goroutines"} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestSocketsPerAddr: the agent opens as many UDP sockets on its address as
// configured (--udp-sockets), each answered.
func TestSocketsPerAddr(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	startTestAgent(t, dir, socket, listen, up, "",
		func(c *Config) { c.SocketsPerAddr = 3 })
	// /proc/net/udp lists every socket of this network namespace; the
	// port is this test's alone.
	if n := len(testenv.SocketStates(t, "udp", listen)); n != 3 {
		t.Fatalf("%d UDP sockets on %s, want 3", n, listen)
	}
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("address.internal.", dns.TypeA)
	for range 20 { // each from a new source port: spread over the sockets
		if r, _, err := c.Exchange(m, listen.String()); err != nil || len(r.Answer) != 1 {
			t.Fatalf("address.internal: %v %v", r, err)
		}
	}
}

// gatedSource runs src only once open is closed. started is closed when
// the agent runs it: after the agent took over its predecessor's sockets.
type gatedSource struct {
	src           source.Source
	started, open chan struct{}
}

func gated(src source.Source) *gatedSource {
	return &gatedSource{src: src, started: make(chan struct{}), open: make(chan struct{})}
}

func (g *gatedSource) Run(ctx context.Context, deliver func(*model.Snapshot)) error {
	close(g.started)
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil
	}
	return g.src.Run(ctx, deliver)
}

// handoffSetup gives a directory serving address.internal, a socket path,
// a free port to listen on and an upstream.
func handoffSetup(t *testing.T) (dir, socket string, listen, upstream netip.AddrPort) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Join(t.TempDir(), "ztdns.sock"), testenv.FreePort(t), dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{}).Addr
}

// askAddress asks for address.internal over network ("udp" or "tcp"),
// from a new source port.
func askAddress(network string, listen netip.AddrPort) error {
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("address.internal.", dns.TypeA)
	r, _, err := c.Exchange(m, listen.String())
	if err != nil {
		return err
	}
	if len(r.Answer) != 1 {
		return fmt.Errorf("answer %v", r.Answer)
	}
	return nil
}

// waitServedBy waits until the agent answering on socket is the one that
// alone in the test forwards to upstream, and is ready. It fails at once
// if ta, that agent if not nil, stops.
func waitServedBy(t *testing.T, socket string, ta *testAgent, upstream netip.AddrPort) {
	t.Helper()
	c := control.NewClient(socket, time.Second)
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		if ta != nil {
			select {
			case err := <-ta.done:
				ta.done <- err
				t.Fatalf("the agent stopped: %v", err)
			default:
			}
		}
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Ready || !slices.Equal(st.FallbackUpstreams, []string{upstream.String()}) {
			return fmt.Errorf("status %+v: want ready and upstreams [%s]", st, upstream)
		}
		return nil
	})
}

// handoffTimeouts gives an agent these hand-over timeouts: both ends of a
// hand-over must have the same.
func handoffTimeouts(t handoff.Timeouts) func(*Config) {
	return func(c *Config) { c.handoffTimeouts = t }
}

// failingSource is a source that never delivers (its gate stays shut) and
// reports why, as the Kubernetes source does when it may not list a
// resource.
type failingSource struct {
	*gatedSource
	err error
}

func (f failingSource) Healthy() error { return f.err }

// errForbidden is what failingSource reports: two lines, as errors.Join
// gives them.
var errForbidden = errors.Join(errors.New("kubernetes source: waiting for the first full sync"),
	errors.New(`watch of serviceentries failing: serviceentries.networking.istio.io is forbidden`))

// neverSyncs is a source of dir that never delivers and says why.
func neverSyncs(dir string) failingSource {
	return failingSource{gated(configdir.New(dir)), errForbidden}
}

// wantGaveUpError fails the test unless err says why the successor gave up
// and what its source reports, on one line.
func wantGaveUpError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the successor without a table stopped without an error")
	}
	msg := err.Error()
	for _, want := range []string{"no name table", "keeps serving", "RBAC", "waiting for the first full sync", "serviceentries.networking.istio.io is forbidden"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the successor's error lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("the successor's error spans lines: %q", msg)
	}
}

// TestSuccessorWithoutATableGivesUp: a successor with no table
// handoff.Timeouts.SyncWait after asking for the sockets (its source may
// not list a resource, or cannot reach the API server) gives the hand-over
// up and exits with an error naming what its source reports; the running
// agent serves on, answers its names, and is ready again, restart after
// restart. (Before: the successor took over with an empty table, forwarded
// every name, and was never ready; the old agent had drained for good.)
func TestSuccessorWithoutATableGivesUp(t *testing.T) {
	short := handoffTimeouts(handoff.Timeouts{SyncWait: time.Second})
	dir, socket, listen, up := handoffSetup(t)
	metrics := testenv.FreePort(t).String()
	old := startTestAgent(t, dir, socket, listen, up, metrics, short)
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	for restart := range 2 { // the kubelet restarts the successor
		src := neverSyncs(dir)
		succ := runTestAgent(t, dir, socket, listen, upNew, metrics, short, func(c *Config) { c.Source = src })
		<-src.started
		err := succ.exited(t, "the successor without a table is still running: it took over")
		t.Logf("start %d: %v", restart+1, err)
		wantGaveUpError(t, err)
		for range 10 {
			if err := askAddress("udp", listen); err != nil {
				t.Fatalf("start %d: after the successor gave up: udp: %v", restart+1, err)
			}
		}
		if err := askAddress("tcp", listen); err != nil {
			t.Fatalf("start %d: after the successor gave up: tcp: %v", restart+1, err)
		}
		waitServedBy(t, socket, old, up)
		wantProbe(t, metrics, "/readyz", http.StatusOK, fmt.Sprintf("start %d: after the successor gave up", restart+1))
		wantProbe(t, metrics, "/healthz", http.StatusOK, fmt.Sprintf("start %d: after the successor gave up", restart+1))
	}
	// Once its source delivers, a successor takes over as ever.
	succ := runTestAgent(t, dir, socket, listen, upNew, metrics, short)
	waitServedBy(t, socket, succ, upNew)
	old.stop()
	if err := askAddress("udp", listen); err != nil {
		t.Errorf("after the hand-over: %v", err)
	}
}

// TestHandoffWaitsForASlowFirstTable: a successor whose first table comes
// later than handoff.Timeouts.Step, but within SyncWait, still takes over,
// and serves once its predecessor is gone. (Before: its "serving" came
// after the exchange's deadline, the old agent had given up and kept its
// control socket, and the successor exited with an error: a rollout on a
// cluster slow to sync crash-looped.)
func TestHandoffWaitsForASlowFirstTable(t *testing.T) {
	step := 300 * time.Millisecond
	short := handoffTimeouts(handoff.Timeouts{Step: step})
	dir, socket, listen, up := handoffSetup(t)
	old := startTestAgent(t, dir, socket, listen, up, "", short)
	src := gated(configdir.New(dir))
	upNew := netip.MustParseAddrPort("127.0.0.1:9") // names the successor in its status
	succ := runTestAgent(t, dir, socket, listen, upNew, "", short, func(c *Config) { c.Source = src })
	<-src.started
	// The first table comes after the exchange's deadline. Letting time
	// pass is the point here, not a stand-in for an event: the deadline
	// was set on the successor's end of the exchange before src.started,
	// and nothing can be observed when a socket's deadline passes with no
	// I/O on it. Sleeping longer than needed only makes the test slower.
	time.Sleep(3 * step)
	close(src.open)
	waitServedBy(t, socket, succ, upNew)
	old.stop()
	for range 10 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("after the old agent stopped: %v", err)
		}
	}
}

// TestHandoffAbandonedOnStop: a successor stopped (SIGTERM) while it waits
// for its first table gives up the takeover, and its predecessor keeps
// serving and stays ready. (Before: the successor completed the hand-over
// and then stopped, and nothing served DNS.)
func TestHandoffAbandonedOnStop(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	startTestAgent(t, dir, socket, listen, up, "")
	src := gated(configdir.New(dir)) // never opened: no first table
	succ := runTestAgent(t, dir, socket, listen, netip.MustParseAddrPort("127.0.0.1:9"), "", func(c *Config) { c.Source = src })
	<-src.started
	succ.stopChecked(t, "the stopped successor")
	for range 10 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("after the successor stopped: %v", err)
		}
	}
	waitServedBy(t, socket, nil, up)
}

// TestRestartAfterADeadSuccessor: after a hand-over the old agent keeps
// none of the sockets it handed over. When the successor dies and a fresh
// agent binds the address again, every query reaches the fresh agent,
// whatever its source port. (Before: the old agent's unread copies stayed
// in the SO_REUSEPORT group, and the kernel sent about half the queries to
// them.)
func TestRestartAfterADeadSuccessor(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	startTestAgent(t, dir, socket, listen, up, "") // stays up, handed over
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	succ := runTestAgent(t, dir, socket, listen, upNew, "")
	waitServedBy(t, socket, succ, upNew)
	succ.stop()
	startTestAgent(t, dir, socket, listen, up, "")
	for i := range 32 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("UDP query %d: %v", i, err)
		}
	}
	for i := range 8 {
		if err := askAddress("tcp", listen); err != nil {
			t.Fatalf("TCP query %d: %v", i, err)
		}
	}
}

// probe GETs path on the metrics address, as the kubelet does: the status
// code, or an error when nobody answers.
func probe(metrics, path string) (int, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + metrics + path)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// wantProbe fails the test unless path answers code.
func wantProbe(t *testing.T, metrics, path string, code int, when string) {
	t.Helper()
	if got, err := probe(metrics, path); err != nil || got != code {
		t.Errorf("%s %s: %d %v, want %d", when, path, got, err, code)
	}
}

// TestProbesDuringHandoff: both pods of a rolling update share the probe
// port, and until the successor has its first table only the old agent
// accepts on it. The old agent is not ready from the moment the successor
// asks for the sockets, so the new pod does not turn ready (and get the
// old one deleted) before the handoff; once the successor serves, /readyz
// is its own; should the successor stop before, the old agent is ready
// again. /healthz, the liveness probe, stays ok throughout: neither pod is
// restarted. (Before: the old agent answered the new pod's readiness probe
// "ok" while the successor waited for its table, so the DaemonSet
// controller deleted the old pod, which stopped without a successor and
// failed every pod open.)
func TestProbesDuringHandoff(t *testing.T) {
	for _, successorServes := range []bool{true, false} {
		name := map[bool]string{true: "successor serves", false: "successor stopped"}[successorServes]
		t.Run(name, func(t *testing.T) {
			dir, socket, listen, up := handoffSetup(t)
			metrics := testenv.FreePort(t).String()
			old := startTestAgent(t, dir, socket, listen, up, metrics)
			wantProbe(t, metrics, "/readyz", http.StatusOK, "before the successor")

			src := gated(configdir.New(dir)) // holds the successor's first table back
			upNew := netip.MustParseAddrPort("127.0.0.1:9")
			succ := runTestAgent(t, dir, socket, listen, upNew, metrics, func(c *Config) { c.Source = src })
			<-src.started // the successor has the sockets, and waits for its table
			for range 3 {
				wantProbe(t, metrics, "/readyz", http.StatusServiceUnavailable, "while the successor waits")
				wantProbe(t, metrics, "/healthz", http.StatusOK, "while the successor waits")
				time.Sleep(100 * time.Millisecond)
			}
			st, err := control.NewClient(socket, time.Second).Status(context.Background())
			if err != nil || st.Ready || !strings.Contains(st.NotReady, "newer agent") {
				t.Errorf("the old agent's status while the successor waits: %+v %v, want not ready for the newer agent", st, err)
			}
			if err := askAddress("udp", listen); err != nil {
				t.Errorf("while the successor waits: %v", err)
			}

			if successorServes {
				close(src.open)
				waitServedBy(t, socket, succ, upNew)
				// The old agent is handed over, never ready: an ok is the
				// successor's.
				wantProbe(t, metrics, "/readyz", http.StatusOK, "after the handoff")
				wantProbe(t, metrics, "/healthz", http.StatusOK, "after the handoff")
				old.stop() // the DaemonSet controller deletes the old pod
				wantProbe(t, metrics, "/readyz", http.StatusOK, "after the old agent stopped")
				wantProbe(t, metrics, "/healthz", http.StatusOK, "after the old agent stopped")
				return
			}
			succ.stopChecked(t, "the stopped successor")
			testenv.EventuallyNil(t, 5*time.Second, func() error {
				if code, err := probe(metrics, "/readyz"); err != nil || code != http.StatusOK {
					return fmt.Errorf("/readyz %d %v", code, err)
				}
				return nil
			})
			wantProbe(t, metrics, "/healthz", http.StatusOK, "after the successor stopped")
			waitServedBy(t, socket, old, up)
		})
	}
}

// TestHandoffWithANewMetricsPort: an upgrade that changes --metrics' port
// leaves the predecessor's listener alone: the successor answers its probes
// on the new port, and the old port is the old agent's until it stops.
// (Before: the successor adopted the old listener whatever its address,
// its probes on the new port found nobody, and the kubelet restarted it
// again and again.)
func TestHandoffWithANewMetricsPort(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	oldMetrics, newMetrics := testenv.FreePort(t).String(), testenv.FreePort(t).String()
	old := startTestAgent(t, dir, socket, listen, up, oldMetrics)
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	succ := runTestAgent(t, dir, socket, listen, upNew, newMetrics)
	waitServedBy(t, socket, succ, upNew)
	wantProbe(t, newMetrics, "/readyz", http.StatusOK, "after the handoff")
	wantProbe(t, newMetrics, "/healthz", http.StatusOK, "after the handoff")
	old.stop()
	wantProbe(t, newMetrics, "/readyz", http.StatusOK, "after the old agent stopped")
	if _, err := probe(oldMetrics, "/readyz"); err == nil {
		t.Errorf("the old metrics port still answers after the old agent stopped")
	}
}

// TestHandoffOfMoreSocketsThanOneMessageCarries: with --udp-sockets at its
// maximum on several addresses, the sockets number more than Linux passes
// in one SCM_RIGHTS message (253). The successor still takes every one
// over, and no address gets a second set bound beside the first. (Before:
// sending them failed with EINVAL, unlogged; the successor bound fresh
// sockets and served beside the old agent, which kept serving too.)
func TestHandoffOfMoreSocketsThanOneMessageCarries(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	addrs := []netip.AddrPort{listen, testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)}
	many := func(c *Config) { c.Listen, c.SocketsPerAddr = addrs, MaxSocketsPerAddr }
	if n := len(addrs) * (MaxSocketsPerAddr + 1); n <= handoff.MaxFDsPerMessage {
		t.Fatalf("%d sockets fit in one message: the test proves nothing", n)
	}
	old := startTestAgent(t, dir, socket, listen, up, "", many)
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	succ := runTestAgent(t, dir, socket, listen, upNew, "", many)
	waitServedBy(t, socket, succ, upNew)
	for _, a := range addrs {
		if n := len(testenv.SocketStates(t, "udp", a)); n != MaxSocketsPerAddr {
			t.Errorf("%d UDP sockets on %s after the handoff, want %d (those handed over)", n, a, MaxSocketsPerAddr)
		}
	}
	old.stop()
	for _, a := range addrs {
		if err := askAddress("udp", a); err != nil {
			t.Errorf("%s after the old agent stopped: %v", a, err)
		}
	}
}

// TestFailedHandoffFromALiveAgentStops: when a running agent answers at the
// hand-off path but its sockets cannot be taken over, the new agent stops
// with an error saying so rather than binding its own beside it.
func TestFailedHandoffFromALiveAgentStops(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	if err := control.PrepareDir(socket, control.Access{}); err != nil {
		t.Fatal(err)
	}
	ln, err := handoff.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sockets := func() ([]handoff.SocketDesc, []*os.File, error) { return nil, nil, fmt.Errorf("cannot list them") }
	offered := make(chan struct{})
	go func() { // a running agent that fails to list its sockets, and serves on
		defer close(offered)
		handoff.Offer(t.Context(), ln, slog.New(slog.DiscardHandler), handoff.Identities{}, handoff.Timeouts{}, sockets,
			func(bool) {}, func(bool) { t.Error("stopped for a failed hand-over") })
	}()
	ta := runTestAgent(t, dir, socket, listen, up, "")
	err2 := ta.exited(t, "the new agent is still running")
	ln.Close()
	<-offered
	if err2 == nil || !strings.Contains(err2.Error(), "taking its sockets over failed") {
		t.Errorf("Run = %v, want an error saying the hand-over failed", err2)
	}
	if err := askAddress("udp", listen); err == nil {
		t.Error("the new agent answered on its address: it bound fresh sockets")
	}
}

// takeOverAndDie is a successor killed right after the hand-over, before
// it listens at the hand-off path itself: it takes the sockets, has the
// running agent release them, and dies with its copies.
func takeOverAndDie(t *testing.T, socket string, timeouts handoff.Timeouts) {
	t.Helper()
	in, err := handoff.TakeOver(socket, handoff.Identity(""), 0, timeouts, slog.New(slog.DiscardHandler))
	if err != nil || in == nil {
		t.Fatalf("TakeOver = %v, %v", in, err)
	}
	defer in.Abandon() // dies: every descriptor it holds closes
	if err := in.Release(); err != nil {
		t.Fatal(err)
	}
}

// TestRestartAfterASuccessorDiedBeforeListening: a successor that dies
// after the hand-over, while the hand-off path still leads to the old
// agent, is restarted and serves: DNS over UDP and TCP, and the probes.
// (Before: the old agent, handed over and idle until deleted, kept its
// hand-off listener open but accepted nothing; every restart's request for
// the sockets timed out and it exited, and the node had no agent.)
func TestRestartAfterASuccessorDiedBeforeListening(t *testing.T) {
	timeouts := handoff.Timeouts{Step: 2 * time.Second}
	dir, socket, listen, up := handoffSetup(t)
	metrics := testenv.FreePort(t).String()
	startTestAgent(t, dir, socket, listen, up, metrics, handoffTimeouts(timeouts)) // stays up, handed over
	takeOverAndDie(t, socket, timeouts)
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	succ := runTestAgent(t, dir, socket, listen, upNew, metrics, handoffTimeouts(timeouts))
	waitServedBy(t, socket, succ, upNew)
	for i := range 16 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("UDP query %d: %v", i, err)
		}
	}
	for i := range 4 {
		if err := askAddress("tcp", listen); err != nil {
			t.Fatalf("TCP query %d: %v", i, err)
		}
	}
	wantProbe(t, metrics, "/readyz", http.StatusOK, "after the restart")
	wantProbe(t, metrics, "/healthz", http.StatusOK, "after the restart")
}

// inPod gives an agent the UID of its pod, as the chart's POD_UID does.
func inPod(uid string) func(*Config) { return func(c *Config) { c.PodUID = uid } }

// whoUpstream is an upstream that answers who.test. with addr: which
// agent forwarded a query shows in its answer.
func whoUpstream(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t, "who.test. 60 IN A "+addr)).Addr
}

// answeredBy asks for who.test. over network and returns the address in
// the answer: that of the agent whose upstream answered.
func answeredBy(t *testing.T, network string, listen netip.AddrPort) string {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("who.test.", dns.TypeA)
	r, _, err := c.Exchange(m, listen.String())
	if err != nil {
		t.Fatalf("%s query for who.test.: %v", network, err)
	}
	if len(r.Answer) != 1 {
		t.Fatalf("%s query for who.test.: answer %v", network, r.Answer)
	}
	return r.Answer[0].(*dns.A).A.String()
}

// TestRestartedPredecessorIsRefused: in a DaemonSet rolling update the new
// pod's agent takes over from the old pod's, which stays, idle, until the
// old pod is deleted. When the old pod's container is restarted meanwhile
// (OOM-killed, its liveness probe), the restarted agent, with the old
// pod's UID, asks the new agent for the sockets: it is refused, serves
// nothing and exits saying why, and the new agent serves on, ready; once
// the old pod is gone it still does. (Before: the new agent handed the
// node back and sat idle, its pod still ready on the shared probe port;
// when the old pod was deleted, its agent stopped with no successor, and
// the node had no resolver until the new pod's liveness probe restarted
// it.)
func TestRestartedPredecessorIsRefused(t *testing.T) {
	dir, socket, listen, _ := handoffSetup(t)
	metrics := testenv.FreePort(t).String() // shared, as in a DaemonSet
	upOld, upNew := whoUpstream(t, "192.0.2.1"), whoUpstream(t, "192.0.2.2")
	old := startTestAgent(t, dir, socket, listen, upOld, metrics, inPod("0d1f0000-0000-4000-8000-000000000001"))
	var newLog testenv.Log
	succ := runTestAgent(t, dir, socket, listen, upNew, metrics, inPod("0d1f0000-0000-4000-8000-000000000002"),
		func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&newLog, nil)) })
	waitServedBy(t, socket, succ, upNew)

	// The old pod's container restarts: the same pod, so the same UID.
	upRestarted := whoUpstream(t, "192.0.2.3")
	restarted := runTestAgent(t, dir, socket, listen, upRestarted, metrics, inPod("0d1f0000-0000-4000-8000-000000000001"))
	wantRefused(t, socket, restarted, upRestarted, handoff.ErrRefusedRestart)
	// The new agent logs once the exchange is over, which may be after the
	// restarted agent has read the refusal and returned.
	testenv.Eventually(t, 10*time.Second, "the new agent logs the refusal", func() bool {
		return newLog.Contains("refused the resolver's sockets to the agent this one took over from")
	})
	// The new agent serves on, ready, and answers every query itself.
	waitServedBy(t, socket, succ, upNew)
	wantProbe(t, metrics, "/readyz", http.StatusOK, "after the refusal")
	for _, network := range []string{"udp", "udp", "udp", "tcp"} {
		if got := answeredBy(t, network, listen); got != "192.0.2.2" {
			t.Fatalf("%s: who.test. answered %s, want 192.0.2.2 (the new agent's upstream)", network, got)
		}
	}
	// The DaemonSet deletes the old pod: the node keeps its resolver.
	old.stopChecked(t, "the old agent")
	waitServedBy(t, socket, succ, upNew)
	if got := answeredBy(t, "udp", listen); got != "192.0.2.2" {
		t.Errorf("after the old pod is gone: who.test. answered %s, want 192.0.2.2", got)
	}
	// A newer pod (another UID) still takes over from the new agent.
	upNewer := netip.MustParseAddrPort("127.0.0.1:9")
	newer := runTestAgent(t, dir, socket, listen, upNewer, metrics, inPod("0d1f0000-0000-4000-8000-000000000003"))
	waitServedBy(t, socket, newer, upNewer)
}

// wantRefused waits for restarted, an old pod's agent restarted after a
// newer one took the node, to exit, refused (why:
// handoff.ErrRefusedRestart, or handoff.ErrRefusedOlder), with an error
// saying why; the test fails at once if the agent on socket forwards to
// upRestarted (restarted took the node).
func wantRefused(t *testing.T, socket string, restarted *testAgent, upRestarted netip.AddrPort, why error) {
	t.Helper()
	var err error
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		select {
		case err = <-restarted.done:
			restarted.done <- nil
			return nil
		default:
		}
		st, serr := control.NewClient(socket, time.Second).Status(context.Background())
		if serr == nil && slices.Equal(st.FallbackUpstreams, []string{upRestarted.String()}) {
			t.Fatal("the restarted old agent took the node back from the new one")
		}
		return errors.New("the restarted old agent is still running")
	})
	said := map[error]string{handoff.ErrRefusedRestart: "handed the node over", handoff.ErrRefusedOlder: "later pod template generation"}[why]
	if !errors.Is(err, why) || !strings.Contains(err.Error(), said) || !strings.Contains(err.Error(), "serves nothing") {
		t.Errorf("the restarted old agent: Run = %v; want an error saying %q", err, said)
	}
	t.Logf("the restarted old agent: %v", err)
}

// TestRestartedSuccessorRefusesItsPredecessor: A hands the node over to B;
// B's container is restarted (OOM-killed), and A, finding nobody at the
// hand-off path, exits; B' (B's pod, so B's UID) starts afresh and serves.
// When A's container is restarted next, A' asks B' for the node: B' refuses
// it, as B would have, from the record B left beside the socket, and
// serves on. A new rollout's agent still takes the node over from B'.
// (Before: B' knew nothing of A, as B had known it only in memory, and
// handed the node back to A'; B' sat idle, its probes answered by A' on
// the shared port, and once the rollout deleted A's pod the node had no
// resolver until B' noticed and restarted.)
func TestRestartedSuccessorRefusesItsPredecessor(t *testing.T) {
	dir, socket, listen, _ := handoffSetup(t)
	metrics := testenv.FreePort(t).String() // shared, as in a DaemonSet
	const podA, podB = "0d1f0000-0000-4000-8000-000000000011", "0d1f0000-0000-4000-8000-000000000012"
	upA, upB := whoUpstream(t, "192.0.2.1"), whoUpstream(t, "192.0.2.2")
	a := startTestAgent(t, dir, socket, listen, upA, metrics, inPod(podA))
	b := runTestAgent(t, dir, socket, listen, upB, metrics, inPod(podB))
	waitServedBy(t, socket, b, upB)

	b.stopChecked(t, "B") // its container is restarted
	if err := a.exited(t, "A is still idle a minute after B stopped"); !errors.Is(err, handoff.ErrSuccessorGone) {
		t.Fatalf("A: Run = %v; want it to exit, its successor gone", err)
	}

	// B's container restarts first, with nobody to take over from.
	upB2 := whoUpstream(t, "192.0.2.3")
	b2 := runTestAgent(t, dir, socket, listen, upB2, metrics, inPod(podB))
	waitServedBy(t, socket, b2, upB2)
	// Then A's.
	upA2 := whoUpstream(t, "192.0.2.4")
	a2 := runTestAgent(t, dir, socket, listen, upA2, metrics, inPod(podA))
	wantRefused(t, socket, a2, upA2, handoff.ErrRefusedRestart)
	waitServedBy(t, socket, b2, upB2)
	wantProbe(t, metrics, "/readyz", http.StatusOK, "after the refusal")
	for _, network := range []string{"udp", "tcp"} {
		if got := answeredBy(t, network, listen); got != "192.0.2.3" {
			t.Fatalf("%s: who.test. answered %s, want 192.0.2.3 (B's restarted agent's upstream)", network, got)
		}
	}

	// A new rollout's agent (another UID) takes over from B'.
	upC := whoUpstream(t, "192.0.2.5")
	c := runTestAgent(t, dir, socket, listen, upC, metrics, inPod("0d1f0000-0000-4000-8000-000000000013"))
	waitServedBy(t, socket, c, upC)
	if got := answeredBy(t, "udp", listen); got != "192.0.2.5" {
		t.Errorf("after the new rollout: who.test. answered %s, want 192.0.2.5", got)
	}
}

// ofGeneration gives an agent its pod's pod-template-generation label, as
// the chart's POD_TEMPLATE_GENERATION does.
func ofGeneration(n uint64) func(*Config) { return func(c *Config) { c.Generation = n } }

// TestFreshSuccessorRefusesTheOldPodsRestart: a rollout (maxSurge) starts
// while the old pod A's container is down (crash-looping, OOM-killed: just
// when a fix is rolled out), so the new pod B's agent starts afresh, with
// nobody to take over from. When A's container restarts, its agent asks B
// for the node: B refuses it, A being of an older pod template generation,
// and serves on, ready. A later template (a `helm rollback` writes one)
// takes the node from B as ever. (Before: B had taken over from nobody and
// refused nobody; it handed the node to A's restarted agent and sat idle,
// ready on the shared probe port, and once the rollout deleted A's pod the
// node failed open, with no resolver until B exited, its successor gone,
// and was restarted: again at each of A's crashes.)
func TestFreshSuccessorRefusesTheOldPodsRestart(t *testing.T) {
	dir, socket, listen, _ := handoffSetup(t)
	metrics := testenv.FreePort(t).String() // shared, as in a DaemonSet
	const podA, podB, podC = "0d1f0000-0000-4000-8000-000000000021", "0d1f0000-0000-4000-8000-000000000022", "0d1f0000-0000-4000-8000-000000000023"
	a := startTestAgent(t, dir, socket, listen, whoUpstream(t, "192.0.2.1"), metrics, inPod(podA), ofGeneration(1))
	a.stopChecked(t, "A") // its container is killed

	upB := whoUpstream(t, "192.0.2.2")
	var logB testenv.Log
	b := runTestAgent(t, dir, socket, listen, upB, metrics, inPod(podB), ofGeneration(2),
		func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logB, nil)) })
	waitServedBy(t, socket, b, upB)

	// A's container restarts: the same pod, so the same UID and generation.
	upA2 := whoUpstream(t, "192.0.2.4")
	a2 := runTestAgent(t, dir, socket, listen, upA2, metrics, inPod(podA), ofGeneration(1))
	wantRefused(t, socket, a2, upA2, handoff.ErrRefusedOlder)
	testenv.Eventually(t, 10*time.Second, "B logs the refusal", func() bool {
		return logB.Contains("refused the resolver's sockets to an agent of an older pod template generation")
	})
	waitServedBy(t, socket, b, upB)
	wantProbe(t, metrics, "/readyz", http.StatusOK, "after the refusal")
	for _, network := range []string{"udp", "udp", "tcp"} {
		if got := answeredBy(t, network, listen); got != "192.0.2.2" {
			t.Fatalf("%s: who.test. answered %s, want 192.0.2.2 (B's upstream)", network, got)
		}
	}

	// A rollback: a new template, generation 3, takes the node from B.
	upC := whoUpstream(t, "192.0.2.5")
	c := runTestAgent(t, dir, socket, listen, upC, metrics, inPod(podC), ofGeneration(3))
	waitServedBy(t, socket, c, upC)
	if got := answeredBy(t, "udp", listen); got != "192.0.2.5" {
		t.Errorf("after the rollback: who.test. answered %s, want 192.0.2.5", got)
	}
}

// TestStoppedAsItStartsLeavesNoSocket: an agent stopped as it starts, its
// resolver closed before the goroutines serving its sockets began, leaves
// none of them bound once Run returns: an agent started next on the
// address finds it free. (Before: the resolver closed only the sockets it
// had begun to serve, and the others stayed bound until the garbage
// collector closed them; a fresh agent after a dead successor, on a busy
// machine, refused to start beside its own predecessor's socket.) One
// processor, and a context ended before Run, make the serving goroutines
// start only once Run waits.
func TestStoppedAsItStartsLeavesNoSocket(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := Config{Source: configdir.New(dir, configdir.WithLogger(log)), Listen: []netip.AddrPort{listen}, Upstreams: []netip.AddrPort{up}, Socket: socket, Logger: log}
	if err := Run(ctx, cfg); err != nil {
		t.Fatalf("Run with its context ended: %v", err)
	}
	udp, tcp := testenv.SocketStates(t, "udp", listen), testenv.SocketStates(t, "tcp", listen)
	if len(udp) != 0 || len(tcp) != 0 {
		t.Errorf("sockets on %s once Run returned: UDP %q, TCP %q; want none", listen, udp, tcp)
	}
}
