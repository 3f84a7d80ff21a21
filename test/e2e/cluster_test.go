//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// Nameservers a pod's resolv.conf can name. The "nowhere" ones exist
// nowhere: the node namespace has no route for them and does not forward,
// so an answer to a query sent to them can only have come through the
// redirect. The others are node addresses with a test DNS server behind
// them (cluster.serve), each answering with its own marker address.
const (
	nowhere4  = "203.0.113.53"
	nowhere4b = "203.0.113.54"
	nowhere6  = "2001:db8::53"

	podNameserver1 = "198.51.100.53"
	podNameserver2 = "198.51.100.54"
	// agentUpstream is the agent's --upstream: what a miss would go to if
	// the agent did not know the nameserver the pod addressed.
	agentUpstream = "198.51.100.55"
)

// Names the tests resolve: the ServiceEntry hosts of examples/, and one
// ztdns does not know, so it is always forwarded.
const (
	addressHost = "address.internal"
	autoHost    = "auto.internal"
	whoHost     = "who.example"
)

var (
	addressVIP = netip.MustParseAddr("198.51.100.1")     // spec.addresses of address.internal
	autoVIPs4  = netip.MustParsePrefix("240.240.0.0/16") // Istio's auto-allocation ranges
	autoVIPs6  = netip.MustParsePrefix("2001:2::/48")
)

// Markers: what the node's test nameservers answer for every name, so a
// test can tell who answered.
var (
	// ownMarker is the answer of a pod's own nameserver (podNameserver1)
	// in the fail-open, restart and unmarked-pod tests.
	ownMarker = netip.MustParseAddr("203.0.113.99")
	// upstreamMarker is the answer of the agent's --upstream.
	upstreamMarker = netip.MustParseAddr("203.0.113.3")
)

// cluster is one node of the test topology (README.md, "The two
// commands"): a node network namespace where `ztdns agent` runs (started
// with nsenter, so it sees the real /sys), its programs attached to a test
// cgroup and pinned in a private bpffs, test DNS servers on node addresses,
// and pods behind veths.
// Everything goes at cleanup, also when the test fails.
type cluster struct {
	bin        string // the ztdns binary
	node       *testenv.Node
	cg         *testenv.Cgroup
	bpffs      string // --bpffs: <private bpffs mount>/ztdns
	configDir  string // --config-dir: a copy of examples/*.yaml
	socket     string // --socket
	stateDir   string // --state-dir
	resolvConf string // --resolv-conf: names only agentUpstream
	// upstream is the agent's --upstream server, answering upstreamMarker.
	upstream *dnstest.Server
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequireRoot(t)
	for _, bin := range []string{"ip", "nsenter", "dig"} {
		testenv.LookPath(t, bin) // dig: every test checks the pods' DNS with it
	}
	c := &cluster{bin: ztdnsBinary(t)}
	c.node = testenv.NewNode(t)
	c.cg = testenv.NewCgroup(t)
	c.bpffs = filepath.Join(testenv.NewBPFFS(t), "ztdns")
	dir := t.TempDir()
	c.configDir = filepath.Join(dir, "manifests")
	c.socket = filepath.Join(dir, "run", "ztdns.sock")
	c.stateDir = filepath.Join(dir, "state")
	c.resolvConf = filepath.Join(dir, "resolv.conf")
	copyExamples(t, c.configDir)
	writeFile(t, c.resolvConf, "nameserver "+agentUpstream+"\n")
	c.upstream = c.serve(t, agentUpstream, upstreamMarker)
	// Registered before any agent starts, so it runs after they are killed:
	// a test that failed half-way leaves no link attached to the cgroup.
	t.Cleanup(func() {
		if out, err := c.nodeZtdns("uninstall", "--bpffs", c.bpffs, "--cgroup", c.cg.Path); err != nil {
			t.Errorf("cleanup: ztdns uninstall: %v\n%s", err, out)
		}
	})
	return c
}

// copyExamples copies the manifests of examples/ (not its opt-out variant).
func copyExamples(t *testing.T, dst string) {
	t.Helper()
	src, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(src) == 0 {
		t.Fatalf("no manifests in ../../examples: %v", err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range src {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dst, filepath.Base(f)), string(b))
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// servePodNameservers serves podNameserver1 and podNameserver2, each
// answering every marked name with a marker address of its own, and
// returns the markers and servers by nameserver.
func (c *cluster) servePodNameservers(t *testing.T) (map[string]netip.Addr, map[string]*dnstest.Server) {
	t.Helper()
	markers := map[string]netip.Addr{
		podNameserver1: netip.MustParseAddr("203.0.113.1"),
		podNameserver2: netip.MustParseAddr("203.0.113.2"),
	}
	servers := map[string]*dnstest.Server{}
	for ns, m := range markers {
		servers[ns] = c.serve(t, ns, m)
	}
	return markers, servers
}

// serve puts addr on the node's loopback and runs a test nameserver there,
// on UDP and TCP port 53, standing in for a pod's own nameserver or the
// agent's upstream. It answers every A question for markedNames with
// marker (TTL 300, so a cache that mixed up nameservers would show) and
// records who asked.
func (c *cluster) serve(t *testing.T, addr string, marker netip.Addr) *dnstest.Server {
	t.Helper()
	var lines []string
	for _, name := range markedNames {
		lines = append(lines, fmt.Sprintf("%s. 300 IN A %s", name, marker))
	}
	return c.node.ServeNameserver(t, netip.MustParseAddr(addr), dnstest.ZoneOf(t, lines...))
}

// askersOf returns the source addresses of the queries srv received for
// name.
func askersOf(srv *dnstest.Server, name string) []netip.Addr {
	var askers []netip.Addr
	for _, q := range srv.ReceivedFor(name) {
		askers = append(askers, q.Remote.Addr())
	}
	return askers
}

// markedNames are the names the node's test nameservers answer.
var markedNames = []string{addressHost, autoHost, whoHost}

// agentArgs is the agent's command line, as a user would type it.
func (c *cluster) agentArgs() []string {
	return []string{"agent",
		"--config-dir", c.configDir,
		"--cgroup", c.cg.Path,
		"--bpffs", c.bpffs,
		"--socket", c.socket,
		"--state-dir", c.stateDir,
		"--upstream", agentUpstream,
		"--resolv-conf", c.resolvConf,
	}
}

// startAgent starts an agent in the node namespace; it is killed at
// cleanup if still running, and its log is printed if the test failed.
func (c *cluster) startAgent(t *testing.T) *testenv.Agent {
	t.Helper()
	return testenv.StartAgent(t, c.node, c.bin, c.agentArgs()...)
}

// startReadyAgent starts an agent and waits until it serves its table.
func (c *cluster) startReadyAgent(t *testing.T) *testenv.Agent {
	t.Helper()
	a := c.startAgent(t)
	c.waitReady(t, a)
	return a
}

// waitReady waits until `ztdns status` reports the agent ready.
func (c *cluster) waitReady(t *testing.T, a *testenv.Agent) {
	t.Helper()
	a.WaitReady(t, c.socket, 20*time.Second)
}

// signal sends sig to the agent and returns when it was sent.
func signal(t *testing.T, a *testenv.Agent, sig syscall.Signal) time.Time {
	t.Helper()
	at := time.Now()
	if err := a.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	return at
}

// ztdnsOutput runs an operator command from the test's own namespace (the
// control socket is a path, reachable from anywhere on the machine).
func (c *cluster) ztdnsOutput(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
	return string(out), err
}

// ztdns runs an operator command and fails the test if it fails.
func (c *cluster) ztdns(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.ztdnsOutput(args...)
	if err != nil {
		t.Fatalf("ztdns %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// nodeZtdns runs a ztdns command in the node namespace (uninstall: the
// interface lives there).
func (c *cluster) nodeZtdns(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := c.node.Nsenter(ctx, c.bin, args...).CombinedOutput()
	return string(out), err
}

// pod adds a pod whose resolv.conf names nameservers; it is not marked.
func (c *cluster) pod(t *testing.T, nameservers ...string) *testenv.Pod {
	t.Helper()
	return c.node.AddPod(t, testenv.PodConfig{Nameservers: nameservers})
}

// capture marks the pod with `ztdns capture add`.
func (c *cluster) capture(t *testing.T, p *testenv.Pod, name string) {
	t.Helper()
	out := c.ztdns(t, "capture", "add", "--socket", c.socket, "--netns", p.Path(), "--namespace", "default", "--name", name)
	if !strings.Contains(out, "captured default/"+name) {
		t.Fatalf("ztdns capture add printed %q", out)
	}
}

// release unmarks the pod with `ztdns capture del`.
func (c *cluster) release(t *testing.T, p *testenv.Pod) {
	t.Helper()
	c.ztdns(t, "capture", "del", "--socket", c.socket, "--netns", p.Path())
}

// markedPod adds a pod and marks it.
func (c *cluster) markedPod(t *testing.T, name string, nameservers ...string) *testenv.Pod {
	t.Helper()
	p := c.pod(t, nameservers...)
	c.capture(t, p, name)
	return p
}

// inPod runs a command inside the pod and the test cgroup.
func (c *cluster) inPod(t *testing.T, p *testenv.Pod, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	return p.Output(t, c.cg, timeout, name, args...)
}

// dig runs `dig +short` in the pod, with one try and two seconds for it,
// and returns the addresses it printed.
func (c *cluster) dig(t *testing.T, p *testenv.Pod, args ...string) ([]netip.Addr, error) {
	t.Helper()
	out, err := c.inPod(t, p, 10*time.Second, "dig", append([]string{"+short", "+time=2", "+tries=1"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("dig %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	addrs := testenv.ParseAddrs(out)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("dig %s printed no address: %q", strings.Join(args, " "), out)
	}
	return addrs, nil
}

// netnsCookie reads the pod's network namespace cookie the way the kernel
// hands it out (SO_NETNS_COOKIE on a socket opened inside it), independently
// of ztdns.
func netnsCookie(t *testing.T, p *testenv.Pod) uint64 {
	t.Helper()
	var cookie uint64
	err := p.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		t.Fatalf("netns cookie of %s: %v", p.Name, err)
	}
	return cookie
}

// output runs a command in the test's own namespace and returns its
// combined output.
func output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
