//go:build linux

package cnie2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// The tests here drive the plugin through libcni against a real agent with
// capture on, and check with real clients inside the pods who answers
// their DNS.

// markBound is how long a test waits for a changed namespace label or pod
// annotation to mark or unmark a running pod. The agent takes well under
// a second, which the tests log; the bound is generous so that a loaded
// machine slows a test down without failing it.
const markBound = 15 * time.Second

// TestAddCapturesAndResolves: ADD of a pod in an ambient namespace marks its
// network namespace before the runtime gets the result, the agent lists it
// with what the runtime said, and glibc and dig in the pod, over UDP and
// TCP, get ztdns's answer although they asked the pod's own nameserver.
func TestAddCapturesAndResolves(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{Runtime: RuntimeOptions{IPv6: true}})
	n.startAgent(t)
	p, ips := n.addPod(t, ambientNS, "web-0")

	// Marked when ADD returned: the pod's first query is already captured.
	if !n.isMarked(t, p) {
		t.Fatalf("ADD returned, but the pods map %v lacks the pod's netns cookie %d", n.markedCookies(t), cookieOf(t, p))
	}
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireCaptured(t, p, digUDP, digTCP, getent)

	// ztdns answered from its table: the pod's own nameserver was never
	// asked, by the pod or on its behalf.
	for _, q := range n.own.Received() {
		t.Errorf("the pod's own nameserver was asked %s by %s", q.Name, q.Remote)
	}
	row := rowsOf(n.podRows(t), p)[0]
	if row.Redirected < 3 || row.Restored < 3 {
		t.Errorf("counters after three queries: redirected %d, restored %d; want at least 3 each", row.Redirected, row.Restored)
	}
	if !slices.Contains(testenv.NameserverAddrs(row), ownNameserver+":53") {
		t.Errorf("learned nameservers %v lack the one the pod addressed, %s:53", row.Nameservers, ownNameserver)
	}
	if log := n.Log(t); !strings.Contains(log, "pod handed to the agent") || !strings.Contains(log, "captured=true") {
		t.Errorf("the plugin's log does not record the agent's decision:\n%s", log)
	}
}

// TestDelUncapturesAndForgets: DEL unmarks the pod and removes it from the
// registry and from the agent's record, whether the runtime still passes
// the network namespace or not (it may be gone), and a repeated DEL is
// fine.
func TestDelUncapturesAndForgets(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	n.startAgent(t)
	for _, tc := range []struct {
		name string
		// netnsGone: the runtime passes no CNI_NETNS, as the spec allows
		// once the namespace is gone. The bridge then leaves the pod's
		// eth0 in place, so the pod can still ask its own nameserver.
		netnsGone bool
	}{
		{name: "runtime passes the netns"},
		{name: "runtime passes no netns", netnsGone: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, ips := n.addPod(t, ambientNS, "del-"+strings.ReplaceAll(tc.name, " ", "-"))
			n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
			n.requireCaptured(t, p)

			if tc.netnsGone {
				p.rt.NetNS = ""
			}
			for i := range 2 {
				if err := n.Del(t, p); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
			}
			if n.isMarked(t, p) {
				t.Errorf("after DEL the pods map still holds the pod's netns cookie %d", cookieOf(t, p))
			}
			if rows := rowsOf(n.podRows(t), p); len(rows) != 0 {
				t.Errorf("after DEL ztdns pods still lists the container: %+v", rows)
			}
			for _, a := range n.savedAttachments(t) {
				if a.ContainerID == p.ContainerID || a.NetnsCookie == cookieOf(t, p) {
					t.Errorf("after DEL the agent's record still holds %+v: a restart would bring it back", a)
				}
			}
			if pending, _ := cni.PendingDeletes(n.PendingDir); len(pending) != 0 {
				t.Errorf("the agent took the DEL, yet it is recorded as pending: %+v", pending)
			}
			if tc.netnsGone {
				n.requireNotCaptured(t, p)
			} else if out, err := p.Output(t, nil, 5*time.Second, "ip", "link", "show", "eth0"); err == nil {
				t.Errorf("the bridge's DEL left eth0 in the pod:\n%s", out)
			}
		})
	}
}

// TestOptOutLeavesPodUncaptured: in an ambient namespace, ADD of a pod the
// source knows with ztdns.io/dns-capture: "false", or labelled
// istio.io/dataplane-mode=none, leaves it unmarked and resolving through
// its own nameserver; a pod without either, in the same namespace, is
// captured (so the others prove something).
func TestOptOutLeavesPodUncaptured(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		captured    bool
		reason      string
	}{
		{name: "no opt-out", captured: true, reason: ambient.ReasonAmbient},
		{name: "dns-capture annotation false", annotations: map[string]string{model.AnnotationDNSCapture: "false"}, reason: ambient.ReasonAnnotationOff},
		{name: "dataplane-mode none", labels: map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeNone}, reason: ambient.ReasonDataplaneNone},
	}
	podName := func(caseName string) string { return strings.ReplaceAll(caseName, " ", "-") }
	// The Pod objects are in the config dir before the agent starts, so its
	// source knows them when their ADD comes.
	manifests := map[string]string{}
	for _, tc := range cases {
		manifests["pod-"+podName(tc.name)+".yaml"] = podManifest(ambientNS, podName(tc.name), tc.labels, tc.annotations)
	}
	n := newCapturingNode(t, NodeOptions{Manifests: manifests})
	n.startAgent(t)
	for _, tc := range cases {
		n.waitSourceHas(t, ambientNS, podName(tc.name))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, ips := n.addPod(t, ambientNS, podName(tc.name))
			if got := n.isMarked(t, p); got != tc.captured {
				t.Fatalf("after ADD the pods map says marked=%v, want %v", got, tc.captured)
			}
			n.requireRow(t, p, ips, tc.captured, tc.reason)
			if tc.captured {
				n.requireCaptured(t, p)
			} else {
				n.requireNotCaptured(t, p)
			}
		})
	}
}

// TestExcludedNamespaceLeftAlone: with the agent's default
// --exclude-namespaces (kube-system, as istio-cni's excludeNamespaces), a
// pod in kube-system is left uncaptured and resolves through its own
// nameserver although both it and kube-system are labelled
// istio.io/dataplane-mode=ambient (as a policy engine labels every
// namespace): istio-cni never enrolls it, so ztunnel would route none of
// ztdns's VIPs for it, and CoreDNS's upstream queries stay its own.
func TestExcludedNamespaceLeftAlone(t *testing.T) {
	t.Parallel()
	const ns, name = "kube-system", "coredns-0"
	ambientLabel := map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}
	n := newCapturingNode(t, NodeOptions{Manifests: map[string]string{
		"kube-system.yaml": namespaceManifest(ns, true) + "---\n" + podManifest(ns, name, ambientLabel, nil),
	}})
	n.startAgent(t)
	n.waitSourceHas(t, ns, name)
	p, ips := n.addPod(t, ns, name)
	if n.isMarked(t, p) {
		t.Fatalf("a pod in kube-system was marked: the pods map holds its cookie %d", cookieOf(t, p))
	}
	n.requireRow(t, p, ips, false, ambient.ReasonExcludedNamespace)
	n.requireNotCaptured(t, p)
}

// TestDecisionFollowsRunTimeChanges: a running pod in a namespace that is
// not ambient is marked when the namespace is labelled
// istio.io/dataplane-mode=ambient, unmarked when the pod is annotated
// ztdns.io/dns-capture: "false", marked again when the annotation
// goes, and unmarked when the label goes; each with no restart and no CNI
// event (how long each took is logged).
func TestDecisionFollowsRunTimeChanges(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	n.startAgent(t)
	const name = "app-0"
	p, ips := n.addPod(t, plainNS, name)
	n.requireRow(t, p, ips, false, ambient.ReasonNotAmbient)
	n.requireNotCaptured(t, p)

	namespaces := func(plainAmbient bool) string {
		return namespaceManifest("default", false) + "---\n" + namespaceManifest(ambientNS, true) + "---\n" + namespaceManifest(plainNS, plainAmbient)
	}
	optOut := podManifest(plainNS, name, nil, map[string]string{model.AnnotationDNSCapture: "false"})
	noOptOut := podManifest(plainNS, name, nil, nil)
	for _, step := range []struct {
		name     string
		file     string
		content  string
		captured bool
		reason   string
	}{
		{"label the namespace ambient", "namespaces.yaml", namespaces(true), true, ambient.ReasonAmbient},
		{"annotate the pod dns-capture false", "pod.yaml", optOut, false, ambient.ReasonAnnotationOff},
		{"remove the annotation", "pod.yaml", noOptOut, true, ambient.ReasonAmbient},
		{"remove the namespace label", "namespaces.yaml", namespaces(false), false, ambient.ReasonNotAmbient},
	} {
		n.writeManifest(t, step.file, step.content)
		took := n.waitMarked(t, p, step.captured, markBound)
		t.Logf("%s: pod marked=%v %v after the manifest was written", step.name, step.captured, took.Round(time.Millisecond))
		n.requireRow(t, p, ips, step.captured, step.reason)
		if step.captured {
			n.requireCaptured(t, p)
		} else {
			n.requireNotCaptured(t, p)
		}
	}
}

// TestAgentRestartReconciles stops the agent (SIGTERM), changes things
// while it is down, and starts it again:
//   - a captured pod keeps its mark (same cookie, counters kept) and its
//     capture;
//   - a pod DELeted while it was down (recorded by the plugin) loses its
//     mark and its record;
//   - a pod ADDed while it was down (started uncaptured under
//     onAgentUnreachable "allow", recorded by the plugin) is captured;
//   - marks that no record explains are removed: one on a pod ztdns never
//     heard of, one on a pod its record says is not captured. They are
//     written into the pinned pods map while the agent is down, by this
//     test acting as another user of the bpffs: what an agent that died
//     between marking a pod and saving its record (or a foreign tool)
//     leaves behind. Both pods have a working network and a real
//     nameserver, so a mark left in place would show as captured DNS.
//
// Nothing is listed twice afterwards, and nothing is left pending.
func TestAgentRestartReconciles(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	first := n.startAgent(t)

	kept, keptIPs := n.addPod(t, ambientNS, "kept")
	n.requireCaptured(t, kept)
	keptBefore := n.requireRow(t, kept, keptIPs, true, ambient.ReasonAmbient)
	deleted, _ := n.addPod(t, ambientNS, "deleted")
	if !n.isMarked(t, deleted) {
		t.Fatal("the pod to delete was not marked by its ADD")
	}
	recordedOff, recordedOffIPs := n.addPod(t, plainNS, "recorded-off")
	n.requireRow(t, recordedOff, recordedOffIPs, false, ambient.ReasonNotAmbient)
	unknown := n.NewPod(t, PodOptions{Namespace: ambientNS, Name: "unknown", Nameservers: []string{ownNameserver}})
	n.addPrimaryOnly(t, unknown)

	first.Stop(t, 10*time.Second)

	if err := n.Del(t, deleted); err != nil {
		t.Fatalf("DEL while the agent is down: %v", err)
	}
	if pending, err := cni.PendingDeletes(n.PendingDir); err != nil || len(pending) != 1 || pending[0].ContainerID != deleted.ContainerID {
		t.Fatalf("pending DELs = %+v, %v; want the deleted pod's", pending, err)
	}
	added, addedIPs := n.addPod(t, ambientNS, "added")
	if pending, err := cni.PendingAdds(n.PendingDir); err != nil || len(pending) != 1 || pending[0].ContainerID != added.ContainerID {
		t.Fatalf("pending ADDs = %+v, %v; want the pod added while the agent is down", pending, err)
	}
	if n.isMarked(t, added) {
		t.Fatal("the pod added while the agent is down is marked")
	}
	n.writeStaleMarks(t, unknown, recordedOff)

	second := n.startAgent(t)

	want := []uint64{cookieOf(t, kept), cookieOf(t, added)}
	slices.Sort(want)
	if got := n.markedCookies(t); !slices.Equal(got, want) {
		t.Errorf("pods map after the restart holds %v, want exactly the kept and the added pods' %v (deleted %d, recorded-off %d, unknown %d)",
			got, want, cookieOf(t, deleted), cookieOf(t, recordedOff), cookieOf(t, unknown))
	}

	keptAfter := n.requireRow(t, kept, keptIPs, true, ambient.ReasonAmbient)
	if keptAfter.Redirected < keptBefore.Redirected {
		t.Errorf("the kept pod's counters went from %d to %d redirected queries: its mark was removed and made again",
			keptBefore.Redirected, keptAfter.Redirected)
	}
	n.requireCaptured(t, kept)
	n.requireRow(t, added, addedIPs, true, ambient.ReasonAmbient)
	n.requireCaptured(t, added)
	n.requireRow(t, recordedOff, recordedOffIPs, false, ambient.ReasonNotAmbient)
	n.requireNotCaptured(t, recordedOff)
	n.requireNotCaptured(t, unknown)

	rows := n.podRows(t)
	if r := rowsOf(rows, deleted); len(r) != 0 {
		t.Errorf("ztdns pods still lists the pod deleted while the agent was down: %+v", r)
	}
	containers, cookies := map[string]int{}, map[uint64]int{}
	for _, r := range rows {
		if r.ContainerID != "" {
			containers[r.ContainerID]++
		}
		if r.NetnsCookie != 0 {
			cookies[r.NetnsCookie]++
		}
		if r.ContainerID == "" && r.Marked {
			t.Errorf("ztdns pods lists a mark nobody recorded: %+v", r)
		}
	}
	for id, c := range containers {
		if c != 1 {
			t.Errorf("ztdns pods lists container %s %d times:\n%+v", id, c, rows)
		}
	}
	for cookie, c := range cookies {
		if c != 1 {
			t.Errorf("ztdns pods lists netns cookie %d %d times:\n%+v", cookie, c, rows)
		}
	}
	for _, a := range n.savedAttachments(t) {
		if a.ContainerID == deleted.ContainerID {
			t.Errorf("the agent's record still holds the deleted pod: %+v", a)
		}
	}
	dels, derr := cni.PendingDeletes(n.PendingDir)
	adds, aerr := cni.PendingAdds(n.PendingDir)
	if len(dels)+len(adds) != 0 || derr != nil || aerr != nil {
		t.Errorf("left pending after the restart: DELs %+v (%v), ADDs %+v (%v)", dels, derr, adds, aerr)
	}
	if !second.LogContains("removing a stale mark") {
		t.Errorf("the agent did not log removing the stale marks:\n%s", second.Log())
	}
}

// TestNothingRecordedAfterTheCleanup: after the chart's cleanup (`ztdns
// uninstall`, then `ztdns remove-state` on the agent's directory, which the
// cleanup pod's hostPath volume keeps), the plugin left behind for the pods
// created under ztdns answers their DELs, run with the configuration cached
// at their ADD, with success and records nothing: no agent will come to
// replay it, and a file per pod would gather on the node's tmpfs until a
// reboot. Before the cleanup, a DEL the stopped agent misses is recorded.
func TestNothingRecordedAfterTheCleanup(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	a := n.startAgent(t)
	before, _ := n.addPod(t, ambientNS, "before")
	after, _ := n.addPod(t, ambientNS, "after")
	a.Stop(t, 10*time.Second)

	if err := n.Del(t, before); err != nil {
		t.Fatalf("DEL while the agent is down: %v", err)
	}
	if pending, err := cni.PendingDeletes(n.PendingDir); err != nil || len(pending) != 1 || pending[0].ContainerID != before.ContainerID {
		t.Fatalf("pending DELs = %+v, %v; want the pod deleted while the agent is down", pending, err)
	}

	dir := filepath.Dir(n.Socket)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"uninstall", "--bpffs", n.bpffs, "--cgroup", n.cg.Path, "--cni-bin-dir", n.BinDir, "--cni-conf-dir", n.ConfDir},
		{"remove-state", "--dir", dir},
	} {
		if out, err := n.Node.Nsenter(ctx, n.bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ztdns %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	if err := n.Del(t, after); err != nil {
		t.Fatalf("DEL after the cleanup: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) != 0 {
		t.Errorf("after the cleanup, a DEL left %v in the agent's directory %s, want nothing", left, dir)
	}
}

// TestPolicyFailRetriedOnceAgentIsUp: under onAgentUnreachable "fail" the
// runtime's ADD is refused while no agent listens (the runtime then DELs
// the sandbox and retries with a new one), nothing is recorded for it, and
// the retry is captured once the agent is up. (Without an agent at all,
// and under "allow", see cni_test.go and TestAgentRestartReconciles.)
func TestPolicyFailRetriedOnceAgentIsUp(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{Runtime: RuntimeOptions{Plugin: cni.Config{OnAgentUnreachable: cni.PolicyFail, Timeout: "1s"}}})
	refused := n.NewPod(t, PodOptions{Namespace: ambientNS, Name: "web-0", Nameservers: []string{ownNameserver}})
	_, err := n.Add(t, refused)
	requireCNIError(t, err, types.ErrTryAgainLater, "ztdns agent unreachable at "+n.Socket)
	if err := n.Del(t, refused); err != nil {
		t.Fatalf("the runtime's DEL after the refused ADD: %v", err)
	}
	if adds, _ := cni.PendingAdds(n.PendingDir); len(adds) != 0 {
		t.Fatalf("a refused pod was recorded as pending: %+v", adds)
	}

	n.startAgent(t)
	retried, ips := n.addPod(t, ambientNS, "web-0")
	if got, want := n.markedCookies(t), []uint64{cookieOf(t, retried)}; !slices.Equal(got, want) {
		t.Errorf("pods map = %v, want only the retried sandbox's %v", got, want)
	}
	n.requireRow(t, retried, ips, true, ambient.ReasonAmbient)
	if rows := rowsOf(n.podRows(t), refused); len(rows) != 0 {
		t.Errorf("the refused sandbox is listed: %+v", rows)
	}
	n.requireCaptured(t, retried)
}

// writeStaleMarks puts the pods' netns cookies into the pinned pods map
// directly (flags 0: redirect), bypassing the agent and its record.
func (n *capturingNode) writeStaleMarks(t *testing.T, pods ...*Pod) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.bpffs, "pods"), nil)
	if err != nil {
		t.Fatalf("open the pinned pods map: %v", err)
	}
	defer m.Close()
	for _, p := range pods {
		if err := m.Update(cookieOf(t, p), make([]byte, m.ValueSize()), ebpf.UpdateNoExist); err != nil {
			t.Fatalf("write a stale mark for %s: %v", p.Name, err)
		}
	}
}

// savedAttachments reads the agent's record of the pods it marked.
func (n *capturingNode) savedAttachments(t *testing.T) []podcache.Attachment {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.stateDir, "attachments.json"))
	if err != nil {
		t.Fatalf("the agent's record: %v", err)
	}
	var out []podcache.Attachment
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("the agent's record: %v\n%s", err, b)
	}
	return out
}

// TestBadInputNeverMarks: with the agent running, what a broken runtime or
// conflist sends gets a CNI error with a clear code and message, and leaves
// the pods map, the agent's registry and the pending records as they were.
func TestBadInputNeverMarks(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	n.startAgent(t)
	// A marked pod, so "unchanged" is not "empty".
	control, _ := n.addPod(t, ambientNS, "control")
	if !n.isMarked(t, control) {
		t.Fatal("the control pod is not marked")
	}
	marksBefore := n.markedCookies(t)
	rowsBefore := fmt.Sprintf("%+v", n.podRows(t))

	// The ztdns entry as the runtime would send it, with a prevResult.
	ztdnsConf, err := libcni.InjectConf(n.list.Plugins[len(n.list.Plugins)-1], map[string]any{
		"cniVersion": n.list.CNIVersion, "name": n.list.Name,
		"prevResult": map[string]any{"cniVersion": n.list.CNIVersion, "ips": []any{map[string]any{"address": "10.252.0.200/24"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	withPrevResult := func(prev string) []byte {
		var conf map[string]any
		if err := json.Unmarshal(ztdnsConf.Bytes, &conf); err != nil {
			t.Fatal(err)
		}
		conf["prevResult"] = json.RawMessage(prev)
		b, err := json.Marshal(conf)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, p *Pod) error
		code uint
		want string
	}{
		{
			name: "stdin is not JSON",
			run: func(t *testing.T, p *Pod) error {
				broken := ztdnsConf.Bytes[:len(ztdnsConf.Bytes)/2]
				return n.pluginRun(broken, "ADD", p, p.Path(), p.rt.Args)
			},
			// skel rejects it before ztdns runs.
			code: types.ErrDecodingFailure, want: "unmarshall network config",
		},
		{
			name: "prevResult is malformed",
			run: func(t *testing.T, p *Pod) error {
				return n.pluginRun(withPrevResult(`{"cniVersion":"1.0.0","ips":[{"address":"not-an-address"}]}`), "ADD", p, p.Path(), p.rt.Args)
			},
			code: types.ErrDecodingFailure, want: "ztdns: parse prevResult",
		},
		{
			// Through the whole conflist: the bridge gives the pod its
			// network, then ztdns refuses it.
			name: "CNI_ARGS without K8S_POD_NAMESPACE",
			run: func(t *testing.T, p *Pod) error {
				p.rt.Args = slices.DeleteFunc(p.rt.Args, func(kv [2]string) bool { return kv[0] == "K8S_POD_NAMESPACE" })
				_, err := n.Add(t, p)
				return err
			},
			code: types.ErrInvalidEnvironmentVariables, want: "CNI_ARGS lacks [K8S_POD_NAMESPACE]",
		},
		{
			name: "netns that does not exist",
			run: func(t *testing.T, p *Pod) error {
				return n.pluginRun(ztdnsConf.Bytes, "ADD", p, filepath.Join(n.Dir, "no-such-netns"), p.rt.Args)
			},
			code: types.ErrInvalidNetNS, want: "is not a usable network namespace",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := n.NewPod(t, PodOptions{Namespace: ambientNS, Name: "bad-" + strings.ReplaceAll(tc.name, " ", "-"), Nameservers: []string{ownNameserver}})
			requireCNIError(t, tc.run(t, p), tc.code, tc.want)
			if got := n.markedCookies(t); !slices.Equal(got, marksBefore) {
				t.Errorf("pods map changed from %v to %v", marksBefore, got)
			}
			if got := fmt.Sprintf("%+v", n.podRows(t)); got != rowsBefore {
				t.Errorf("ztdns pods changed from\n%s\nto\n%s", rowsBefore, got)
			}
			if adds, _ := cni.PendingAdds(n.PendingDir); len(adds) != 0 {
				t.Errorf("a refused pod was recorded as pending: %+v", adds)
			}
		})
	}
}
