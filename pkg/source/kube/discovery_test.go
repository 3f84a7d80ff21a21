package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// quietWindow is how long the discovery tests watch the source's requests:
// four times the 5 s the source used to ask discovery at while the CRD was
// missing, and 20 times its 1 s retry before the first sync.
const quietWindow = 20 * time.Second

// askingAboutServiceEntries reports whether a request asks whether or how
// ServiceEntries are served: discovery of Istio's networking group, or the
// ServiceEntry CRD.
func askingAboutServiceEntries(u *url.URL) bool {
	return u.Path == "/apis" || strings.HasPrefix(u.Path, "/apis/networking.istio.io") && !strings.HasSuffix(u.Path, "/serviceentries") ||
		strings.HasPrefix(u.Path, "/apis/apiextensions.k8s.io")
}

// count returns how many requests match.
func (l *requestLog) count(match func(*url.URL) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, u := range l.reqs {
		if match(u) {
			n++
		}
	}
	return n
}

// gauge returns the value of the source's gauge name{label=value}, and
// whether it is there.
func gauge(tb testing.TB, src *Source, name, label, value string) (float64, bool) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(src.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// wantNote checks that Errors() has an entry holding every one of want
// and none holding any of unwanted, and that Healthy() stays nil: a note
// is no failure.
func wantNote(t *testing.T, src *Source, want []string, unwanted ...string) {
	t.Helper()
	var entries []string
	for _, err := range src.Errors() {
		entries = append(entries, err.Error())
	}
	found := slices.ContainsFunc(entries, func(e string) bool {
		for _, w := range want {
			if !strings.Contains(e, w) {
				return false
			}
		}
		return true
	})
	if !found {
		t.Errorf("Errors() = %q, want an entry with %q", entries, want)
	}
	for _, e := range entries {
		for _, u := range unwanted {
			if strings.Contains(e, u) {
				t.Errorf("Errors() entry %q says %q", e, u)
			}
		}
	}
	if err := src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v, want nil: ServiceEntries missing is no failure", err)
	}
}

// wantUnavailable checks ztdns_kube_serviceentries_unavailable: 1 for
// reason, 0 for the others.
func wantUnavailable(t *testing.T, src *Source, reason string) {
	t.Helper()
	for _, r := range []string{reasonNotInstalled, reasonNotServed, reasonForbidden} {
		want := 0.0
		if r == reason {
			want = 1
		}
		if got, ok := gauge(t, src, "ztdns_kube_serviceentries_unavailable", "reason", r); !ok || got != want {
			t.Errorf("ztdns_kube_serviceentries_unavailable{reason=%q} = %v (present %v), want %v", r, got, ok, want)
		}
	}
}

// The reasons of ztdns_kube_serviceentries_unavailable, as users see them.
const (
	reasonNotInstalled = "not-installed"
	reasonNotServed    = "v1-not-served"
	reasonForbidden    = "forbidden"
)

// TestNoDiscoveryPollingWithoutTheCRD: without Istio's CRD the source
// syncs, says so in Errors() and the metric (not in Healthy), and then asks
// the API server nothing more about ServiceEntries: it watches the CRD. Then
// a CRD that serves only v1beta1 and v1alpha3 is reported as such, not as
// missing. (Before: a discovery GET every 5 s for as long as the CRD was
// missing, 11 a minute per node; "not installed" for a v1beta1-only CRD,
// and nothing in status or metrics either way.)
func TestNoDiscoveryPollingWithoutTheCRD(t *testing.T) {
	env := kubetest.Start(t, kubetest.WithoutCRDs())
	cfg := rest.CopyConfig(env.Config)
	var reqs requestLog
	cfg.Wrap(reqs.wrap)
	rec := runSource(t, cfg)
	rec.waitFor(t, "the first sync", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		return nil
	})
	rec.waitHealth(t, "healthy", func(err error) bool { return err == nil })

	before, all := reqs.count(askingAboutServiceEntries), reqs.count(func(*url.URL) bool { return true })
	time.Sleep(quietWindow)
	t.Logf("requests about ServiceEntries in %v without the CRD: %d", quietWindow, reqs.count(askingAboutServiceEntries)-before)
	if n := reqs.count(askingAboutServiceEntries) - before; n != 0 {
		t.Errorf("%d requests about ServiceEntries in %v without the CRD, want none (the CRD is watched)", n, quietWindow)
	}
	if n := reqs.count(func(*url.URL) bool { return true }) - all; n != 0 {
		t.Errorf("%d requests in %v of a quiet cluster, want none", n, quietWindow)
	}
	wantNote(t, rec.src, []string{"serviceentries.networking.istio.io", "not installed"})
	wantUnavailable(t, rec.src, reasonNotInstalled)

	// Istio before 1.22 (or a CRD so trimmed): v1 not served.
	env.InstallCRDs()
	setServed(t, env, "v1", false)
	rec.waitHealth(t, "reporting v1 not served", func(error) bool {
		for _, err := range rec.src.Errors() {
			if strings.Contains(err.Error(), "v1beta1") {
				return true
			}
		}
		return false
	})
	wantNote(t, rec.src, []string{"serviceentries.networking.istio.io", "does not serve networking.istio.io/v1", "v1alpha3, v1beta1"}, "not installed")
	wantUnavailable(t, rec.src, reasonNotServed)

	// v1 served again: ServiceEntries are back, and the notes gone.
	setServed(t, env, "v1", true)
	createServiceEntry(t, env, "mesh", "back")
	rec.waitFor(t, "the ServiceEntry once v1 is served", func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "back") == nil {
			return fmt.Errorf("serviceentry mesh/back missing")
		}
		return nil
	})
	if errs := rec.src.Errors(); len(errs) != 0 {
		t.Errorf("Errors() = %v with ServiceEntries watched, want none", errs)
	}
	wantUnavailable(t, rec.src, "")
}

// TestNoDiscoveryStormWhileAPIServerDown: an agent that starts while the
// API server is down asks it about ServiceEntries with growing pauses, as
// client-go's reflectors do for everything else, and keeps asking: once
// the API server is back, it syncs and says the CRD is not installed.
// (Before: a discovery GET every second until the API server answered, 20
// in the window.)
func TestNoDiscoveryStormWhileAPIServerDown(t *testing.T) {
	env := kubetest.Start(t, kubetest.WithoutCRDs())
	env.Stop()
	cfg := rest.CopyConfig(env.Config)
	var reqs requestLog
	cfg.Wrap(reqs.wrap)
	rec := runSource(t, cfg)
	time.Sleep(quietWindow)
	// Backoff from 0.8 s doubling (with up to as much again of jitter):
	// at most six tries in 20 s, and at least the first and a retry
	// (the second comes 1.6 s after the first at the latest).
	n := reqs.count(askingAboutServiceEntries)
	t.Logf("requests about ServiceEntries in %v with the API server down: %d", quietWindow, n)
	if n > 6 {
		t.Errorf("%d requests about ServiceEntries in %v with the API server down, want at most 6", n, quietWindow)
	}
	if n < 2 {
		t.Errorf("%d requests about ServiceEntries in %v with the API server down, want a try and a retry at least", n, quietWindow)
	}

	// The API server back: the source's retries reach it.
	env.Restart()
	rec.waitFor(t, "the first sync once the API server is back", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		return nil
	})
	rec.waitHealth(t, "healthy once the API server is back", func(err error) bool { return err == nil })
	wantNote(t, rec.src, []string{"serviceentries.networking.istio.io", "not installed"})
	if got := reqs.count(askingAboutServiceEntries); got <= n {
		t.Errorf("%d requests about ServiceEntries in all, %d before the API server was back: none since", got, n)
	}
}

// TestServiceEntriesForbidden: a ClusterRole without serviceentries (a
// stale one, from before ztdns read them) costs ServiceEntries, not the
// rest: the source delivers Services, says what is refused in Errors() and
// the metric, stays healthy, and picks ServiceEntries up once the
// permission is granted. (Before: no snapshot at all, ever; the resolver
// forwarded every name.)
func TestServiceEntriesForbidden(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	const ns, account = "ztdns-stale", "ztdns"
	createNamespace(t, kube, ns)
	createServiceEntry(t, env, "mesh", "ext")
	rules := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return slices.Contains(r.Resources, "serviceentries") })
	cfg := grant(t, env, "ztdns-stale", ns, account, rules)
	rec := runSource(t, cfg, WithNodeName("node-a"), withForbiddenRetry(500*time.Millisecond))
	rec.waitFor(t, "the first sync without ServiceEntries", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		if len(s.ServiceEntries) != 0 {
			return fmt.Errorf("serviceentries %v, though they may not be read", s.ServiceEntries)
		}
		return nil
	})
	wantNote(t, rec.src, []string{"forbidden to", "serviceentries.networking.istio.io (RBAC)"})
	wantUnavailable(t, rec.src, reasonForbidden)
	// Refused ServiceEntries are no sign of a cluster without Istio.
	waitMeshConfigAbsent(t, rec.src, "istio-system/istio", "ServiceEntries refused, the mesh config absent", true)

	se := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return !slices.Contains(r.Resources, "serviceentries") })
	grant(t, env, "ztdns-se", ns, account, se)
	rec.waitFor(t, "the ServiceEntry once it may be read", func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "ext") == nil {
			return fmt.Errorf("serviceentry mesh/ext missing")
		}
		return nil
	})
	rec.waitHealth(t, "without notes", func(err error) bool { return err == nil && len(rec.src.Errors()) == 0 })
	wantUnavailable(t, rec.src, "")
}

// TestCRDForbiddenFallsBackToDiscovery: a ClusterRole without the rule
// for the CRD (from before the source watched it) still gets
// ServiceEntries: the source asks discovery instead, and says so until the
// rule is granted.
func TestCRDForbiddenFallsBackToDiscovery(t *testing.T) {
	env := kubetest.Start(t)
	const ns, account = "ztdns-stale", "ztdns"
	createNamespace(t, env.Client(), ns)
	createServiceEntry(t, env, "mesh", "ext")
	rules := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return slices.Contains(r.Resources, "customresourcedefinitions") })
	cfg := grant(t, env, "ztdns-stale", ns, account, rules)
	rec := runSource(t, cfg, withForbiddenRetry(500*time.Millisecond))
	rec.waitFor(t, "the ServiceEntry, through discovery", func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "ext") == nil {
			return fmt.Errorf("serviceentry mesh/ext missing")
		}
		return nil
	})
	wantNote(t, rec.src, []string{"the CRD may not be watched", "forbidden to", "customresourcedefinitions.apiextensions.k8s.io", "discovery"})
	wantUnavailable(t, rec.src, "")

	crd := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return !slices.Contains(r.Resources, "customresourcedefinitions") })
	grant(t, env, "ztdns-crd", ns, account, crd)
	rec.waitHealth(t, "watching the CRD once it may", func(err error) bool { return err == nil && len(rec.src.Errors()) == 0 })
}

// TestCRDForbiddenIsNoSignOfNoIstio: with the CRD refused, the source
// asks discovery, and a CRD that does not serve networking.istio.io/v1
// (Istio before 1.22) is said to be that, as when the CRD may be read:
// v1-not-served, which pages, naming the versions served; and Istio is
// there, so the mesh config's absence is warned of too. Once v1 is
// served, ServiceEntries come. (Before: discovery of v1 alone, and a CRD
// without it read as not installed, which does not page, and as a cluster
// without Istio: no warning, ztdns_kube_mesh_config_absent 0, and every
// ServiceEntry forwarded with nothing said.)
func TestCRDForbiddenIsNoSignOfNoIstio(t *testing.T) {
	env := kubetest.Start(t)
	const ns, account, where = "ztdns-stale", "ztdns", "istio-system/istio"
	createNamespace(t, env.Client(), ns)
	createServiceEntry(t, env, "mesh", "ext")
	setServed(t, env, "v1", false)
	rules := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return slices.Contains(r.Resources, "customresourcedefinitions") })
	cfg := grant(t, env, "ztdns-stale", ns, account, rules)
	rec := runSource(t, cfg, withForbiddenRetry(500*time.Millisecond))
	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })
	waitMeshConfigAbsent(t, rec.src, where, "the CRD refused, without v1, the mesh config absent", true)
	rec.waitHealth(t, "reporting v1 not served", func(error) bool {
		return slices.ContainsFunc(rec.src.Errors(), func(err error) bool { return strings.Contains(err.Error(), "v1beta1") })
	})
	wantNote(t, rec.src, []string{"serviceentries.networking.istio.io", "does not serve networking.istio.io/v1", "v1alpha3, v1beta1"}, "not installed")
	wantNote(t, rec.src, []string{"the CRD may not be watched", "forbidden to", "customresourcedefinitions.apiextensions.k8s.io"})
	wantUnavailable(t, rec.src, reasonNotServed)

	setServed(t, env, "v1", true)
	rec.waitFor(t, "the ServiceEntry once v1 is served", func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "ext") == nil {
			return fmt.Errorf("serviceentry mesh/ext missing")
		}
		return nil
	})
	wantUnavailable(t, rec.src, "")
	waitMeshConfigAbsent(t, rec.src, where, "the CRD refused, with v1, the mesh config absent", true)
}

// TestForbiddenResourceIsNamed: a ClusterRole without Services keeps the
// source from its first sync; Healthy (what /readyz and status show) names
// the resource and the verb refused, and the log does not claim to serve a
// last state there is none of. (Before: "serving the last state".)
func TestForbiddenResourceIsNamed(t *testing.T) {
	env := kubetest.Start(t)
	const ns, account = "ztdns-stale", "ztdns"
	createNamespace(t, env.Client(), ns)
	rules := PolicyRules()
	rules[0].Resources = slices.DeleteFunc(slices.Clone(rules[0].Resources), func(r string) bool { return r == "services" })
	cfg := grant(t, env, "ztdns-stale", ns, account, rules)
	logs := newLogWatcher()
	rec := runSource(t, cfg, WithLogger(slog.New(logs)))
	rec.waitHealth(t, "naming the refused list of Services", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "forbidden to list services")
	})
	logs.waitFor(t, 1, logFailingUnsynced)
	if n := logs.count(logFailing); n != 0 {
		t.Errorf("logged %q %d times before any snapshot, want never", logFailing, n)
	}
	if _, n := rec.latest(); n != 0 {
		t.Errorf("%d snapshots without Services, want none", n)
	}
}

// createServiceEntry creates namespace ns (if need be) and a ServiceEntry
// name in it.
func createServiceEntry(tb testing.TB, env *kubetest.Env, ns, name string) {
	tb.Helper()
	_, err := env.Client().CoreV1().Namespaces().Create(tb.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		tb.Fatalf("create namespace %s: %v", ns, err)
	}
	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: name}}
	se.Spec.Hosts, se.Spec.Resolution = []string{name + ".example.com"}, networkingv1alpha3.ServiceEntry_DNS
	// Right after the CRD is served the API server holds creates for a
	// moment (see kubetest.InstallCRDs); a retry covers a refusal then.
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := env.IstioClient().NetworkingV1().ServiceEntries(ns).Create(tb.Context(), se, metav1.CreateOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("create ServiceEntry %s/%s: %v", ns, name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// setServed sets whether the ServiceEntry CRD serves version.
func setServed(tb testing.TB, env *kubetest.Env, version string, served bool) {
	tb.Helper()
	client, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		tb.Fatalf("dynamic client: %v", err)
	}
	crds := client.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	ctx, cancel := context.WithTimeout(tb.Context(), waitTimeout)
	defer cancel()
	for {
		crd, err := crds.Get(ctx, "serviceentries.networking.istio.io", metav1.GetOptions{})
		if err != nil {
			tb.Fatalf("get CRD: %v", err)
		}
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		for _, v := range versions {
			if m := v.(map[string]any); m["name"] == version {
				m["served"] = served
			}
		}
		if err := unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions"); err != nil {
			tb.Fatal(err)
		}
		if _, err = crds.Update(ctx, crd, metav1.UpdateOptions{}); err == nil {
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("set %s served=%v on the CRD: %v", version, served, err)
		}
	}
}
