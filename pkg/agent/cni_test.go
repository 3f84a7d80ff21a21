//go:build linux

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// marks is the capture programs' pods map, without the programs.
type marks struct {
	mu      sync.Mutex
	m       map[uint64]redirect.PodInfo
	sweeps  int // SweepNameservers calls
	unmarks int
	fail    error // what Mark answers, when set
}

func (m *marks) SweepNameservers() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweeps++
	return 0, nil
}

func (m *marks) Mark(cookie uint64, pod redirect.PodInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.m[cookie] = pod
	return nil
}

func (m *marks) Unmark(cookie uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unmarks++
	delete(m.m, cookie)
	return nil
}

func (m *marks) Pods() ([]redirect.MarkedPod, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []redirect.MarkedPod
	for c, p := range m.m {
		out = append(out, redirect.MarkedPod{NetnsCookie: c, PodInfo: p})
	}
	return out, nil
}

func (m *marks) cookies() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.m))
}

const testNode = "node-a"

// cniAgent is an agent as the CNI plugin sees it: its capture controller
// looks into the node's real network namespaces and /proc, and marks a map
// of its own.
func cniAgent(t *testing.T) (*Agent, *marks) {
	t.Helper()
	testenv.RequireRoot(t)
	a := &Agent{cfg: Config{NodeName: testNode, ProcRoot: "/proc"}, log: slog.New(slog.DiscardHandler), pods: podcache.New(),
		hostCookies: nodeCookies("/proc", slog.New(slog.DiscardHandler), slog.LevelWarn)}
	m := &marks{m: map[uint64]redirect.PodInfo{}}
	ctl := capture.New(capture.Config{StateDir: t.TempDir(), NodeName: testNode, DNSCaptureDefault: true, HostCookies: a.hostCookies, Logger: a.log},
		a.pods, m, capture.ProcNamespaces{Root: "/proc"})
	t.Cleanup(ctl.Close)
	if err := ctl.Restore(); err != nil { // as reconcileCapture does
		t.Fatal(err)
	}
	a.dataplane = &dataplane{controller: ctl, pods: a.pods}
	return a, m
}

// feedSource gives the agent a snapshot's pods, in the ambient namespace
// "shop", as apply does.
func feedSource(a *Agent, pods ...model.Pod) {
	a.pods.SetSourcePods(pods)
	a.dataplane.controller.SetNamespaces([]model.Namespace{{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}}})
	a.dataplane.controller.Redecide()
}

// podNetns makes a pod's network namespace with these addresses.
func podNetns(t *testing.T, addrs ...string) *testenv.Netns {
	t.Helper()
	n := testenv.NewNetns(t, testenv.UniqueName("ztcni-"))
	for _, addr := range addrs {
		n.AddAddr(t, addr, "lo")
	}
	return n
}

// runPause runs a process in the pod's network namespace, as its pause
// process, until the test ends (it is what a scan of /proc finds), and
// returns the namespace's cookie.
func runPause(t *testing.T, n *testenv.Netns) uint64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pause := n.Command(ctx, nil, "sleep", "600")
	if err := pause.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = pause.Wait() })
	n.WaitIn(t, pause.Process.Pid)
	return cookieOf(t, n)
}

// cookieOf is the network namespace's cookie, as the plugin sends it.
func cookieOf(t *testing.T, n *testenv.Netns) uint64 {
	t.Helper()
	cookie, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return cookie
}

// adoptedPod runs a pod with the address ip before the source names it,
// shop/web-0, and checks that the agent adopted it (found it in /proc by
// its IP, and marked it). It returns the pod's namespace and cookie.
func adoptedPod(t *testing.T, a *Agent, m *marks, ip string) (*testenv.Netns, uint64) {
	t.Helper()
	n := podNetns(t, ip+"/32")
	cookie := runPause(t, n)
	feedSource(a, model.Pod{Namespace: "shop", Name: "web-0", UID: "uid-1", NodeName: testNode, IPs: []netip.Addr{netip.MustParseAddr(ip)}})
	if p := a.pods.Get("shop", "web-0"); p.Attachment == nil || !slices.Equal(m.cookies(), []uint64{cookie}) {
		t.Fatalf("the running pod was not adopted: attachment %+v, marks %v", p.Attachment, m.cookies())
	}
	return n, cookie
}

// TestDelReleasesAnAdoptedPod: a pod that ran before the agent was adopted
// (found in /proc by its IP); the runtime's DEL names its sandbox's
// container ID, which the agent never heard, and the pod's name: its mark
// and record go.
func TestDelReleasesAnAdoptedPod(t *testing.T) {
	a, m := cniAgent(t)
	n, _ := adoptedPod(t, a, m, "198.18.77.2")

	del := control.CNIDelRequest{ContainerID: "6b1e0c9d2f", Netns: n.Path(), PodNamespace: "shop", PodName: "web-0"}
	if err := a.cniDel(del); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("marks %v after the pod's DEL, want none", got)
	}
	if p := a.pods.Get("shop", "web-0"); p.Attachment != nil {
		t.Errorf("the pod keeps its adopted record after its DEL: %+v", p.Attachment)
	}
}

// TestAddWithALinkLocalAddress: the primary plugin's result may list a
// link-local address of the pod (IPv6 on every interface; some plugins'
// IPv4 too). An ADD that claims one is not refused, and the address is no
// pod's in the registry: any pod may have the same.
func TestAddWithALinkLocalAddress(t *testing.T) {
	a, m := cniAgent(t)
	n := podNetns(t, "198.18.77.3/32", "169.254.77.3/16")
	cookie := cookieOf(t, n)
	feedSource(a)
	ip, linkLocal := netip.MustParseAddr("198.18.77.3"), netip.MustParseAddr("169.254.77.3")
	resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0",
		IPs: []netip.Addr{ip, linkLocal}, NetnsCookie: cookie})
	if err != nil || !resp.Captured {
		t.Fatalf("ADD = %+v, %v; want captured", resp, err)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the pod's", got)
	}
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web-0" {
		t.Errorf("%s is %v's, want shop/web-0's", ip, p)
	}
	if p := a.pods.Lookup(linkLocal); p != nil {
		t.Errorf("the link-local %s is %s's", linkLocal, p.Key())
	}
}

// TestAddOfANamespaceWithManyAddresses: the namespace of an ADD is the
// runtime's, so more addresses than a scan reads before taking a namespace
// for no pod's (netns.MaxAddrs) do not fail the pod; the agent
// reads up to maxAddedNetnsAddrs, and refuses past that.
func TestAddOfANamespaceWithManyAddresses(t *testing.T) {
	a, m := cniAgent(t)
	var addrs []string
	for i := range netns.MaxAddrs + 36 {
		addrs = append(addrs, fmt.Sprintf("198.18.%d.%d/32", 100+i/200, 1+i%200))
	}
	n := podNetns(t, addrs...)
	cookie := cookieOf(t, n)
	feedSource(a)
	ip := netip.MustParseAddr("198.18.100.1")
	resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie})
	if err != nil || !resp.Captured {
		t.Fatalf("ADD of a namespace with %d addresses = %+v, %v; want captured", len(addrs), resp, err)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the pod's", got)
	}
}

// TestReplayedAddWithALoopbackAddress: an ADD an older plugin recorded
// may list 127.0.0.1 (it kept every address of the result); replayed, it
// is applied with the pod's own address, not refused and forgotten.
func TestReplayedAddWithALoopbackAddress(t *testing.T) {
	a, m := cniAgent(t)
	a.cfg.Socket = filepath.Join(t.TempDir(), "ztdns.sock")
	n := podNetns(t, "198.18.77.6/32")
	cookie := cookieOf(t, n)
	feedSource(a)
	ip := netip.MustParseAddr("198.18.77.6")
	recordPending(t, a.pendingDir(), "add", "c0ffee0c", control.CNIAddRequest{ContainerID: "c0ffee0c", Netns: n.Path(), IfName: "eth0",
		PodNamespace: "shop", PodName: "web-1", IPs: []netip.Addr{ip, netip.MustParseAddr("127.0.0.1")}, NetnsCookie: cookie})
	a.keepHouse(canceled(t))
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the pod's (%d)", got, cookie)
	}
	if p := a.pods.Get("shop", "web-1"); p == nil || p.Attachment == nil || !slices.Equal(p.Attachment.IPs, []netip.Addr{ip}) {
		t.Errorf("shop/web-1 is %+v, want recorded with %s alone", p, ip)
	}
}

// TestAddTheSourceContradicts: the source's view of a pod may lag behind
// the runtime (a StatefulSet pod made again under its name, with a new
// UID, before the watch saw it). Such an ADD fails no pod: it is answered
// "not captured", records nothing and is counted; once the source agrees,
// the running pod is adopted. What contradicts the network namespace itself
// is still refused.
func TestAddTheSourceContradicts(t *testing.T) {
	a, m := cniAgent(t)
	n := podNetns(t, "198.18.77.4/32")
	cookie := runPause(t, n)
	ip := netip.MustParseAddr("198.18.77.4")
	old := model.Pod{Namespace: "shop", Name: "web-0", UID: "uid-1", NodeName: testNode, IPs: []netip.Addr{netip.MustParseAddr("198.18.77.9")}}
	elsewhere := model.Pod{Namespace: "shop", Name: "web-1", UID: "uid-2", NodeName: "node-b"}
	feedSource(a, old, elsewhere)
	add := control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0", PodUID: "uid-3",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie}
	outcome := metricCNIEvents.WithLabelValues("add", capture.ReasonSourceMismatch)
	before := testutil.ToFloat64(outcome)

	for _, tc := range []struct {
		what string
		req  func(control.CNIAddRequest) control.CNIAddRequest
	}{
		{"another UID", func(r control.CNIAddRequest) control.CNIAddRequest { return r }},
		{"a pod of another node", func(r control.CNIAddRequest) control.CNIAddRequest {
			r.PodName, r.PodUID = "web-1", "uid-2"
			return r
		}},
	} {
		resp, err := a.cniAdd(tc.req(add))
		if err != nil || resp.Captured || resp.Reason != capture.ReasonSourceMismatch {
			t.Errorf("ADD with %s than the source's: %+v, %v; want not captured (%s), no error", tc.what, resp, err, capture.ReasonSourceMismatch)
		}
	}
	if got := testutil.ToFloat64(outcome) - before; got != 2 {
		t.Errorf("%s counted %v times, want 2", capture.ReasonSourceMismatch, got)
	}
	if atts := a.pods.Attachments(); len(atts) != 0 || len(m.cookies()) != 0 {
		t.Errorf("recorded %+v, marked %v; want nothing", atts, m.cookies())
	}
	if p := a.pods.Lookup(ip); p != nil {
		t.Errorf("%s is %s's: the ADD's claim was recorded", ip, p.Key())
	}

	// Still refused: an ADD whose cookie or IPs are not its namespace's.
	wrongCookie, wrongIP := add, add
	wrongCookie.NetnsCookie++
	wrongIP.IPs = []netip.Addr{netip.MustParseAddr("198.18.77.5")}
	for _, req := range []control.CNIAddRequest{wrongCookie, wrongIP} {
		if _, err := a.cniAdd(req); control.StatusOf(err) != http.StatusForbidden {
			t.Errorf("ADD %+v: %v, want refused (403)", req, err)
		}
	}

	// The source catches up: the running pod is adopted.
	feedSource(a, model.Pod{Namespace: "shop", Name: "web-0", UID: "uid-3", NodeName: testNode, IPs: []netip.Addr{ip}}, elsewhere)
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v once the source agrees, want the pod's", got)
	}
}

// recordPending writes a CNI event as the plugin records it while no agent
// answers: <dir>/<kind>/<container ID>.json.
func recordPending(t *testing.T, dir, kind, id string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, kind), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, kind, id+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPendingReplayedWhileServing: events the plugin records while the
// agent serves (it tried in the gap before the control socket listened)
// are applied without a restart: a DEL unmarks its pod, an ADD captures
// its pod; and the looks that no event triggers run too (the nameserver
// sweep). (Before: recorded events waited for the next restart.)
func TestPendingReplayedWhileServing(t *testing.T) {
	a, m := cniAgent(t)
	a.cfg.Socket = filepath.Join(t.TempDir(), "ztdns.sock")
	dir := a.pendingDir()
	gone, added := podNetns(t, "198.18.77.4/32"), podNetns(t, "198.18.77.5/32")
	cookieGone := cookieOf(t, gone)
	cookieAdded := cookieOf(t, added)
	feedSource(a)
	if _, err := a.cniAdd(control.CNIAddRequest{ContainerID: "c0ffee01", Netns: gone.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "old",
		IPs: []netip.Addr{netip.MustParseAddr("198.18.77.4")}, NetnsCookie: cookieGone}); err != nil {
		t.Fatal(err)
	}

	old := housekeepingInterval
	housekeepingInterval = 20 * time.Millisecond
	t.Cleanup(func() { housekeepingInterval = old })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); a.keepHouse(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	recordPending(t, dir, "del", "c0ffee01", control.CNIDelRequest{ContainerID: "c0ffee01", Netns: gone.Path()})
	recordPending(t, dir, "add", "c0ffee02", control.CNIAddRequest{ContainerID: "c0ffee02", Netns: added.Path(), IfName: "eth0",
		PodNamespace: "shop", PodName: "new", IPs: []netip.Addr{netip.MustParseAddr("198.18.77.5")}, NetnsCookie: cookieAdded})
	testenv.Eventually(t, 10*time.Second, "only the recorded ADD's pod marked", func() bool { return slices.Equal(m.cookies(), []uint64{cookieAdded}) })
	testenv.Eventually(t, 10*time.Second, "the replayed events forgotten", func() bool {
		dels, _ := cni.PendingDeletes(dir)
		adds, _ := cni.PendingAdds(dir)
		return len(dels) == 0 && len(adds) == 0
	})
	testenv.Eventually(t, 10*time.Second, "a nameserver sweep", func() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.sweeps > 0 })
}

// TestPendingReplayedWithoutCapture: an agent that installs the plugin but
// does not capture still takes the events recorded for it, so the directory
// does not grow by a file per pod deleted in every restart's gap.
func TestPendingReplayedWithoutCapture(t *testing.T) {
	a := &Agent{cfg: Config{Socket: filepath.Join(t.TempDir(), "ztdns.sock")}, log: slog.New(slog.DiscardHandler), pods: podcache.New()}
	dir := a.pendingDir()
	recordPending(t, dir, "del", "c0ffee03", control.CNIDelRequest{ContainerID: "c0ffee03"})
	a.keepHouse(canceled(t))
	if dels, err := cni.PendingDeletes(dir); len(dels) != 0 || err != nil {
		t.Errorf("still recorded: %+v (%v)", dels, err)
	}
}

// TestRefusedPendingDeleteIsForgotten: a recorded DEL the agent refuses as
// it stands (400: a relative netns, as an older plugin recorded it) is
// forgotten, as a refused ADD is, instead of being replayed and logged
// every 30 s for ever and holding one of the pending places.
func TestRefusedPendingDeleteIsForgotten(t *testing.T) {
	a := &Agent{cfg: Config{Socket: filepath.Join(t.TempDir(), "ztdns.sock")}, log: slog.New(slog.DiscardHandler), pods: podcache.New()}
	dir := a.pendingDir()
	recordPending(t, dir, "del", "c0ffee0b", control.CNIDelRequest{ContainerID: "c0ffee0b", Netns: "netns/relative"})
	a.keepHouse(canceled(t))
	if dels, err := cni.PendingDeletes(dir); len(dels) != 0 || err != nil {
		t.Errorf("still recorded: %+v (%v)", dels, err)
	}
}

// canceled is a context already done: keepHouse then makes only its first
// look.
func canceled(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx
}

// TestHandedOverAgentLeavesCapture: an agent that handed over lingers
// (its pod terminates slowly) while its successor marks pods and replays
// the events the plugin recorded: its housekeeping and its source change
// no mark and take no recorded event.
func TestHandedOverAgentLeavesCapture(t *testing.T) {
	a, m := cniAgent(t)
	a.cfg.Socket = filepath.Join(t.TempDir(), "ztdns.sock")
	dir := a.pendingDir()
	n := podNetns(t, "198.18.77.6/32")
	cookie := cookieOf(t, n)
	feedSource(a)
	a.handedOver.Store(true)
	a.fenceCapture()

	recordPending(t, dir, "del", "c0ffee08", control.CNIDelRequest{ContainerID: "c0ffee08"})
	recordPending(t, dir, "add", "c0ffee09", control.CNIAddRequest{ContainerID: "c0ffee09", Netns: n.Path(), IfName: "eth0",
		PodNamespace: "shop", PodName: "new", IPs: []netip.Addr{netip.MustParseAddr("198.18.77.6")}, NetnsCookie: cookie})
	a.keepHouse(canceled(t))
	feedSource(a, model.Pod{Namespace: "shop", Name: "new", UID: "uid-9", NodeName: testNode, IPs: []netip.Addr{netip.MustParseAddr("198.18.77.6")}})
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("marks %v: the old agent marked a pod after the handoff", got)
	}
	dels, _ := cni.PendingDeletes(dir)
	adds, _ := cni.PendingAdds(dir)
	if len(dels) != 1 || len(adds) != 1 {
		t.Errorf("recorded events left: %d DELs, %d ADDs; want both for the successor", len(dels), len(adds))
	}
}

// TestCNIEventsAfterTheHandoffAreUnavailable: an ADD or DEL (or capture
// add or del) that waited for the lock while the agent handed over
// (fenceCapture) is answered 503, which the plugin treats as an agent it could not reach (onAgentUnreachable:
// "allow" records the ADD for the successor), not 500, which fails the pod.
func TestCNIEventsAfterTheHandoffAreUnavailable(t *testing.T) {
	a, m := cniAgent(t)
	n := podNetns(t, "198.18.77.7/32")
	cookie := cookieOf(t, n)
	feedSource(a)
	a.handedOver.Store(true)
	a.fenceCapture()

	_, err := a.cniAdd(control.CNIAddRequest{ContainerID: "c0ffee0a", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "late",
		IPs: []netip.Addr{netip.MustParseAddr("198.18.77.7")}, NetnsCookie: cookie})
	if got := control.StatusOf(err); err == nil || got != http.StatusServiceUnavailable {
		t.Errorf("ADD after the handoff = %v (status %d), want 503", err, got)
	}
	if err := a.cniDel(control.CNIDelRequest{ContainerID: "c0ffee0a"}); control.StatusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("DEL after the handoff = %v, want 503", err)
	}
	// capture add and del wait for the same lock, and answer the same.
	if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "hand"}); control.StatusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("capture add after the handoff = %v (status %d), want 503", err, control.StatusOf(err))
	}
	if err := a.releaseNetns(control.CaptureRequest{Netns: n.Path()}); control.StatusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("capture del after the handoff = %v (status %d), want 503", err, control.StatusOf(err))
	}
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("marks %v after the handoff", got)
	}
}

// installingCNI has an agent install the plugin into binDir and confDir,
// its conflist entry saying onAgentUnreachable policy.
func installingCNI(binDir, confDir, policy string) func(*Config) {
	return func(c *Config) {
		c.CNI = &CNIConfig{BinDir: binDir, ConfDir: confDir, Plugin: cni.Config{OnAgentUnreachable: policy}}
	}
}

// ztdnsPolicy reads the onAgentUnreachable of the ztdns entry in the
// conflist at path ("" without one) and the file's identity: every write
// renames a new file into place.
func ztdnsPolicy(t *testing.T, path string) (string, os.FileInfo) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []struct {
			Type               string `json:"type"`
			OnAgentUnreachable string `json:"onAgentUnreachable"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, p := range list.Plugins {
		if p.Type == cni.PluginType {
			return p.OnAgentUnreachable, info
		}
	}
	return "", info
}

// TestHandedOverAgentStopsInstallingCNI: after a hand-over the plugin's
// conflist entry is the new agent's (an upgrade changed its
// onAgentUnreachable), and stays so, unwritten, while the old agent
// lingers until its pod is deleted. (Before: the old agent's installer ran
// on, and the two wrote their entries in turn every 5 s.)
func TestHandedOverAgentStopsInstallingCNI(t *testing.T) {
	old := cniInstallInterval
	cniInstallInterval = 20 * time.Millisecond
	t.Cleanup(func() { cniInstallInterval = old }) // runs after the agents' stops
	binDir, confDir := t.TempDir(), t.TempDir()
	conflist := filepath.Join(confDir, "10-net.conflist")
	if err := os.WriteFile(conflist, []byte(`{"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bridge", "bridge": "cni0"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, socket, listen, up := handoffSetup(t)
	startTestAgent(t, dir, socket, listen, up, "", installingCNI(binDir, confDir, cni.PolicyAllow)) // lingers, handed over
	testenv.Eventually(t, 10*time.Second, "the old agent's entry installed", func() bool {
		policy, _ := ztdnsPolicy(t, conflist)
		return policy == cni.PolicyAllow
	})
	upNew := netip.MustParseAddrPort("127.0.0.1:9")
	succ := runTestAgent(t, dir, socket, listen, upNew, "", installingCNI(binDir, confDir, cni.PolicyFail))
	waitServedBy(t, socket, succ, upNew)
	testenv.Eventually(t, 10*time.Second, "the new agent's entry installed", func() bool {
		policy, _ := ztdnsPolicy(t, conflist)
		return policy == cni.PolicyFail
	})
	_, installed := ztdnsPolicy(t, conflist)
	// Many installer periods, in which nobody should write: this wait
	// gives a writer the time to show, and passing does not depend on it.
	for range 25 {
		time.Sleep(cniInstallInterval)
		policy, info := ztdnsPolicy(t, conflist)
		if policy != cni.PolicyFail || !os.SameFile(info, installed) {
			t.Fatalf("the conflist was written again after the hand-over: onAgentUnreachable %q, want the new agent's %q", policy, cni.PolicyFail)
		}
	}
}

// TestAddWithAnIPv4MappedAddress: an ADD may give a pod's IPv4 address
// IPv4-mapped (::ffff:a.b.c.d). The pod is marked with its IPv4 address
// and its queries from that address are its own.
func TestAddWithAnIPv4MappedAddress(t *testing.T) {
	a, m := cniAgent(t)
	n := podNetns(t, "203.0.113.94/32")
	cookie := cookieOf(t, n)
	feedSource(a)
	ip := netip.MustParseAddr("203.0.113.94")
	resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0",
		IPs: []netip.Addr{netip.AddrFrom16(ip.As16())}, NetnsCookie: cookie})
	if err != nil || !resp.Captured {
		t.Fatalf("ADD = %+v, %v; want captured", resp, err)
	}
	m.mu.Lock()
	got := m.m[cookie]
	m.mu.Unlock()
	if got.IPv4 != ip || got.IPv6.IsValid() {
		t.Errorf("marked with %+v, want IPv4 %s alone", got, ip)
	}
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web-0" {
		t.Errorf("%s is %v's, want shop/web-0's", ip, p)
	}
}

// TestGoneNetnsRecordDroppedWithoutCapture: with --capture=false an ADD
// still records its pod (it tells the resolver who is asking), and only a
// DEL removed the record: after a lost DEL the dead pod's record kept its
// IP, and the next pod given that IP was answered as the dead one (its
// namespace's view). Housekeeping drops a record whose network namespace is
// gone, as capture's Redecide does, and keeps one whose namespace lives.
func TestGoneNetnsRecordDroppedWithoutCapture(t *testing.T) {
	testenv.RequireRoot(t)
	a := &Agent{cfg: Config{NodeName: testNode, ProcRoot: "/proc", Socket: filepath.Join(t.TempDir(), "ztdns.sock")},
		log: slog.New(slog.DiscardHandler), pods: podcache.New(), hostCookies: nodeCookies("/proc", slog.New(slog.DiscardHandler), slog.LevelWarn)}
	add := func(n *testenv.Netns, namespace, name, id string, ip netip.Addr) {
		t.Helper()
		cookie := cookieOf(t, n)
		resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: id, Netns: n.Path(), IfName: "eth0", PodNamespace: namespace, PodName: name,
			IPs: []netip.Addr{ip}, NetnsCookie: cookie})
		if err != nil || resp.Captured {
			t.Fatalf("ADD of %s/%s = %+v, %v; want not captured", namespace, name, resp, err)
		}
	}
	ip, liveIP := netip.MustParseAddr("203.0.113.41"), netip.MustParseAddr("203.0.113.42")
	dead, live := podNetns(t, ip.String()+"/32"), podNetns(t, liveIP.String()+"/32")
	add(dead, "zeta", "old", "c0ffee10", ip)
	add(live, "shop", "kept", "c0ffee11", liveIP)
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "zeta/old" {
		t.Fatalf("%s is %v's, want zeta/old's", ip, p)
	}

	// The runtime removes the sandbox (unmounting its namespace); the DEL
	// never arrives.
	if out, err := exec.Command("umount", dead.Path()).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v\n%s", dead.Path(), err, out)
	}
	a.housekeep()
	if p := a.pods.Get("zeta", "old"); p != nil {
		t.Errorf("zeta/old still recorded (%+v) after its network namespace is gone", p.Attachment)
	}
	if p := a.pods.Lookup(liveIP); p == nil || p.Key() != "shop/kept" {
		t.Errorf("%s is %v's, want shop/kept's: its namespace lives", liveIP, p)
	}

	// The next pod given the IP is answered as itself (the dead one, whose
	// name sorts after, would take the IP if it were still recorded).
	add(podNetns(t, ip.String()+"/32"), "shop", "web", "c0ffee12", ip)
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web" {
		t.Errorf("%s is %v's, want shop/web's", ip, p)
	}
}

// TestOrphanedRecordDroppedWithoutCapture: with --capture=false, and a source
// that watches the node's pods, the record of a pod the source lost whose
// network namespace lives on with no process in it (a DEL lost, the
// sandbox's namespace left mounted) is forgotten once the source has gone
// without the pod for 5 minutes, as capture's Redecide forgets it: `ztdns
// pods` no longer lists it, nor ztdns_capture_pods counts it. (Before, it
// stayed until the agent restarted.) A record whose pod the source still
// has stays, and so does one whose namespace a process still holds.
func TestOrphanedRecordDroppedWithoutCapture(t *testing.T) {
	testenv.RequireRoot(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// The node's processes, as the agent sees them through --proc-root:
	// one in the node's network namespace, one in busy's.
	procRoot := t.TempDir()
	process := func(pid, netns string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(procRoot, pid, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(netns, filepath.Join(procRoot, pid, "ns", "net")); err != nil {
			t.Fatal(err)
		}
	}
	process("1", "/proc/self/ns/net")
	a := &Agent{cfg: Config{NodeName: testNode, ProcRoot: procRoot, Socket: filepath.Join(t.TempDir(), "ztdns.sock"),
		Source: kube.New(&rest.Config{Host: "https://203.0.113.1"})}, // never run: it watches the node's pods
		log: slog.New(slog.DiscardHandler), pods: podcache.New(), hostCookies: nodeCookies("/proc", slog.New(slog.DiscardHandler), slog.LevelWarn),
		now:    func() time.Time { return now },
		server: &resolver.Server{}} // the pods' rows ask it for their usage
	reg := prometheus.NewRegistry()
	reg.MustRegister(podsCollector{a})
	lostIP := netip.MustParseAddr("203.0.113.51")
	old := model.Pod{Namespace: "zeta", Name: "old", UID: "uid-old", IPs: []netip.Addr{lostIP}}
	busy := model.Pod{Namespace: "zeta", Name: "busy", UID: "uid-busy", IPs: []netip.Addr{netip.MustParseAddr("203.0.113.52")}}
	kept := model.Pod{Namespace: "shop", Name: "kept", UID: "uid-kept", IPs: []netip.Addr{netip.MustParseAddr("203.0.113.53")}}
	a.pods.SetSourcePods([]model.Pod{old, busy, kept})
	for i, p := range []model.Pod{old, busy, kept} {
		n := podNetns(t, p.IPs[0].String()+"/32") // mounted, no process in it
		if p.Name == "busy" {
			process("2", n.Path())
		}
		resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: fmt.Sprintf("c0ffee2%d", i), Netns: n.Path(), IfName: "eth0",
			PodNamespace: p.Namespace, PodName: p.Name, PodUID: p.UID, IPs: p.IPs, NetnsCookie: cookieOf(t, n)})
		if err != nil || resp.Captured {
			t.Fatalf("ADD of %s/%s = %+v, %v; want not captured", p.Namespace, p.Name, resp, err)
		}
	}
	listed := func() []string {
		t.Helper()
		rows, err := a.podRows()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rows {
			if r.ContainerID != "" {
				out = append(out, r.Namespace+"/"+r.Name+" "+r.Reason)
			}
		}
		slices.Sort(out)
		return out
	}
	captureOff := map[string]string{"captured": "false", "reason": capture.ReasonCaptureOff}
	check := func(when string, want []string) {
		t.Helper()
		if got := listed(); !slices.Equal(got, want) {
			t.Errorf("%s: ztdns pods lists %q, want %q", when, got, want)
		}
		if got := metricValue(t, reg, "ztdns_capture_pods", captureOff); got != float64(len(want)) {
			t.Errorf("%s: ztdns_capture_pods%v = %v, want %d", when, captureOff, got, len(want))
		}
	}
	all := []string{"shop/kept capture-off", "zeta/busy capture-off", "zeta/old capture-off"}
	check("every pod running", all)

	// The pods of zeta are deleted; their DELs never come, and their
	// namespaces stay (busy's held by a process the runtime left).
	a.pods.SetSourcePods([]model.Pod{kept})
	a.housekeep()
	check("the source lost zeta's pods just now", all)
	now = now.Add(5 * time.Minute)
	a.housekeep()
	check("the source lost zeta's pods 5 minutes ago", []string{"shop/kept capture-off", "zeta/busy capture-off"})
	if p := a.pods.Lookup(lostIP); p != nil {
		t.Errorf("%s is still %s's", lostIP, p.Key())
	}
}

// TestFailedAddIsLogged: an ADD the agent fails is logged with the pod and
// the cause, whatever the status: a network namespace that cannot be
// opened (400), a mark that fails (500: a full pods map, say); the plugin
// fails the pod's sandbox with it. A cause that lasts fails pod after pod,
// retried by the kubelet: one line per ratelog.Every (10 s) across all
// failed ADDs, so a second failure within it is counted, not logged
// (internal/ratelog's test checks the count on the line after). (Before: only a refused ADD, 403, was logged; the
// others were only counted in ztdns_cni_events_total{outcome="error"}.)
func TestFailedAddIsLogged(t *testing.T) {
	for _, tc := range []struct {
		name   string
		netns  func(t *testing.T) (path string, cookie uint64)
		fail   error
		status string
		cause  string
	}{
		{
			name:   "network namespace gone",
			netns:  func(*testing.T) (string, uint64) { return "/run/netns/" + testenv.UniqueName("ztcni-gone-"), 7 },
			status: "status=400",
			cause:  "no such file or directory",
		},
		{
			name: "mark failed",
			netns: func(t *testing.T) (string, uint64) {
				n := podNetns(t, "198.18.77.9/32")
				return n.Path(), cookieOf(t, n)
			},
			fail:   errors.New("mark netns cookie 7: update: argument list too long"),
			status: "status=500",
			cause:  "marking shop/web-9: mark netns cookie 7: update: argument list too long",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, m := cniAgent(t)
			var log testenv.Log
			a.log = slog.New(slog.NewTextHandler(&log, nil))
			m.fail = tc.fail
			feedSource(a)
			path, cookie := tc.netns(t)
			add := control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: path, IfName: "eth0", PodNamespace: "shop", PodName: "web-9",
				IPs: []netip.Addr{netip.MustParseAddr("198.18.77.9")}, NetnsCookie: cookie}
			if _, err := a.cniAdd(add); err == nil {
				t.Fatal("ADD succeeded")
			}
			line := log.String()
			for _, want := range []string{"a CNI ADD failed", "pod=shop/web-9", "container=6b1e0c9d2f", tc.status, tc.cause} {
				if !strings.Contains(line, want) {
					t.Errorf("the log lacks %q:\n%s", want, line)
				}
			}
			add.ContainerID, add.PodName = "9d2f6b1e0c", "web-10"
			if _, err := a.cniAdd(add); err == nil {
				t.Fatal("second ADD succeeded")
			}
			if strings.Contains(log.String(), "web-10") {
				t.Errorf("a second failure right after the first is logged too:\n%s", log.String())
			}
		})
	}
}

// serveControl serves the agent's control socket, as run does, until the
// test ends, and returns its path.
func serveControl(t *testing.T, a *Agent) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	ln, err := control.Listen(socket, control.Access{Logger: a.log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- control.Serve(ctx, ln, control.NewHandler(controlAPI{a}, a.log)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control socket: %v", err)
		}
	})
	return socket
}

// TestAddTheRuntimeGaveUpOn: an ADD waits for the agent (another event
// holds it) until the plugin gives up on it; under onAgentUnreachable
// "fail" the runtime then tears the sandbox down with a DEL of the same
// container, whose network namespace still exists (ztdns's DEL runs before
// the primary plugin's). The DEL gets the agent first (a mutex keeps no
// order): the ADD that comes after it is stale, and the dead sandbox is
// neither recorded nor marked. (Before: the ADD was carried out after the
// DEL, and the record and the mark stayed until housekeeping found the
// namespace gone.) An ADD of the same container sent after the DEL is
// carried out.
func TestAddTheRuntimeGaveUpOn(t *testing.T) {
	a, m := cniAgent(t)
	ip := netip.MustParseAddr("198.18.77.12")
	n := podNetns(t, ip.String()+"/32")
	cookie := cookieOf(t, n)
	feedSource(a)
	socket := serveControl(t, a)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricCNIEvents)
	addsDone := func() float64 {
		return metricValue(t, reg, "ztdns_cni_events_total", map[string]string{"command": "add"})
	}
	before := addsDone()

	add := control.CNIAddRequest{ContainerID: "c0ffee20", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "late",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie}
	a.cniMu.Lock() // another event is under way
	locked := true
	t.Cleanup(func() {
		if locked {
			a.cniMu.Unlock()
		}
	})
	if _, err := control.NewClient(socket, 200*time.Millisecond).CNIAdd(t.Context(), add); !errors.Is(err, control.ErrUnreachable) {
		t.Fatalf("ADD while the agent is busy = %v, want the plugin to give up (%v)", err, control.ErrUnreachable)
	}
	// The server may take the request only after the plugin gave up: the
	// DEL comes once the ADD waits.
	testenv.Eventually(t, 10*time.Second, "the ADD reaches the agent", func() bool { return a.waitingAdds.waiting(add.ContainerID) > 0 })
	// The runtime's DEL, carried out before the ADD that waits.
	if err := a.cniDelLocked(control.CNIDelRequest{ContainerID: add.ContainerID, Netns: n.Path(),
		PodNamespace: "shop", PodName: "late"}); err != nil {
		t.Fatal(err)
	}
	locked = false
	a.cniMu.Unlock()
	testenv.Eventually(t, 10*time.Second, "the waiting ADD ends", func() bool { return addsDone() != before })
	if att, ok := a.pods.Attachment(add.ContainerID); ok {
		t.Errorf("the deleted sandbox is recorded: %+v", att)
	}
	if p := a.pods.Lookup(ip); p != nil {
		t.Errorf("%s is %s's after its sandbox's DEL", ip, p.Key())
	}
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("marks %v after the sandbox's DEL, want none", got)
	}

	// The runtime sets the sandbox up again under the same ID (CNI allows
	// it): that ADD came after the DEL.
	resp, err := control.NewClient(socket, 10*time.Second).CNIAdd(t.Context(), add)
	if err != nil || !resp.Captured {
		t.Fatalf("ADD after the DEL = %+v, %v; want captured", resp, err)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the sandbox's (%d)", got, cookie)
	}
}

// TestAddClaimingTheIPOfAGoneSandbox: a pod's sandbox is gone, its DEL not
// heard (saved to pending/ while no agent answered, say), and the runtime
// gives its IP to a new pod. The new pod's ADD owns
// the IP and forgets the dead record at once, with its mark; a record
// whose namespace lives keeps its claim. (Before: the record whose
// namespace/name sorts last, team-a/api's, answered for the IP, and the
// dead one stayed, marked, until housekeeping forgot it.)
func TestAddClaimingTheIPOfAGoneSandbox(t *testing.T) {
	a, m := cniAgent(t)
	ip := netip.MustParseAddr("198.18.77.13")
	dead := podNetns(t, ip.String()+"/32")
	deadCookie := cookieOf(t, dead)
	feedSource(a)
	add := func(n *testenv.Netns, namespace, name, id string) {
		t.Helper()
		if _, err := a.cniAdd(control.CNIAddRequest{ContainerID: id, Netns: n.Path(), IfName: "eth0", PodNamespace: namespace, PodName: name,
			IPs: []netip.Addr{ip}, NetnsCookie: cookieOf(t, n)}); err != nil {
			t.Fatalf("ADD of %s/%s: %v", namespace, name, err)
		}
	}
	add(dead, "shop", "zz-job", "c0ffee30")
	if !slices.Contains(m.cookies(), deadCookie) {
		t.Fatalf("marks %v, want shop/zz-job's (%d)", m.cookies(), deadCookie)
	}
	if out, err := exec.Command("umount", dead.Path()).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v\n%s", dead.Path(), err, out)
	}
	// Two sandboxes share the IP for a moment: the older's namespace lives.
	live := podNetns(t, ip.String()+"/32")
	add(live, "team-a", "api", "c0ffee31")
	web := podNetns(t, ip.String()+"/32")
	add(web, "shop", "web", "c0ffee32")

	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web" {
		t.Errorf("%s is %v's, want shop/web's: the newest ADD", ip, p)
	}
	if _, ok := a.pods.Attachment("c0ffee30"); ok {
		t.Error("the gone sandbox's record stays after a new pod claimed its IP")
	}
	if slices.Contains(m.cookies(), deadCookie) {
		t.Errorf("the gone sandbox's mark stays: marks %v", m.cookies())
	}
	if _, ok := a.pods.Attachment("c0ffee31"); !ok {
		t.Error("team-a/api's record, whose namespace lives, was forgotten")
	}
}
