//go:build linux

package cnie2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestKubeEnrolledPodWithoutIstioCNIInTheChain: an agent that installs the
// plugin (--cni-install) into a chain without istio-cni, as on a node where
// istio-cni was uninstalled or never ran, meets a pod annotated
// ambient.istio.io/redirection: enabled, the annotation of another sandbox
// (a pod copied with its annotations, a sandbox made again after istio-cni
// left). istio-cni set up none of the node's sandboxes, and ztunnel routes
// nothing for it: the pod is released once capture.EnrollmentGrace has
// passed, `ztdns pods` says not-enrolled, `ztdns status` says why, and the
// pod's own nameserver answers (before, it was captured for its life, and
// answered with VIPs nothing routes). istio-cni's installer adding its
// entry captures it: istio-cni enrolls the running pods it finds.
//
// istio-cni then leaves the chain again (uninstalled: its Cleanup removes
// its entry and nothing else) while the pod is captured. Istio leaves the
// pods it enrolled in the mesh (their in-pod rules and annotation stay,
// ztunnel keeps serving them), so the pod stays captured, and answered
// with the VIPs ztunnel routes; a pod whose sandbox is made after is
// released once its grace has passed. An agent restarted then keeps both
// decisions. (Before: the captured pod was released too, and its hosts
// with only a VIP answered NXDOMAIN by its own nameserver.)
func TestKubeEnrolledPodWithoutIstioCNIInTheChain(t *testing.T) {
	t.Parallel()
	env, n, _ := newKubeNode(t)
	n.sourceArgs = append(n.sourceArgs, "--cni-install", "--cni-bin-dir", n.BinDir, "--cni-conf-dir", n.ConfDir)

	const nsName = "ledger"
	createAmbientNamespace(t, env, nsName)
	createAddressEntry(t, env)
	agent := n.startAgent(t)

	p, ips := n.addCopiedPod(t, env, nsName, "ledger-0")
	took := n.waitMarked(t, p, false, capture.EnrollmentGrace+markBound)
	t.Logf("the pod was released %v after the first look at its mark", took.Round(time.Millisecond))
	n.requireRow(t, p, ips, false, ambient.ReasonNotEnrolled)
	n.requireNotCaptured(t, p)
	if w := n.statusWarning(t, "istio-cni is not in the node's CNI chain"); !strings.Contains(w, n.ConfFile) {
		t.Errorf("status warning %q does not name %s", w, n.ConfFile)
	}

	// istio-cni's installer appends its entry; the agent puts ztdns's
	// after it.
	n.istioCNIEntry(t, true, "kube-system")
	n.waitMarked(t, p, true, markBound)
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireCaptured(t, p)
	if got := pluginTypesOf(t, n.ConfFile); !slices.Equal(got, []string{"bridge", "istio-cni", "ztdns"}) {
		t.Errorf("%s has plugins %v, want bridge, istio-cni, ztdns", n.ConfFile, got)
	}
	if w := n.statusWarning(t, "istio-cni is not in the node's CNI chain"); w != "" {
		t.Errorf("status still warns: %q", w)
	}

	n.istioCNIEntry(t, false) // istio-cni uninstalled (its Cleanup)
	// The warning comes once the agent has decided again without it.
	n.waitStatusWarning(t, "istio-cni is not in the node's CNI chain", capture.EnrollmentGrace+markBound)
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireCaptured(t, p)

	q, qIPs := n.addCopiedPod(t, env, nsName, "ledger-1")
	n.waitMarked(t, q, false, capture.EnrollmentGrace+markBound)
	n.requireRow(t, q, qIPs, false, ambient.ReasonNotEnrolled)
	n.requireNotCaptured(t, q)
	n.requireCaptured(t, p)

	// Ready, the restarted agent has read its record and decided again.
	agent.Stop(t, 10*time.Second)
	n.startAgent(t)
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireRow(t, q, qIPs, false, ambient.ReasonNotEnrolled)
	n.requireCaptured(t, p)
	n.requireNotCaptured(t, q)
}

// addCopiedPod creates the pod namespace/name through the API with
// ambient.istio.io/redirection: enabled, as a pod copied with its
// annotations carries it, waits for the agent's source to have it, runs
// its CNI ADD and reports it running; it returns the pod and its IPs.
func (n *capturingNode) addCopiedPod(t *testing.T, env *kubetest.Env, namespace, name string) (*Pod, []netip.Addr) {
	t.Helper()
	ctx := t.Context()
	createAPIPod(t, env, namespace, name, nil)
	env.SetEnrollment(ctx, namespace, name, model.RedirectionEnabled)
	pod, err := env.Client().CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.waitSourceHas(t, namespace, name)
	p, ips := n.addAPIPod(t, pod)
	env.SetRunning(ctx, pod, ips[:1]...)
	return p, ips
}

// waitStatusWarning polls `ztdns status` until it has a warning that
// contains substr; it fails the test after within.
func (n *capturingNode) waitStatusWarning(t *testing.T, substr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for n.statusWarning(t, substr) == "" {
		if time.Now().After(deadline) {
			t.Fatalf("ztdns status has no warning with %q after %v", substr, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// istioCNIEntry adds istio-cni's entry, excluding the namespaces excluded
// (its excludeNamespaces), to the runtime's conflist, last, replacing any
// it had, as its installer does (insertCNIConfig: the file read,
// re-marshalled, written by rename), or removes it, as its Cleanup does.
func (n *capturingNode) istioCNIEntry(t *testing.T, add bool, excluded ...string) {
	t.Helper()
	var conf map[string]any
	data, err := os.ReadFile(n.ConfFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	plugins := slices.DeleteFunc(conf["plugins"].([]any), func(p any) bool { return p.(map[string]any)["type"] == "istio-cni" })
	if add {
		plugins = append(plugins, map[string]any{"name": "istio-cni", "type": "istio-cni", "ambient_enabled": true,
			"cni_agent_run_dir": "/var/run/istio-cni", "exclude_namespaces": excluded, "pod_namespace": "istio-system"})
	}
	conf["plugins"] = plugins
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := n.ConfFile + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, n.ConfFile); err != nil {
		t.Fatal(err)
	}
}

// statusWarning returns the warning of `ztdns status` that contains
// substr, "" when there is none.
func (n *capturingNode) statusWarning(t *testing.T, substr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, "status", "--socket", n.Socket, "-o", "json").Output()
	if err != nil {
		t.Fatalf("ztdns status: %v", err)
	}
	var st control.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("ztdns status -o json: %v\n%s", err, out)
	}
	for _, w := range st.Warnings {
		if strings.Contains(w, substr) {
			return w
		}
	}
	return ""
}

// pluginTypesOf returns the plugin types of the conflist at path, in order.
func pluginTypesOf(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, p := range conf.Plugins {
		types = append(types, p.Type)
	}
	return types
}
