//go:build linux

package cnie2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/pkg/invoke"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// The node side of the tests that run a real agent: `ztdns agent` in the
// runtime's node namespace with capture on (its programs attached to a test
// cgroup, pinned in a private bpffs), and the pods' own nameserver on a
// node address.

// Addresses on the node. Pods name ownNameserver in their resolv.conf; a
// test DNS server behind it answers every name with ownMarker, so an answer
// tells who gave it: ztdns (capture) or the pod's own nameserver.
const (
	ownNameserver = "198.51.100.53"
	// agentUpstream is the agent's --upstream. Nothing listens there and the
	// node has no route for it: the tests only ask names the agent's table
	// holds or names a captured pod's own nameserver answers.
	agentUpstream = "198.51.100.55"
)

var (
	ownMarker4 = netip.MustParseAddr("203.0.113.99")
	ownMarker6 = netip.MustParseAddr("2001:db8::99")
)

// addressHost is a ServiceEntry host with a fixed address in every test's
// manifests (the walkthrough's "DNS capture in action"); exported to every
// namespace, so a captured pod anywhere gets addressVIP.
const addressHost = "address.internal"

var addressVIP = netip.MustParseAddr("198.51.100.1")

// Namespaces of the config-dir manifests: ambientNS is labelled
// istio.io/dataplane-mode=ambient, plainNS is not.
const (
	ambientNS = "shop"
	plainNS   = "late"
)

// baseManifests declare the namespaces and the ServiceEntry.
var baseManifests = map[string]string{
	"namespaces.yaml": namespaceManifest("default", false) + "---\n" +
		namespaceManifest(ambientNS, true) + "---\n" + namespaceManifest(plainNS, false),
	"serviceentry.yaml": `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-address
  namespace: default
spec:
  addresses:
  - ` + addressVIP.String() + `
  hosts:
  - ` + addressHost + `
  ports:
  - name: http
    number: 80
    protocol: HTTP
`,
}

func namespaceManifest(name string, ambient bool) string {
	m := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + name + "\n"
	if ambient {
		m += "  labels:\n    istio.io/dataplane-mode: ambient\n"
	}
	return m
}

// podManifest is a Pod object with the labels and annotations the capture
// decision reads; no status, since its IP is the runtime's to give.
func podManifest(namespace, name string, labels, annotations map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n", name, namespace)
	for _, kv := range []struct {
		key string
		m   map[string]string
	}{{"labels", labels}, {"annotations", annotations}} {
		if len(kv.m) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  %s:\n", kv.key)
		for _, k := range slices.Sorted(maps.Keys(kv.m)) {
			fmt.Fprintf(&b, "    %s: %q\n", k, kv.m[k])
		}
	}
	b.WriteString("spec:\n  containers:\n  - name: app\n    image: example\n")
	return b.String()
}

// NodeOptions shape a capturingNode.
type NodeOptions struct {
	Runtime RuntimeOptions
	// Manifests are extra files for --config-dir, by file name, on top of
	// baseManifests.
	Manifests map[string]string
	// SourceArgs replace "--config-dir DIR" on the agent's command line
	// (e.g. --kubeconfig and --node-name).
	SourceArgs []string
}

// capturingNode is a Runtime whose node runs a real agent with capture on.
type capturingNode struct {
	*Runtime
	bin        string
	cg         *testenv.Cgroup
	bpffs      string // --bpffs: <private bpffs mount>/ztdns
	configDir  string
	stateDir   string
	resolvConf string
	sourceArgs []string
	// own is the pods' own nameserver, on ownNameserver in the node.
	own *dnstest.Server
}

// newCapturingNode sets up the runtime, the cgroup, bpffs, manifests and
// the pods' own nameserver. It starts no agent (startAgent does).
func newCapturingNode(t *testing.T, opts NodeOptions) *capturingNode {
	t.Helper()
	testenv.LookPath(t, "dig") // every test asks from inside its pods
	r := NewRuntime(t, opts.Runtime)
	n := &capturingNode{
		Runtime:    r,
		bin:        ztdnsBinary(t),
		cg:         testenv.NewCgroup(t),
		bpffs:      filepath.Join(testenv.NewBPFFS(t), "ztdns"),
		configDir:  filepath.Join(r.Dir, "manifests"),
		stateDir:   filepath.Join(r.Dir, "state"),
		resolvConf: filepath.Join(r.Dir, "resolv.conf"),
		sourceArgs: opts.SourceArgs,
	}
	if n.sourceArgs == nil {
		n.sourceArgs = []string{"--config-dir", n.configDir}
	}
	if err := os.Mkdir(n.configDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, m := range baseManifests {
		n.writeManifest(t, name, m)
	}
	for name, m := range opts.Manifests {
		n.writeManifest(t, name, m)
	}
	// The node's resolv.conf, for the agent's search domains: never the
	// machine's own.
	if err := os.WriteFile(n.resolvConf, []byte("nameserver "+agentUpstream+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	n.own = r.Node.ServeNameserver(t, netip.MustParseAddr(ownNameserver), dnstest.Marker(ownMarker4, ownMarker6))

	// Registered before any agent starts, so it runs after they are
	// killed: a test that failed half-way leaves nothing attached.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err := r.Node.Nsenter(ctx, n.bin, "uninstall", "--bpffs", n.bpffs, "--cgroup", n.cg.Path).CombinedOutput()
		if err != nil {
			t.Errorf("cleanup: ztdns uninstall: %v\n%s", err, out)
		}
	})
	return n
}

// agentArgs is the agent's command line, as a user would type it.
func (n *capturingNode) agentArgs() []string {
	return append(append([]string{"agent"}, n.sourceArgs...),
		"--cgroup", n.cg.Path,
		"--bpffs", n.bpffs,
		"--socket", n.Socket,
		"--state-dir", n.stateDir,
		"--upstream", agentUpstream,
		"--resolv-conf", n.resolvConf,
	)
}

// startAgent starts an agent and waits until it serves its table (its
// control socket answers only once it has restored and reconciled its
// marks and replayed what the plugin recorded).
func (n *capturingNode) startAgent(t *testing.T) *testenv.Agent {
	t.Helper()
	a := testenv.StartAgent(t, n.Node, n.bin, n.agentArgs()...)
	a.WaitReady(t, n.Socket, 30*time.Second)
	return a
}

// writeManifest writes (or replaces) a file of the config dir atomically,
// so the agent's watch never reads half of it.
func (n *capturingNode) writeManifest(t *testing.T, name, content string) {
	t.Helper()
	tmp := filepath.Join(n.Dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.configDir, name)); err != nil {
		t.Fatal(err)
	}
}

// podRows returns what `ztdns pods -o json` prints.
func (n *capturingNode) podRows(t *testing.T) []control.PodRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, "pods", "--socket", n.Socket, "-o", "json").Output()
	if err != nil {
		t.Fatalf("ztdns pods: %v", err)
	}
	var rows []control.PodRow
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("ztdns pods -o json: %v\n%s", err, out)
	}
	return rows
}

// rowsOf returns the rows of `ztdns pods` for the pod's sandbox.
func rowsOf(rows []control.PodRow, p *Pod) []control.PodRow {
	var out []control.PodRow
	for _, r := range rows {
		if r.ContainerID == p.ContainerID {
			out = append(out, r)
		}
	}
	return out
}

// requireRow checks that `ztdns pods` lists the pod's sandbox exactly once,
// with its identity, the runtime's IPs, its cookie and the decision.
func (n *capturingNode) requireRow(t *testing.T, p *Pod, ips []netip.Addr, captured bool, reason string) control.PodRow {
	t.Helper()
	rows := n.podRows(t)
	got := rowsOf(rows, p)
	if len(got) != 1 {
		t.Fatalf("ztdns pods lists the container %s %d times, want once:\n%+v", p.ContainerID, len(got), rows)
	}
	row := got[0]
	var wantIPs []string
	for _, ip := range ips {
		wantIPs = append(wantIPs, ip.String())
	}
	if row.Namespace != p.Namespace || row.Name != p.Name || row.NetnsCookie != cookieOf(t, p) || row.NetnsPath != p.Path() ||
		!slices.Equal(row.IPs, wantIPs) || row.Captured != captured || row.Marked != captured || row.Reason != reason {
		t.Fatalf("ztdns pods row = %+v\nwant %s/%s, netns cookie %d at %s, IPs %v, captured and marked %v, reason %q",
			row, p.Namespace, p.Name, cookieOf(t, p), p.Path(), wantIPs, captured, reason)
	}
	return row
}

// markedCookies reads the pinned pods map itself (not through the agent)
// and returns its keys, the netns cookies the programs redirect.
func (n *capturingNode) markedCookies(t *testing.T) []uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.bpffs, "pods"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open the pinned pods map: %v", err)
	}
	defer m.Close()
	var (
		cookie  uint64
		value   = make([]byte, m.ValueSize())
		cookies []uint64
	)
	it := m.Iterate()
	for it.Next(&cookie, &value) {
		cookies = append(cookies, cookie)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read the pinned pods map: %v", err)
	}
	slices.Sort(cookies)
	return cookies
}

// isMarked reports whether the pods map holds the pod's netns cookie.
func (n *capturingNode) isMarked(t *testing.T, p *Pod) bool {
	t.Helper()
	return slices.Contains(n.markedCookies(t), cookieOf(t, p))
}

// waitMarked polls the pods map until the pod's mark is as wanted and
// returns how long that took; it fails the test after within.
func (n *capturingNode) waitMarked(t *testing.T, p *Pod, want bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for n.isMarked(t, p) != want {
		if time.Since(start) > within {
			t.Fatalf("the pods map still says marked=%v for %s/%s after %v; ztdns pods: %+v",
				!want, p.Namespace, p.Name, within, rowsOf(n.podRows(t), p))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// Clients a pod resolves with. Each runs in the pod's network namespace
// (with its resolv.conf) and in the test cgroup the programs watch.
type client struct {
	name string
	args func(host string) []string
	// parse returns the IPv4 addresses of the output.
	parse func(out string) []netip.Addr
}

var (
	digUDP = client{name: "dig", args: func(h string) []string { return []string{"dig", "+short", "+notcp", "+time=2", "+tries=1", h} }, parse: parseAddrs4}
	digTCP = client{name: "dig +tcp", args: func(h string) []string { return []string{"dig", "+short", "+tcp", "+time=2", "+tries=1", h} }, parse: parseAddrs4}
	// getent uses glibc's stub resolver: connected UDP sockets.
	getent = client{name: "getent", args: func(h string) []string { return []string{"getent", "ahostsv4", h} }, parse: parseAddrs4}
)

// resolve asks for host's IPv4 addresses from inside the pod.
func (n *capturingNode) resolve(t *testing.T, p *Pod, c client, host string) ([]netip.Addr, error) {
	t.Helper()
	args := c.args(host)
	out, err := p.Output(t, n.cg, 10*time.Second, args[0], args[1:]...)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", c.name, host, err, out)
	}
	addrs := c.parse(out)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s %s printed no IPv4 address: %q", c.name, host, out)
	}
	return addrs, nil
}

// requireCaptured checks that the pod's queries for addressHost are
// answered by ztdns (addressVIP), not by its own nameserver, with every
// client given.
func (n *capturingNode) requireCaptured(t *testing.T, p *Pod, clients ...client) {
	t.Helper()
	n.requireAnswer(t, p, addressVIP, "ztdns (captured)", clients...)
}

// requireNotCaptured checks that the pod's queries reach its own
// nameserver.
func (n *capturingNode) requireNotCaptured(t *testing.T, p *Pod, clients ...client) {
	t.Helper()
	n.requireAnswer(t, p, ownMarker4, "the pod's own nameserver (not captured)", clients...)
}

func (n *capturingNode) requireAnswer(t *testing.T, p *Pod, want netip.Addr, who string, clients ...client) {
	t.Helper()
	if len(clients) == 0 {
		clients = []client{digUDP}
	}
	for _, c := range clients {
		got, err := n.resolve(t, p, c, addressHost)
		if err != nil || !slices.Equal(got, []netip.Addr{want}) {
			t.Fatalf("%s/%s: %s %s = %v, %v; want %s from %s", p.Namespace, p.Name, c.name, addressHost, got, err, want, who)
		}
	}
}

// parseAddrs4 returns the IPv4 addresses among the words of out, in order,
// each once.
func parseAddrs4(out string) []netip.Addr {
	var addrs []netip.Addr
	for _, w := range strings.Fields(out) {
		if a, err := netip.ParseAddr(w); err == nil && a.Is4() && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// addPod creates a pod with the node's nameserver, runs ADD and returns
// its IPs from the result.
func (n *capturingNode) addPod(t *testing.T, namespace, name string) (*Pod, []netip.Addr) {
	t.Helper()
	p := n.NewPod(t, PodOptions{Namespace: namespace, Name: name, Nameservers: []string{ownNameserver}})
	res, err := n.Add(t, p)
	if err != nil {
		t.Fatalf("ADD of %s/%s: %v", namespace, name, err)
	}
	return p, requireBridgeResult(t, n.Runtime, p, res, n.Gateway6.IsValid())
}

// addPrimaryOnly runs ADD of the primary plugin alone, as for a pod that
// started before ztdns was installed: it has its network, and ztdns never
// heard of it. The full conflist's DEL runs at cleanup.
func (n *capturingNode) addPrimaryOnly(t *testing.T, p *Pod) {
	t.Helper()
	primary := *n.list
	primary.Plugins = n.list.Plugins[:len(n.list.Plugins)-1]
	t.Cleanup(func() {
		p.delOnce.Do(func() {
			if err := n.del(p); err != nil {
				t.Errorf("cleanup: DEL of %s: %v", p.Name, err)
			}
		})
	})
	err := n.inNode(func(ctx context.Context) error {
		_, err := n.cni.AddNetworkList(ctx, &primary, p.rt)
		return err
	})
	if err != nil {
		t.Fatalf("ADD of the primary plugin alone: %v", err)
	}
}

// waitSourceHas waits until the agent's source knows the pod namespace/name
// (`ztdns pods` lists it).
func (n *capturingNode) waitSourceHas(t *testing.T, namespace, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range n.podRows(t) {
			if r.Namespace == namespace && r.Name == name {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's source does not list the pod %s/%s after 10s", namespace, name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pluginRun is one invocation of the ztdns plugin binary, run the way
// libcni runs a plugin, with stdin given verbatim (libcni itself only
// sends configurations it could marshal).
func (n *capturingNode) pluginRun(stdin []byte, command string, p *Pod, netns string, cniArgs [][2]string) error {
	return n.inNode(func(ctx context.Context) error {
		return libcniExec(ctx, filepath.Join(n.BinDir, "ztdns"), stdin, command, p.ContainerID, netns, cniArgs, n.BinDir)
	})
}

// libcniExec runs a plugin with libcni's executor, as a runtime does.
func libcniExec(ctx context.Context, plugin string, stdin []byte, command, containerID, netns string, cniArgs [][2]string, path string) error {
	args := &invoke.Args{Command: command, ContainerID: containerID, NetNS: netns, PluginArgs: cniArgs, IfName: "eth0", Path: path}
	return invoke.ExecPluginWithoutResult(ctx, plugin, stdin, args, pluginExec)
}
