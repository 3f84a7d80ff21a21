//go:build linux

package bench

import (
	"context"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// Addresses of the capture topology.
const (
	// podNameserver is the nameserver in every pod's resolv.conf. It
	// exists nowhere: the node namespace neither has it nor forwards, so an
	// answer can only come through the redirect (or the iptables DNAT).
	podNameserver = "203.0.113.10"
	// nodeMetrics is the agent's --metrics in the node namespace.
	nodeMetrics = "127.0.0.1:15053"
)

// resolverAddr is where the agent answers in a node: its default first
// --listen address, where the programs send captured queries.
var resolverAddr = netip.MustParseAddrPort("169.254.20.53:53")

// captureNode is one node of the capture topology: a node network
// namespace where `ztdns agent` runs with capture on, its programs attached
// to a cgroup made for the benchmark and pinned in a private bpffs, and pods
// behind veths whose nameserver exists nowhere. Everything goes at cleanup.
type captureNode struct {
	node  *testenv.Node
	cg    *testenv.Cgroup
	bpffs string // --bpffs: <private bpffs mount>/ztdns
	dir   string // the agent's socket, state and resolv.conf
}

func newCaptureNode(tb testing.TB) *captureNode {
	tb.Helper()
	testenv.RequireRoot(tb)
	testenv.LookPath(tb, "nsenter")
	bin := ztdnsBinary(tb)
	n := &captureNode{
		node:  testenv.NewNode(tb),
		cg:    testenv.NewCgroup(tb),
		bpffs: filepath.Join(testenv.NewBPFFS(tb), "ztdns"),
		dir:   tb.TempDir(),
	}
	if err := os.WriteFile(n.path("resolv.conf"), nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	// Registered before the agent starts, so it runs after it is killed: a
	// benchmark that failed half-way leaves no link on the cgroup.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err := n.node.Nsenter(ctx, bin, "uninstall", "--bpffs", n.bpffs, "--cgroup", n.cg.Path).CombinedOutput()
		if err != nil {
			tb.Errorf("cleanup: ztdns uninstall: %v\n%s", err, out)
		}
	})
	return n
}

func (n *captureNode) path(name string) string { return filepath.Join(n.dir, name) }

// startAgent starts the agent in the node with capture on and source
// (--config-dir DIR, or --kubeconfig PATH after forwardAPI), and waits
// until it is ready with at least names names. Misses go to the node's
// loopback, where nothing listens.
func (n *captureNode) startAgent(tb testing.TB, names int, source ...string) *dnsServer {
	tb.Helper()
	args := append([]string{"agent", "--cgroup", n.cg.Path, "--bpffs", n.bpffs,
		"--socket", n.path("ztdns.sock"), "--state-dir", n.path("state"), "--resolv-conf", n.path("resolv.conf"),
		"--upstream", "127.0.0.1:53", "--metrics", nodeMetrics, "--log-level", "warn",
		"--pod-qps", "0"}, source...) // --pod-qps 0: dnsperf is one source at full speed
	a := testenv.StartAgent(tb, n.node, ztdnsBinary(tb), args...)
	a.WaitReady(tb, n.path("ztdns.sock"), readyTimeout)
	s := &dnsServer{
		proc:    a,
		addr:    resolverAddr,
		ctl:     &agenttest.Agent{Addr: resolverAddr, Socket: n.path("ztdns.sock")},
		metrics: netip.MustParseAddrPort(nodeMetrics),
		netns:   &n.node.Netns,
	}
	s.waitLoaded(tb, names)
	return s
}

// forwardAPI makes env's API server, on the machine's loopback, reachable
// at the same address from the node namespace, which has a loopback of its
// own: env.Kubeconfig then works for an agent in the node.
func (n *captureNode) forwardAPI(tb testing.TB, env *kubetest.Env) *testenv.Forwarder {
	tb.Helper()
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		tb.Fatal(err)
	}
	return testenv.ForwardTCP(tb, &n.node.Netns, u.Host, u.Host)
}

// pod adds an unmarked pod whose nameserver is podNameserver.
func (n *captureNode) pod(tb testing.TB) *testenv.Pod {
	tb.Helper()
	return n.node.AddPod(tb, testenv.PodConfig{Nameservers: []string{podNameserver}})
}

// mark captures the pod with `ztdns capture add`, as a pod of namespace
// ns-000.
func (n *captureNode) mark(tb testing.TB, p *testenv.Pod, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 15*time.Second)
	defer cancel()
	out, err := n.node.Nsenter(ctx, ztdnsBinary(tb), "capture", "add", "--socket", n.path("ztdns.sock"),
		"--netns", p.Path(), "--namespace", "ns-000", "--name", name).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "captured") {
		tb.Fatalf("ztdns capture add: %v\n%s", err, out)
	}
}

// inPod is a starter for commands in the pod, inside the cgroup when cg is
// not nil (where the programs run).
func inPod(p *testenv.Pod, cg *testenv.Cgroup) starter {
	return func(ctx context.Context, name string, args ...string) *exec.Cmd {
		return p.Command(ctx, cg, name, args...)
	}
}
