package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestParseMeshExportTo reads defaultServiceExportTo as istiod merges the
// mesh config over its defaults: given, it replaces the default; other
// fields, known or not, do not matter; YAML that does not parse, or a
// value that is no list of strings, makes the mesh config invalid.
func TestParseMeshExportTo(t *testing.T) {
	for _, tc := range []struct {
		name, mesh string
		want       []string
		wantErr    bool
	}{
		{name: "empty", mesh: ""},
		{name: "not given", mesh: "enableTracing: false\ndefaultConfig:\n  concurrency: 2\n"},
		{name: "own namespace", mesh: "defaultServiceExportTo:\n- \".\"\n", want: []string{"."}},
		{name: "flow list", mesh: `defaultServiceExportTo: [".", "shared"]`, want: []string{".", "shared"}},
		{name: "unknown fields ignored", mesh: "someFutureField: {a: 1}\ndefaultServiceExportTo: [\"~\"]\n", want: []string{"~"}},
		// istiod decodes [] into a nil list (pkg/config/mesh
		// ApplyMeshConfig: jsonpb sets a new, empty list over the default
		// ["*"]), and PushContext.initDefaultExportMaps takes nil for "*";
		// null leaves the default ["*"] in place.
		{name: "empty list is the default", mesh: "defaultServiceExportTo: []\n"},
		{name: "null is the default", mesh: "defaultServiceExportTo: null\n"},
		// No MeshConfig field has that name: istiod ignores it as it
		// ignores any unknown field.
		{name: "defaultServiceEntryExportTo is no field", mesh: "defaultServiceEntryExportTo: [\".\"]\n"},
		{name: "does not parse", mesh: "defaultServiceExportTo: [\".\"\n", wantErr: true},
		{name: "a string, not a list", mesh: `defaultServiceExportTo: "."`, wantErr: true},
		{name: "another field does not parse", mesh: "defaultConfig: [\ndefaultServiceExportTo: [\".\"]\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMesh(tc.mesh)
			// nil, not empty: an empty list would scope to no namespace.
			if (err != nil) != tc.wantErr || !slices.Equal(got.exportTo, tc.want) || (got.exportTo == nil) != (tc.want == nil) {
				t.Errorf("parseMesh(%q) = exportTo %#v, %v; want %#v, error %v", tc.mesh, got.exportTo, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestParseDiscoverySelectors reads discoverySelectors as istiod's
// discovery namespaces filter converts them: each selector's matchLabels
// and matchExpressions all hold, the selectors any; an empty selector
// selects every namespace, a null one none; a list of something else makes
// the mesh config invalid, a selector that does not convert only itself
// (istiod keeps the selectors it had).
func TestParseDiscoverySelectors(t *testing.T) {
	for _, tc := range []struct {
		name, mesh string
		// selects is, for each namespace's labels, whether it is selected;
		// nil for no selectors at all.
		selects      map[string]bool
		wantErr      bool
		wantInvalid  string
		wantNoSelect bool // no selectors
	}{
		{name: "none", mesh: "defaultServiceExportTo: [\".\"]\n", wantNoSelect: true},
		{name: "empty list", mesh: "discoverySelectors: []\n", wantNoSelect: true},
		{name: "matchLabels", mesh: "discoverySelectors:\n- matchLabels: {team: a}\n",
			selects: map[string]bool{"team=a": true, "team=b,env=prod": false, "": false}},
		{name: "any selector", mesh: "discoverySelectors:\n- matchLabels: {team: a}\n- matchExpressions: [{key: env, operator: In, values: [prod]}]\n",
			selects: map[string]bool{"team=a": true, "team=b,env=prod": true, "": false}},
		{name: "every requirement", mesh: "discoverySelectors:\n- matchLabels: {team: b}\n  matchExpressions: [{key: env, operator: NotIn, values: [prod]}]\n",
			selects: map[string]bool{"team=a": false, "team=b,env=prod": false, "": false}},
		{name: "DoesNotExist", mesh: "discoverySelectors:\n- matchExpressions: [{key: env, operator: DoesNotExist}]\n",
			selects: map[string]bool{"team=a": true, "team=b,env=prod": false, "": true}},
		{name: "empty selector is every namespace", mesh: "discoverySelectors:\n- {}\n",
			selects: map[string]bool{"team=a": true, "team=b,env=prod": true, "": true}},
		{name: "null selector is none", mesh: "discoverySelectors:\n- null\n- matchLabels: {team: a}\n",
			selects: map[string]bool{"team=a": true, "team=b,env=prod": false, "": false}},
		{name: "unknown operator", mesh: "discoverySelectors:\n- matchExpressions: [{key: env, operator: Like, values: [p]}]\n",
			wantInvalid: `discoverySelectors[0]: "Like" is not a valid label selector operator`, wantNoSelect: true},
		{name: "not a list", mesh: "discoverySelectors: {matchLabels: {team: a}}\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMesh(tc.mesh)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseMesh(%q): error %v, want one: %v", tc.mesh, err, tc.wantErr)
			}
			if got.selectorsInvalid != tc.wantInvalid {
				t.Errorf("selectorsInvalid %q, want %q", got.selectorsInvalid, tc.wantInvalid)
			}
			if (got.selectors == nil) != (tc.wantNoSelect || tc.wantErr) {
				t.Errorf("selectors %v, want none: %v", got.selectors, tc.wantNoSelect)
			}
			for lbls, want := range tc.selects {
				set, err := labels.ConvertSelectorToLabelsMap(lbls)
				if err != nil {
					t.Fatal(err)
				}
				if sel := slices.ContainsFunc(got.selectors, func(s labels.Selector) bool { return s.Matches(set) }); sel != want {
					t.Errorf("namespace labelled %q selected: %v, want %v", lbls, sel, want)
				}
			}
		})
	}
}

// TestMeshConfigForbidden runs the source as a ServiceAccount that may not
// read Istio's mesh config (a chart from before it was needed, or a
// binding the API server has not applied yet): the source syncs and stays
// healthy, with no default exportTo of the mesh config's (Istio's "*"),
// says so once in the log and in Errors(); once the permission is granted,
// it follows the mesh config without a restart.
func TestMeshConfigForbidden(t *testing.T) {
	env := kubetest.Start(t)
	createNamespace(t, env.Client(), DefaultIstioNamespace)
	createIstiodConfigMap(t, env.Client(), MeshConfigMap, map[string]string{MeshConfigKey: `defaultServiceExportTo: ["."]`})
	testForbiddenConfigMap(t, env, forbiddenConfigMap{
		what: "the mesh config",
		rule: func(r PolicyRule) bool { return slices.Contains(r.ResourceNames, MeshConfigMap) },
		note: "mesh config istio-system/istio may not be read (RBAC)",
		logged: "cannot read Istio's mesh config: its defaultServiceExportTo is not followed; " +
			"ServiceEntries without exportTo keep the last value read, or Istio's default \"*\" (every namespace); " +
			"give --default-service-export-to, or let the agent read the ConfigMap",
		refused: func(s *model.Snapshot) error {
			// MeshConfig empty: istiod's value is unknown, not Istio's default.
			if s.DefaultExportTo != nil || s.DefaultExportToFrom() != "" || s.MeshConfig != "" {
				return fmt.Errorf("default exportTo %q from %q, mesh config %q, but the mesh config cannot be read", s.DefaultExportTo, s.DefaultExportToFrom(), s.MeshConfig)
			}
			return nil
		},
		followed: func(s *model.Snapshot) error {
			if !slices.Equal(s.DefaultExportTo, []string{"."}) || s.DefaultExportToFrom() != "istio-system/istio" || s.MeshConfig != "istio-system/istio" {
				return fmt.Errorf("default exportTo %q from %q, mesh config %q, want \".\" from istio-system/istio", s.DefaultExportTo, s.DefaultExportToFrom(), s.MeshConfig)
			}
			return nil
		},
	})
}

// TestMeshConfigOfRevision: the source of istiod's revision "canary" reads
// that istiod's mesh config, istio-canary, as istiod does, not the default
// revision's, and PolicyRulesFor("canary") lets it.
func TestMeshConfigOfRevision(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	const ns, account = "ztdns-system", "ztdns"
	createNamespace(t, kube, ns)
	createNamespace(t, kube, DefaultIstioNamespace)
	for name, mesh := range map[string]string{"istio": `defaultServiceExportTo: ["."]`, "istio-canary": `defaultServiceExportTo: ["tenant"]`} {
		createIstiodConfigMap(t, kube, name, map[string]string{MeshConfigKey: mesh})
	}
	cfg := grant(t, env, "ztdns", ns, account, PolicyRulesFor("canary"))
	// The API server may apply the binding after the source's first list.
	rec := runSource(t, cfg, WithNodeName("node-a"), WithIstioRevision("canary"), withForbiddenRetry(time.Second))
	rec.waitFor(t, "the canary's mesh config", func(s *model.Snapshot) error {
		if !slices.Equal(s.DefaultExportTo, []string{"tenant"}) || s.DefaultExportToFrom() != "istio-system/istio-canary" {
			return fmt.Errorf("default exportTo %q from %q, want \"tenant\" from istio-system/istio-canary", s.DefaultExportTo, s.DefaultExportToFrom())
		}
		return nil
	})
	for rev, want := range map[string]string{"": "istio", "default": "istio", "canary": "istio-canary"} {
		if got := MeshConfigMapName(rev); got != want {
			t.Errorf("MeshConfigMapName(%q) = %q, want %q", rev, got, want)
		}
	}
}

// TestMeshConfigAbsentIsWarned: the source of revision "1-27" follows its
// mesh config, istio-1-27; once that ConfigMap is deleted (the revision
// removed while ztdns still names it) it follows Istio's defaults, as
// istiod does when its ConfigMap is deleted, and says so under Warnings()
// (ztdns status: Source warnings), naming the ConfigMap, the revision and
// the fix, with ztdns_kube_mesh_config_absent 1; both go once the
// ConfigMap is back. A revision tag given as the revision ("prod", whose
// Service istiod-revision-tag-prod the Istio chart makes) is named a tag,
// with only the RBAC the chart grants. (Before, an absent ConfigMap was
// one log line: Source warnings and errors were empty, and status showed
// ExportTo "*" (Istio's default) as if all were well.)
func TestMeshConfigAbsentIsWarned(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	createNamespace(t, kube, DefaultIstioNamespace)
	const where = "istio-system/istio-1-27"
	createIstiodConfigMap(t, kube, "istio-1-27", map[string]string{MeshConfigKey: `defaultServiceExportTo: ["."]`})
	rec := runSource(t, env.Config, WithIstioRevision("1-27"))
	meshWarnings := func() []string {
		var out []string
		for _, w := range rec.src.Warnings() {
			if strings.Contains(w.Error(), "mesh config") {
				out = append(out, w.Error())
			}
		}
		return out
	}
	wantAbsent := func(want float64) {
		t.Helper()
		if got, ok := gauge(t, rec.src, "ztdns_kube_mesh_config_absent", "configmap", where); !ok || got != want {
			t.Errorf("ztdns_kube_mesh_config_absent{configmap=%q} = %v (present %v), want %v", where, got, ok, want)
		}
	}
	exportTo := func(want ...string) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			if !slices.Equal(s.DefaultExportTo, want) || s.MeshConfig != where {
				return fmt.Errorf("default exportTo %q, mesh config %q; want %q from %s", s.DefaultExportTo, s.MeshConfig, want, where)
			}
			return nil
		}
	}
	rec.waitFor(t, "the revision's mesh config", exportTo("."))
	if w := meshWarnings(); len(w) > 0 {
		t.Errorf("Warnings() = %q while the mesh config is there", w)
	}
	wantAbsent(0)

	if err := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).Delete(t.Context(), "istio-1-27", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "Istio's defaults", exportTo())
	w := meshWarnings()
	if len(w) != 1 {
		t.Fatalf("Warnings() about the mesh config = %q, want one saying it is absent", w)
	}
	for _, part := range []string{
		"mesh config istio-system/istio-1-27 is absent: ",
		`no istiod of revision "1-27" (--istio-revision) seems installed`,
		"give --istio-revision (chart resolver.istioRevision) the revision of the istiod that serves ztunnel",
		"ztdns follows Istio's defaults",
	} {
		if !strings.Contains(w[0], part) {
			t.Errorf("warning %q does not say %q", w[0], part)
		}
	}
	if errs := rec.src.Errors(); len(errs) > 0 {
		t.Errorf("Errors() = %v: an absent mesh config is Istio's defaults, no error", errs)
	}
	wantAbsent(1)

	createIstiodConfigMap(t, kube, "istio-1-27", map[string]string{MeshConfigKey: `defaultServiceExportTo: ["."]`})
	rec.waitFor(t, "the mesh config back", exportTo("."))
	if w := meshWarnings(); len(w) > 0 {
		t.Errorf("Warnings() = %q with the mesh config back", w)
	}
	wantAbsent(0)

	t.Run("a revision tag", func(t *testing.T) {
		if _, err := kube.CoreV1().Services(DefaultIstioNamespace).Create(t.Context(), &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "istiod-revision-tag-prod", Labels: map[string]string{"istio.io/tag": "prod", "istio.io/rev": "1-27"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc-xds", Port: 15010}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create the tag's Service: %v", err)
		}
		const ns, account = "ztdns-system", "ztdns"
		createNamespace(t, kube, ns)
		cfg := grant(t, env, "ztdns", ns, account, PolicyRulesFor("prod"))
		// The API server may apply the binding after the source's first list.
		tagged := runSource(t, cfg, WithIstioRevision("prod"), withForbiddenRetry(time.Second))
		var got []error
		tagged.waitFor(t, "the tag named", func(*model.Snapshot) error {
			got = tagged.src.Warnings()
			for _, w := range got {
				if strings.HasPrefix(w.Error(), "mesh config istio-system/istio-prod is absent: \"prod\" (--istio-revision) is a revision tag (Service istio-system/istiod-revision-tag-prod), not a revision") {
					return nil
				}
			}
			return fmt.Errorf("Warnings() = %q", got)
		})
	})
}

// TestMeshConfigAbsentWithoutIstio: in a cluster without Istio (no
// ServiceEntry CRD, no istio-system, no mesh config), where the chart
// still gives --istio-namespace=istio-system, the source follows Istio's
// defaults with no warning under Warnings() and
// ztdns_kube_mesh_config_absent 0, so ZtdnsMeshConfigAbsent does not fire
// on every node: a cluster without Istio does not page. Once Istio's CRD
// is installed and the mesh config is still absent, the warning and the
// gauge come; with the CRD deleted again, they go. (Before, the gauge was
// 1 and `ztdns status` warned in every cluster without Istio.)
func TestMeshConfigAbsentWithoutIstio(t *testing.T) {
	env := kubetest.Start(t, kubetest.WithoutCRDs())
	const where = "istio-system/istio"
	rec := runSource(t, env.Config)
	state := func(warned bool) error { return meshConfigAbsentState(t, rec.src, where, warned) }
	waitState := func(what string, warned bool) {
		t.Helper()
		waitMeshConfigAbsent(t, rec.src, where, what, warned)
	}

	rec.waitFor(t, "Istio's defaults", func(s *model.Snapshot) error {
		if s.DefaultExportTo != nil || s.MeshConfig != where {
			return fmt.Errorf("default exportTo %q, mesh config %q; want Istio's default from %s", s.DefaultExportTo, s.MeshConfig, where)
		}
		return nil
	})
	if err := state(false); err != nil {
		t.Errorf("without Istio: %v", err)
	}
	for _, e := range rec.src.Errors() {
		if strings.Contains(e.Error(), "mesh config") {
			t.Errorf("Errors() has %q without Istio, want nothing of the mesh config", e)
		}
	}

	env.InstallCRDs()
	waitState("Istio's CRD installed, its mesh config absent", true)

	deleteServiceEntryCRD(t, env)
	waitState("Istio's CRD deleted", false)
}

// meshConfigAbsentState says what Warnings() says of the mesh config where
// and ztdns_kube_mesh_config_absent, nil when it is as want: a warning
// that it is absent and the gauge 1 (warned), or neither.
func meshConfigAbsentState(tb testing.TB, src *Source, where string, warned bool) error {
	var w []string
	for _, e := range src.Warnings() {
		if strings.Contains(e.Error(), "mesh config") {
			w = append(w, e.Error())
		}
	}
	g, ok := gauge(tb, src, "ztdns_kube_mesh_config_absent", "configmap", where)
	switch {
	case !ok:
		return fmt.Errorf("no series ztdns_kube_mesh_config_absent{configmap=%q}", where)
	case warned && (len(w) != 1 || !strings.HasPrefix(w[0], "mesh config "+where+" is absent: ") || g != 1):
		return fmt.Errorf("Warnings() about the mesh config %q, gauge %v; want one saying it is absent, 1", w, g)
	case !warned && (len(w) != 0 || g != 0):
		return fmt.Errorf("Warnings() about the mesh config %q, gauge %v; want none, 0", w, g)
	}
	return nil
}

// waitMeshConfigAbsent waits until meshConfigAbsentState is nil.
func waitMeshConfigAbsent(tb testing.TB, src *Source, where, what string, warned bool) {
	tb.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(tb.Context(), 20*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
		last = meshConfigAbsentState(tb, src, where, warned)
		return last == nil, nil
	}); err != nil {
		tb.Fatalf("%s: %v", what, last)
	}
}
