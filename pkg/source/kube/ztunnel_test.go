package kube

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestZtunnelRevisionMismatch: beside a canary upgrade of Istio's ambient
// mode, the node's ztunnel is upgraded in place to revision 1-28 (its pod
// annotated istio.io/rev: 1-28, as the ztunnel chart does) while the
// agent's --istio-revision is still 1-27: `ztdns status` (Source
// warnings) names the pod, both revisions and the fix, and
// ztdns_kube_ztunnel_revision_mismatch is 1. An agent whose flag is 1-28
// says nothing. Rolled back to a ztunnel without a revision (no
// annotation: it connects to Service istiod, the default revision's), the
// warning moves, with no restart, to the agents whose flag is not default.
// A ztunnel of another node counts for none. (Before, nothing noticed:
// ServiceEntries of 1-28 were forwarded while ztunnel routed their VIPs.)
func TestZtunnelRevisionMismatch(t *testing.T) {
	env := kubetest.Start(t)
	kc := env.Client()
	const node = "node-a"
	createNamespace(t, kc, DefaultIstioNamespace)
	// Both revisions' istiods, and the default's, are installed: their
	// mesh config ConfigMaps are there (TestMeshConfigAbsentIsWarned is
	// about one missing).
	for _, rev := range []string{"1-27", "1-28", ""} {
		createIstiodConfigMap(t, kc, MeshConfigMapName(rev), map[string]string{MeshConfigKey: ""})
	}
	createZtunnelPod(t, kc, DefaultIstioNamespace, "ztunnel-a128", node, "1-28")
	createZtunnelPod(t, kc, DefaultIstioNamespace, "ztunnel-b127", "node-b", "1-27") // another node's: not watched

	agents := map[string]*recorder{} // by --istio-revision
	for _, rev := range []string{"1-27", "1-28", ""} {
		agents[rev] = runSource(t, env.Config, WithNodeName(node), WithIstioRevision(rev))
	}
	// check waits until every agent's snapshot has exactly the ztunnel pod
	// name of the node, then checks each agent's warnings (want[flag]:
	// the texts its one warning holds, none when nil) and gauge.
	check := func(name string, want map[string][]string) {
		t.Helper()
		for flag, rec := range agents {
			rec.waitFor(t, "ztunnel pod "+name, func(s *model.Snapshot) error {
				var got []string
				for _, p := range s.Pods {
					if p.Namespace == DefaultIstioNamespace {
						got = append(got, p.Name)
					}
				}
				if len(got) != 1 || got[0] != name {
					return fmt.Errorf("pods of %s: %q, want %s", DefaultIstioNamespace, got, name)
				}
				return nil
			})
			warnings, gauge := ztunnelWarnings(rec)
			if want[flag] == nil {
				if len(warnings) != 0 || gauge != 0 {
					t.Errorf("--istio-revision=%q, ztunnel %s: warnings %q, gauge %v; want none, 0", flag, name, warnings, gauge)
				}
				continue
			}
			if len(warnings) != 1 || gauge != 1 {
				t.Errorf("--istio-revision=%q, ztunnel %s: warnings %q, gauge %v; want one, 1", flag, name, warnings, gauge)
				continue
			}
			for _, s := range want[flag] {
				if !strings.Contains(warnings[0].Error(), s) {
					t.Errorf("--istio-revision=%q, ztunnel %s: warning %q does not say %q", flag, name, warnings[0], s)
				}
			}
		}
	}
	check("ztunnel-a128", map[string][]string{
		"1-27": {`ztunnel istio-system/ztunnel-a128 on node node-a follows istiod of revision "1-28" (its istio.io/rev annotation), but --istio-revision is "1-27"`,
			"ServiceEntries labelled istio.io/rev=1-28 are forwarded", "mesh config istio-system/istio-1-27 is followed",
			"set --istio-revision=1-28"},
		"": {`follows istiod of revision "1-28"`, `--istio-revision is "default"`, "set --istio-revision=1-28"},
	})

	// Rolled back to the ztunnel chart without a revision.
	if err := kc.CoreV1().Pods(DefaultIstioNamespace).Delete(t.Context(), "ztunnel-a128", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	createZtunnelPod(t, kc, DefaultIstioNamespace, "ztunnel-adef", node, "")
	check("ztunnel-adef", map[string][]string{
		"1-27": {`follows istiod of revision "default" (no istio.io/rev annotation`, `--istio-revision is "1-27"`, "set --istio-revision=default",
			"mesh config istio-system/istio-1-27 is followed"},
		"1-28": {`follows istiod of revision "default"`, `--istio-revision is "1-28"`},
	})

	// Revision 1-27 removed, its mesh config with it: the agent of 1-27
	// follows Istio's defaults, and its ztunnel warning says so, as the
	// mesh config's own warning does. (Before, status showed both "mesh
	// config istio-system/istio-1-27 is followed" and "... is absent ...
	// ztdns follows Istio's defaults".)
	if err := kc.CoreV1().ConfigMaps(DefaultIstioNamespace).Delete(t.Context(), "istio-1-27", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := agents["1-27"]
	rec.waitFor(t, "Istio's defaults", func(s *model.Snapshot) error {
		if s.DefaultExportTo != nil || len(rec.src.Warnings()) != 2 {
			return fmt.Errorf("default exportTo %q, warnings %q; want Istio's default, two warnings", s.DefaultExportTo, rec.src.Warnings())
		}
		return nil
	})
	for _, w := range rec.src.Warnings() {
		if strings.Contains(w.Error(), "is followed") && !strings.Contains(w.Error(), "Istio's defaults are followed") {
			t.Errorf("warning %q says a mesh config is followed, though it is absent", w)
		}
	}
	check("ztunnel-adef", map[string][]string{
		"1-27": {`follows istiod of revision "default"`, "and Istio's defaults are followed (mesh config istio-system/istio-1-27 is absent)"},
		"1-28": {`follows istiod of revision "default"`, `--istio-revision is "1-28"`},
	})
}

// TestZtunnelInAnotherNamespace: Istio on OpenShift runs ztunnel in
// kube-system (istioctl's openshift-ambient profile; the charts'
// trustedZtunnelNamespace) while istiod stays in istio-system. The node's ztunnel, upgraded to revision 1-28 there, is
// compared with --istio-revision=1-27 given --ztunnel-namespace=kube-system:
// `ztdns status` names the pod and both revisions, and
// ztdns_kube_ztunnel_revision_mismatch is 1; back at 1-27, nothing. An
// agent without the flag looks in istiod's namespace, as Istio does
// without trustedZtunnelNamespace: it compares nothing (gauge 0), but says
// that a pod labelled app=ztunnel is on the node outside it, and which
// flag to set, naming the pod in kube-system, not a tenant's labelled
// app=ztunnel too. (Before, nothing was said at all: the alert could never
// fire on OpenShift.)
func TestZtunnelInAnotherNamespace(t *testing.T) {
	env := kubetest.Start(t)
	kc := env.Client()
	const node, ztunnelNS = "node-a", "kube-system"
	createNamespace(t, kc, DefaultIstioNamespace)
	// The API server may have made kube-system already.
	if _, err := kc.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ztunnelNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	createIstiodConfigMap(t, kc, MeshConfigMapName("1-27"), map[string]string{MeshConfigKey: ""})
	createZtunnelPod(t, kc, ztunnelNS, "ztunnel-k128", node, "1-28")

	flagged := runSource(t, env.Config, WithNodeName(node), WithIstioRevision("1-27"), WithZtunnelNamespace(ztunnelNS))
	logs := newLogWatcher()
	unflagged := runSource(t, env.Config, WithNodeName(node), WithIstioRevision("1-27"), WithLogger(slog.New(logs)))
	// check waits until rec's snapshot holds ztunnel pod name, then wants
	// gauge and as many ztunnel warnings as texts, the first holding them.
	check := func(rec *recorder, agent, name string, gauge float64, texts ...string) {
		t.Helper()
		rec.waitFor(t, "ztunnel pod "+name, func(s *model.Snapshot) error {
			for _, p := range s.Pods {
				if p.Namespace == ztunnelNS && p.Name == name {
					return nil
				}
			}
			return fmt.Errorf("no pod %s/%s", ztunnelNS, name)
		})
		warnings, g := ztunnelWarnings(rec)
		if g != gauge || len(warnings) != min(len(texts), 1) {
			t.Fatalf("%s, ztunnel %s: warnings %q, gauge %v; want %d warning(s), gauge %v", agent, name, warnings, g, min(len(texts), 1), gauge)
		}
		for _, s := range texts {
			if !strings.Contains(warnings[0].Error(), s) {
				t.Errorf("%s, ztunnel %s: warning %q does not say %q", agent, name, warnings[0], s)
			}
		}
	}
	check(flagged, "--ztunnel-namespace=kube-system", "ztunnel-k128", 1,
		`ztunnel kube-system/ztunnel-k128 on node node-a follows istiod of revision "1-28" (its istio.io/rev annotation), but --istio-revision is "1-27"`,
		"mesh config istio-system/istio-1-27 is followed", "set --istio-revision=1-28")
	check(unflagged, "no --ztunnel-namespace", "ztunnel-k128", 0,
		`ztunnel kube-system/ztunnel-k128 on node node-a (label app=ztunnel) is not in ztunnel's namespace "istio-system" (--ztunnel-namespace not given: --istio-namespace)`,
		"set --ztunnel-namespace=kube-system (chart resolver.ztunnelNamespace)")

	// A tenant's pod labelled app=ztunnel, in a namespace that sorts before
	// kube-system, neither takes the warning's place nor logs it again.
	createZtunnelPod(t, kc, metav1.NamespaceDefault, "ztunnel-lookalike", node, "")
	unflagged.waitFor(t, "the tenant's pod", func(s *model.Snapshot) error {
		if find(s.Pods, podKey, metav1.NamespaceDefault, "ztunnel-lookalike") == nil {
			return errors.New("pod default/ztunnel-lookalike missing")
		}
		return nil
	})
	warnings, _ := ztunnelWarnings(unflagged)
	if want := "ztunnel kube-system/ztunnel-k128 on node node-a (label app=ztunnel) (and 1 more pods so labelled)"; len(warnings) != 1 || !strings.HasPrefix(warnings[0].Error(), want) {
		t.Errorf("with a tenant's pod labelled app=ztunnel: warnings %q, want one starting %q", warnings, want)
	}
	if n := logs.count(logZtunnelElsewhere); n != 1 {
		t.Errorf("logged %q %d times, want once: the pod it names did not change", logZtunnelElsewhere, n)
	}

	// ztunnel rolled back to 1-27: the flagged agent says nothing.
	if err := kc.CoreV1().Pods(ztunnelNS).Delete(t.Context(), "ztunnel-k128", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	createZtunnelPod(t, kc, ztunnelNS, "ztunnel-k127", node, "1-27")
	check(flagged, "--ztunnel-namespace=kube-system", "ztunnel-k127", 0)
}

// logZtunnelElsewhere is what the log says when the node has ztunnel pods
// only outside ztunnel's namespace.
const logZtunnelElsewhere = "no ztunnel pod on the node in ztunnel's namespace, but one outside it"

// createZtunnelPod creates ztunnel pod ns/name on node as Istio's ztunnel
// chart makes it: labelled app=ztunnel, out of the mesh, annotated
// istio.io/rev with its revision rev when it has one.
func createZtunnelPod(tb testing.TB, kc kubernetes.Interface, ns, name, node, rev string) {
	tb.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels: map[string]string{"app": "ztunnel", "istio.io/dataplane-mode": "none"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "istio-proxy", Image: "ztunnel"}}},
	}
	if rev != "" {
		p.Annotations = map[string]string{"istio.io/rev": rev}
	}
	if _, err := kc.CoreV1().Pods(ns).Create(tb.Context(), p, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
}

// ztunnelWarnings returns rec's source's warnings about ztunnel pods, and
// its ztdns_kube_ztunnel_revision_mismatch.
func ztunnelWarnings(rec *recorder) ([]error, float64) {
	var warnings []error
	for _, w := range rec.src.Warnings() {
		if strings.HasPrefix(w.Error(), "ztunnel ") {
			warnings = append(warnings, w)
		}
	}
	return warnings, testutil.ToFloat64(rec.src.metrics.ztunnelRevisionMismatch)
}
