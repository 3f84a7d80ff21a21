//go:build linux

package agent_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1 "istio.io/api/networking/v1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// TestIstiodIgnoredServiceEntriesAreForwarded: a ServiceEntry istiod
// ignores is forwarded, not answered, for ztunnel routes none of its
// addresses: one labelled istio.io/rev with another revision than the
// agent's istiod's (--istio-revision, "default" when empty), though
// istiod's VIP allocator, which ignores revisions, wrote its
// status.addresses; and one in a namespace the mesh config's
// discoverySelectors do not select, followed as the mesh config and the
// namespaces' labels change, with no restart. Entries without the label,
// or labelled with the agent's revision, are answered. `ztdns status`
// says, in one warning per reason, how many were left out and names
// them. Before: every ServiceEntry was answered, the canary's VIP too.
func TestIstiodIgnoredServiceEntriesAreForwarded(t *testing.T) {
	env := kubetest.Start(t)
	kc := env.Client()
	ctx := t.Context()
	up := markerUpstream(t)
	const node, istioNS = "node-a", kube.DefaultIstioNamespace
	client := netip.MustParseAddr("127.0.0.3")
	for ns, lbls := range map[string]map[string]string{"shop": {"team": "shop"}, "lab": {"team": "lab"}, istioNS: nil} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: lbls}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create := func(ns, name, host, rev string, addr, vip string) {
		t.Helper()
		se := &istionetv1.ServiceEntry{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: networkingv1.ServiceEntry{Hosts: []string{host}, Resolution: networkingv1.ServiceEntry_DNS,
				Ports: []*networkingv1.ServicePort{{Name: "https", Number: 443, Protocol: "TLS"}}},
		}
		if rev != "" {
			se.Labels = map[string]string{"istio.io/rev": rev}
		}
		if addr != "" {
			se.Spec.Addresses = []string{addr}
		}
		api := env.IstioClient().NetworkingV1().ServiceEntries(ns)
		se, err := api.Create(ctx, se, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if vip != "" { // as istiod's allocator writes it, whatever the revision
			se.Status.Addresses = []*networkingv1alpha3.ServiceEntryAddress{{Value: vip, Host: host}}
			if _, err := api.UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	create("shop", "plain", "plain.example", "", "192.0.2.1", "")
	create("shop", "ours", "ours.example", "default", "192.0.2.2", "")
	create("shop", "canary", "canary.example", "canary", "192.0.2.3", "")
	create("shop", "ours-vip", "ours-vip.example", "", "", "240.240.0.8")
	create("shop", "canary-vip", "canary-vip.example", "canary", "", "240.240.0.7")
	create("lab", "lab", "lab.example", "", "192.0.2.4", "")
	env.RunningPod(ctx, "shop", "app", node, client)
	setMesh := meshConfigSetter(t, kc, nil)
	setMesh("enablePrometheusMerge: true\n")

	start := func(t *testing.T, opts ...kube.Option) *agenttest.Agent {
		return agenttest.Start(t, agent.Config{Source: kube.New(env.Config, append(opts, kube.WithNodeName(node))...),
			Upstreams: []netip.AddrPort{up}})
	}
	// answers checks every host's answer: want[host] is its address, or
	// forwarded.
	answers := func(t *testing.T, a *agenttest.Agent, want map[string]string) func() error {
		return func() error {
			var errs []string
			for _, host := range slices.Sorted(maps.Keys(want)) {
				if got := a.Addrs(t, client, host, dns.TypeA); !slices.Equal(got, []string{want[host]}) {
					errs = append(errs, fmt.Sprintf("%s = %v, want %s", host, got, want[host]))
				}
			}
			if errs != nil {
				return fmt.Errorf("%s", strings.Join(errs, "; "))
			}
			return nil
		}
	}
	// warned checks that status's warnings say exactly these of the
	// entries left out (prefix, then the entries named).
	warned := func(a *agenttest.Agent, want ...string) func() error {
		return func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			var got []string
			for _, w := range st.Warnings {
				if strings.Contains(w, "left out, their names forwarded") {
					got = append(got, w)
				}
			}
			if len(got) != len(want) {
				return fmt.Errorf("status warnings on entries left out %q, want %d: %q", got, len(want), want)
			}
			for i := range want {
				if !strings.HasPrefix(got[i], want[i]) && !strings.HasSuffix(got[i], want[i]) {
					return fmt.Errorf("status warning %q, want %q", got[i], want[i])
				}
			}
			return nil
		}
	}
	const otherRev = `2 ServiceEntries left out, their names forwarded: labelled istio.io/rev with another revision than istiod's, "default" (--istio-revision), so istiod ignores them, and ztunnel routes none of their addresses: shop/canary, shop/canary-vip`

	t.Run("another revision's", func(t *testing.T) {
		a := start(t)
		if err := answers(t, a, map[string]string{
			"plain.example": "192.0.2.1", "ours.example": "192.0.2.2", "ours-vip.example": "240.240.0.8", "lab.example": "192.0.2.4",
			"canary.example": forwarded, "canary-vip.example": forwarded,
		})(); err != nil {
			t.Error(err)
		}
		if err := warned(a, otherRev)(); err != nil {
			t.Error(err)
		}
	})

	t.Run("of the canary", func(t *testing.T) {
		a := start(t, kube.WithIstioRevision("canary"))
		if err := answers(t, a, map[string]string{
			"plain.example": "192.0.2.1", "ours.example": forwarded, "ours-vip.example": "240.240.0.8", "lab.example": "192.0.2.4",
			"canary.example": "192.0.2.3", "canary-vip.example": "240.240.0.7",
		})(); err != nil {
			t.Error(err)
		}
		if err := warned(a, `1 ServiceEntry left out, their names forwarded: labelled istio.io/rev with another revision than istiod's, "canary" (--istio-revision)`)(); err != nil {
			t.Error(err)
		}
	})

	t.Run("discoverySelectors", func(t *testing.T) {
		a := start(t)
		// Changed at run time: followed with no restart.
		setMesh("discoverySelectors:\n- matchLabels:\n    team: shop\n")
		const unselected = `1 ServiceEntry left out, their names forwarded: in namespaces the discoverySelectors of mesh config istio-system/istio ("team=shop") do not select, so istiod ignores them, and ztunnel routes none of their addresses: lab/lab`
		agenttest.Eventually(t, 30*time.Second, warned(a, otherRev, unselected))
		if err := answers(t, a, map[string]string{"lab.example": forwarded, "plain.example": "192.0.2.1", "canary.example": forwarded})(); err != nil {
			t.Error(err)
		}
		// The namespace labelled so that a selector selects it, and back.
		relabel := func(team string) {
			t.Helper()
			if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				lab, err := kc.CoreV1().Namespaces().Get(ctx, "lab", metav1.GetOptions{})
				if err != nil {
					return err
				}
				lab.Labels["team"] = team
				_, err = kc.CoreV1().Namespaces().Update(ctx, lab, metav1.UpdateOptions{})
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		relabel("shop")
		agenttest.Eventually(t, 30*time.Second, answers(t, a, map[string]string{"lab.example": "192.0.2.4"}))
		relabel("lab")
		agenttest.Eventually(t, 30*time.Second, answers(t, a, map[string]string{"lab.example": forwarded}))
		// A selector that does not convert: istiod keeps the selectors it
		// had, and so does the agent.
		setMesh("discoverySelectors:\n- matchExpressions: [{key: team, operator: Like, values: [lab]}]\n")
		agenttest.Eventually(t, 30*time.Second, func() error {
			st, err := a.Status()
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(st.SourceErrors, func(s string) bool { return strings.Contains(s, "discoverySelectors[0]") }) {
				return fmt.Errorf("source errors %q do not name the selector that does not convert", st.SourceErrors)
			}
			return nil
		})
		if err := answers(t, a, map[string]string{"lab.example": forwarded, "plain.example": "192.0.2.1"})(); err != nil {
			t.Error(err)
		}
		// None: every namespace.
		setMesh("discoverySelectors: []\n")
		agenttest.Eventually(t, 30*time.Second, warned(a, otherRev))
		if err := answers(t, a, map[string]string{"lab.example": "192.0.2.4"})(); err != nil {
			t.Error(err)
		}
	})
}
