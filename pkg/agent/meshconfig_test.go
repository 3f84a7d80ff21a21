//go:build linux

package agent_test

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1 "istio.io/api/networking/v1"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// meshConfigSetter returns what writes mesh as Istio's mesh config (the
// `mesh` key of the `istio` ConfigMap in istiod's namespace, extra's keys
// beside it), creating the ConfigMap when there is none.
func meshConfigSetter(t *testing.T, kc kubernetes.Interface, extra map[string]string) func(mesh string) {
	cms := kc.CoreV1().ConfigMaps(kube.DefaultIstioNamespace)
	return func(mesh string) {
		t.Helper()
		data := map[string]string{kube.MeshConfigKey: mesh}
		maps.Copy(data, extra)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kube.MeshConfigMap, Namespace: kube.DefaultIstioNamespace}, Data: data}
		if _, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
			if _, err := cms.Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestDefaultServiceExportToFollowsMeshConfig: in Kubernetes mode, without
// --default-service-export-to, a ServiceEntry without exportTo is scoped by
// Istio's mesh config (defaultServiceExportTo in the `mesh` key of the
// `istio` ConfigMap in istiod's namespace), as istiod scopes it, and
// follows the ConfigMap as it changes, with no restart. A mesh config that
// does not parse leaves the last value in force, as istiod does, and says
// so once; an absent one is Istio's default, every namespace, and so is
// an empty list (istiod's reading, checked against istiod itself). `ztdns
// status` says where the default comes from. Given, the flag wins, and the
// agent says once that the mesh config differs. Before: the mesh config
// was not read, and a mesh that keeps tenants apart with ["."] answered the
// bank's ServiceEntry to the other tenant's pods.
func TestDefaultServiceExportToFollowsMeshConfig(t *testing.T) {
	env := kubetest.Start(t)
	kc := env.Client()
	ctx := t.Context()
	up := markerUpstream(t)
	const node, istioNS = "node-a", kube.DefaultIstioNamespace
	bank, tenant := netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")
	for _, ns := range []string{"bank", "tenant", istioNS} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.IstioClient().NetworkingV1().ServiceEntries("bank").Create(ctx, &istionetv1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Name: "login", Namespace: "bank"},
		Spec: networkingv1.ServiceEntry{Hosts: []string{"login.example-bank.com"}, Addresses: []string{"192.0.2.66"},
			Ports: []*networkingv1.ServicePort{{Name: "https", Number: 443, Protocol: "TLS"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for ns, ip := range map[string]netip.Addr{"bank": bank, "tenant": tenant} {
		env.RunningPod(ctx, ns, "app", node, ip)
	}
	cms := kc.CoreV1().ConfigMaps(istioNS)
	setMesh := meshConfigSetter(t, kc, map[string]string{"meshNetworks": "networks: {}"})
	// As the Istio chart writes it, with fields ztdns does not read.
	setMesh("defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\ndefaultServiceExportTo:\n- \".\"\nenablePrometheusMerge: true\n")

	start := func(t *testing.T, flag []string) (*agenttest.Agent, *testenv.Log) {
		logs := &testenv.Log{}
		log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		a := agenttest.Start(t, agent.Config{Source: kube.New(env.Config, kube.WithNodeName(node), kube.WithLogger(log)),
			Upstreams: []netip.AddrPort{up}, DefaultExportTo: flag, Logger: log})
		return a, logs
	}
	login := func(t *testing.T, a *agenttest.Agent, bankWant, tenantWant string) {
		t.Helper()
		for _, q := range []struct {
			from netip.Addr
			want string
		}{{bank, bankWant}, {tenant, tenantWant}} {
			if got := a.Addrs(t, q.from, "login.example-bank.com", dns.TypeA); !slices.Equal(got, []string{q.want}) {
				t.Errorf("login.example-bank.com from %s = %v, want %s", q.from, got, q.want)
			}
		}
	}
	exportToIs := func(a *agenttest.Agent, want string) func() error {
		return func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			if st.DefaultExportTo != want {
				return fmt.Errorf("status's default exportTo %q, want %q", st.DefaultExportTo, want)
			}
			return nil
		}
	}
	const fromMesh = " (mesh config " + istioNS + "/" + kube.MeshConfigMap + ")"
	const differs = "--default-service-export-to differs from Istio's mesh config and wins"

	t.Run("follows the mesh config", func(t *testing.T) {
		a, logs := start(t, nil)
		// The first table waits for the mesh config.
		if err := exportToIs(a, `"."`+fromMesh)(); err != nil {
			t.Error(err)
		}
		login(t, a, "192.0.2.66", forwarded)

		// Changed: the table follows, no restart.
		setMesh(`defaultServiceExportTo: ["*"]`)
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"*"`+fromMesh))
		login(t, a, "192.0.2.66", "192.0.2.66")

		// Does not parse: the last value stays, said once in the log and
		// in status's source errors.
		setMesh(`defaultServiceExportTo: ["."]`)
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"."`+fromMesh))
		setMesh("defaultServiceExportTo: [\".\"\n")
		const bad = "mesh config " + istioNS + "/" + kube.MeshConfigMap + ": mesh config does not parse"
		agenttest.Eventually(t, 30*time.Second, func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(st.SourceErrors, func(s string) bool { return strings.HasPrefix(s, bad) }) {
				return fmt.Errorf("source errors %q lack %q", st.SourceErrors, bad)
			}
			return nil
		})
		if err := exportToIs(a, `"."`+fromMesh)(); err != nil {
			t.Error(err)
		}
		login(t, a, "192.0.2.66", forwarded)
		if n := strings.Count(logs.String(), "Istio's mesh config does not parse"); n != 1 {
			t.Errorf("the bad mesh config logged %d times, want once:\n%s", n, logs)
		}

		// Absent: Istio's default, every namespace, as istiod has it.
		if err := cms.Delete(ctx, kube.MeshConfigMap, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"*" (Istio's default)`))
		login(t, a, "192.0.2.66", "192.0.2.66")
		if n := strings.Count(logs.String(), "Istio's mesh config is absent"); n != 1 {
			t.Errorf("the absent mesh config logged %d times, want once:\n%s", n, logs)
		}
		setMesh(`defaultServiceExportTo: ["."]`)
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"."`+fromMesh))
		login(t, a, "192.0.2.66", forwarded)

		// An empty list is Istio's default, every namespace, as istiod has
		// it: pkg/config/mesh ApplyMeshConfig decodes [] into a nil list
		// over the default ["*"], which pilot/pkg/model
		// PushContext.initDefaultExportMaps takes for "*" (istiod of
		// test/kube's snapshot, so configured, sends a sidecar in another
		// namespace the cluster of a ServiceEntry without exportTo, and
		// /debug/mesh shows no defaultServiceExportTo).
		setMesh("defaultServiceExportTo: []\n")
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"*" (Istio's default)`))
		login(t, a, "192.0.2.66", "192.0.2.66")

		// defaultServiceEntryExportTo is no MeshConfig field: istiod
		// ignores it, as any field it does not know, and so does ztdns.
		setMesh(`defaultServiceExportTo: ["."]`)
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"."`+fromMesh))
		setMesh(`defaultServiceEntryExportTo: ["."]`)
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"*" (Istio's default)`))
		login(t, a, "192.0.2.66", "192.0.2.66")
		setMesh(`defaultServiceExportTo: ["."]`) // for the next subtest
		agenttest.Eventually(t, 30*time.Second, exportToIs(a, `"."`+fromMesh))
	})

	t.Run("the flag wins", func(t *testing.T) {
		a, logs := start(t, []string{"*"})
		if err := exportToIs(a, `"*" (--default-service-export-to)`)(); err != nil {
			t.Error(err)
		}
		login(t, a, "192.0.2.66", "192.0.2.66")
		if n := strings.Count(logs.String(), differs); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", differs, n, logs)
		}
	})

	// A mesh config that gives an empty list, null or no
	// defaultServiceExportTo, or none at all, is Istio's default "*" to
	// istiod: a flag of "." scopes ServiceEntries apart from istiod all the
	// same, and the agent says so once; a flag of "*" agrees, and nothing is
	// said. Before: the agent said nothing unless the mesh config gave a
	// value.
	for _, c := range []struct{ name, mesh string }{
		{"the flag differs from an empty list", "defaultServiceExportTo: []\n"},
		{"the flag differs from null", "defaultServiceExportTo: null\n"},
		{"the flag differs from none given", "enablePrometheusMerge: true\n"},
		{"the flag differs from no mesh config", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.mesh != "" {
				setMesh(c.mesh)
			} else if err := cms.Delete(ctx, kube.MeshConfigMap, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
			t.Run(`"."`, func(t *testing.T) {
				a, logs := start(t, []string{"."})
				if err := exportToIs(a, `"." (--default-service-export-to)`)(); err != nil {
					t.Error(err)
				}
				login(t, a, "192.0.2.66", forwarded)
				// The first table, which Start waits for, has the mesh config.
				const attrs = "flag=[.] meshConfig=" + istioNS + "/" + kube.MeshConfigMap + " defaultServiceExportTo=[*]"
				if n := strings.Count(logs.String(), differs); n != 1 || !strings.Contains(logs.String(), attrs) {
					t.Errorf("%q logged %d times, want once, with %s:\n%s", differs, n, attrs, logs)
				}
			})
			t.Run(`"*"`, func(t *testing.T) {
				a, logs := start(t, []string{"*"})
				if err := exportToIs(a, `"*" (--default-service-export-to)`)(); err != nil {
					t.Error(err)
				}
				login(t, a, "192.0.2.66", "192.0.2.66")
				if strings.Contains(logs.String(), differs) {
					t.Errorf("the flag \"*\", istiod's value, said to differ:\n%s", logs)
				}
			})
		})
	}
}
