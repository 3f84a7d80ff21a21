//go:build linux

package agent_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1 "istio.io/api/networking/v1"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// TestKubeDNSTTLChangeKeepsVIPs: a change of the ttl in kube-dns's
// Corefile, which the agent follows without --ttl by building a new
// table builder, moves no VIP of ztdns's allocator: every host answers
// the VIPs it had (with Istio's TTL, 30 s, which kube-dns's leaves alone),
// and a Service answers with the new TTL. The allocator decides from the
// snapshot alone, oldest ServiceEntry first, so a builder that starts
// afresh must land every host where the old one, after its history of
// builds, had it. The hosts collide (one home slot) and the older entry
// gains its host after the younger one took the slot, whose owner sorts
// first: only creation order puts them where they are.
func TestKubeDNSTTLChangeKeepsVIPs(t *testing.T) {
	env := kubetest.Start(t)
	kc := env.Client()
	ctx := t.Context()
	const node, ns = "node-a", "shop"
	client := netip.MustParseAddr("127.0.0.3")
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Dual-stack: a pod of one family gets only its family's VIPs.
	env.RunningPod(ctx, ns, "app", node, client, netip.MustParseAddr("fd00::3"))
	env.SetKubeDNSCorefile(ctx, kubetest.KubeadmCorefile("ttl 5"))
	// A Service's TTL is kube-dns's: it shows which builder answers.
	if _, err := kc.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The two api hosts have one home slot (FNV-1a of the name, modulo
	// vip.Slots: 64383); catalog has its own.
	const catalog, api, api2 = "catalog.example.com", "api-536.example.com", "api-1311.example.com"
	ses := env.IstioClient().NetworkingV1().ServiceEntries(ns)
	newSE := func(name string, hosts ...string) *istionetv1.ServiceEntry {
		t.Helper()
		se, err := ses.Create(ctx, &istionetv1.ServiceEntry{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: networkingv1.ServiceEntry{Hosts: hosts, Resolution: networkingv1.ServiceEntry_DNS,
				Ports: []*networkingv1.ServicePort{{Name: "https", Number: 443, Protocol: "TLS"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return se
	}
	// zeta is older than alpha, whose name sorts first: creationTimestamp
	// has whole seconds, so alpha waits for the next one.
	zeta := newSE("zeta", catalog)
	time.Sleep(time.Until(zeta.CreationTimestamp.Add(time.Second)))
	alpha := newSE("alpha", api)
	if !alpha.CreationTimestamp.After(zeta.CreationTimestamp.Time) {
		t.Fatalf("alpha created %s, not after zeta's %s", alpha.CreationTimestamp, zeta.CreationTimestamp)
	}

	a := agenttest.Start(t, agent.Config{Source: kube.New(env.Config, kube.WithNodeName(node)),
		Upstreams: []netip.AddrPort{markerUpstream(t)}})
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.VIPs != "auto: ztdns's allocator" {
		t.Fatalf("status's VIPs %q, want auto: ztdns's allocator", st.VIPs)
	}

	// vips returns the VIPs, A and AAAA, every host answers, or why one
	// does not answer one ztdns VIP with ttl.
	vips := func(ttl uint32, hosts ...string) (map[string][]string, error) {
		got := map[string][]string{}
		for _, h := range hosts {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				m := a.Query(t, "udp", client, h, qtype, false)
				if len(m.Answer) != 1 {
					return nil, fmt.Errorf("%s %s: %v, want one VIP", h, dns.TypeToString[qtype], m.Answer)
				}
				rr := m.Answer[0]
				var addr netip.Addr
				switch rr := rr.(type) {
				case *dns.A:
					addr, _ = netip.AddrFromSlice(rr.A.To4())
				case *dns.AAAA:
					addr, _ = netip.AddrFromSlice(rr.AAAA)
				}
				if !vip.PrefixV4.Contains(addr) && !vip.PrefixV6.Contains(addr) || rr.Header().Ttl != ttl {
					return nil, fmt.Errorf("%s %s: %v, want a ztdns VIP with TTL %d", h, dns.TypeToString[qtype], rr, ttl)
				}
				got[h] = append(got[h], addr.String())
			}
		}
		return got, nil
	}
	// waitVIPs waits until vips has them and until passes.
	waitVIPs := func(ttl uint32, until func(map[string][]string) error, hosts ...string) map[string][]string {
		t.Helper()
		var got map[string][]string
		agenttest.Eventually(t, 30*time.Second, func() error {
			var err error
			if got, err = vips(ttl, hosts...); err != nil {
				return err
			}
			return until(got)
		})
		return got
	}
	serviceTTL := func(ttl uint32) error {
		m := a.Query(t, "udp", client, "web."+ns+".svc.cluster.local", dns.TypeA, false)
		if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != ttl {
			return fmt.Errorf("web A: %v, want one ClusterIP with TTL %d", m.Answer, ttl)
		}
		return nil
	}
	anyVIPs := func(map[string][]string) error { return nil }
	const seTTL = table.DefaultServiceEntryTTL
	agenttest.Eventually(t, 30*time.Second, func() error { return serviceTTL(5) })
	first := waitVIPs(seTTL, anyVIPs, catalog, api)

	// zeta, the older, gains the other api host: it takes the slot, and
	// alpha's host, younger, moves.
	zeta.Spec.Hosts = append(zeta.Spec.Hosts, api2)
	if _, err := ses.Update(ctx, zeta, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := waitVIPs(seTTL, func(got map[string][]string) error {
		if slices.Equal(got[api], first[api]) {
			return fmt.Errorf("%s still answers %v: %s, of the older ServiceEntry, has not taken its slot", api, first[api], api2)
		}
		return nil
	}, catalog, api, api2)
	if !slices.Equal(before[catalog], first[catalog]) {
		t.Fatalf("%s moved from %v to %v when another entry gained a host", catalog, first[catalog], before[catalog])
	}

	// kube-dns's TTL changes: the Service's with it, the same VIPs.
	env.SetKubeDNSCorefile(ctx, kubetest.KubeadmCorefile("ttl 7"))
	agenttest.Eventually(t, 30*time.Second, func() error { return serviceTTL(7) })
	after := waitVIPs(seTTL, anyVIPs, catalog, api, api2)
	for _, h := range []string{catalog, api, api2} {
		if !slices.Equal(after[h], before[h]) {
			t.Errorf("%s answers %v after kube-dns's TTL changed, %v before", h, after[h], before[h])
		}
	}
}
