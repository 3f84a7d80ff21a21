package kube

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	ztunnel := func(name, node, rev string) {
		t.Helper()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultIstioNamespace,
				Labels: map[string]string{"app": "ztunnel", "istio.io/dataplane-mode": "none"}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "istio-proxy", Image: "ztunnel"}}},
		}
		if rev != "" {
			p.Annotations = map[string]string{"istio.io/rev": rev}
		}
		if _, err := kc.CoreV1().Pods(DefaultIstioNamespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ztunnel("ztunnel-a128", node, "1-28")
	ztunnel("ztunnel-b127", "node-b", "1-27") // another node's: not watched

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
			var warnings []error
			for _, w := range rec.src.Warnings() {
				if strings.HasPrefix(w.Error(), "ztunnel ") {
					warnings = append(warnings, w)
				}
			}
			gauge := testutil.ToFloat64(rec.src.metrics.ztunnelRevisionMismatch)
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
	ztunnel("ztunnel-adef", node, "")
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
