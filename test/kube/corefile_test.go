package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// TestFollowsKubeDNSCorefile: where ztdns answers a cluster name itself,
// an ambient pod gets the TTL the cluster's kube-dns gives it (the ttl of
// the kubernetes plugin in the coredns ConfigMap), followed as the
// ConfigMap changes; what ztdns does not follow of it (ignore
// empty_service, endpoint_pod_names) is named in `ztdns status`. Before,
// ztdns answered with its own 30 s where kube-dns answered 5, and nothing
// said that kube-dns's settings stopped applying. An agent given --ttl
// keeps it. CoreDNS, run with the ConfigMap's kubernetes options, shows
// the TTL ztdns must match.
func TestFollowsKubeDNSCorefile(t *testing.T) {
	c := newCluster(t)
	c.env.SetKubeDNSCorefile(c.ctx, kubetest.KubeadmCorefile("ttl 5"))
	// A ClusterIP Service without endpoints: kube-dns's `ignore
	// empty_service` would make it NXDOMAIN.
	svc, err := c.env.Client().CoreV1().Services("team-a").Create(c.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "team-a"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const qname = "web.team-a.svc.cluster.local."
	up := markerUpstream(t)
	coredns := c.env.StartCoreDNSWith(up.Addr, "pods insecure\n\t\tttl 5")
	a := startAgent(t, c, coredns)
	waitSeen(t, a, "team-a", "Service team-a/web")

	// answersWith waits until the agent answers qname with the Service's
	// ClusterIP and ttl.
	answersWith := func(a *agenttest.Agent, ttl uint32) {
		t.Helper()
		agenttest.Eventually(t, 10*time.Second, func() error {
			m := a.Query(t, "udp", curlIP, qname, dns.TypeA, false)
			if len(m.Answer) != 1 {
				return fmt.Errorf("%s A: %v, want %s", qname, m.Answer, svc.Spec.ClusterIP)
			}
			rr, ok := m.Answer[0].(*dns.A)
			if !ok || rr.A.String() != svc.Spec.ClusterIP || rr.Hdr.Ttl != ttl {
				return fmt.Errorf("%s A: %v, want %s with TTL %d", qname, m.Answer[0], svc.Spec.ClusterIP, ttl)
			}
			return nil
		})
	}
	q := new(dns.Msg)
	q.SetQuestion(qname, dns.TypeA)
	want, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, coredns.String())
	if err != nil {
		t.Fatalf("ask CoreDNS: %v", err)
	}
	if len(want.Answer) != 1 || want.Answer[0].Header().Ttl != 5 {
		t.Fatalf("CoreDNS with ttl 5 answers %v", want.Answer)
	}
	answersWith(a, 5)

	// --ttl given wins.
	rc, err := kube.RESTConfig(c.env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	given := agenttest.Start(t, agent.Config{Source: kube.New(rc, kube.WithNodeName(node)), Upstreams: []netip.AddrPort{coredns}, TTL: 10 * time.Second})
	waitSeen(t, given, "team-a", "Service team-a/web")
	answersWith(given, 10)

	// status names each option it does not follow, and the TTL stays.
	const where = "kube-dns's Corefile kube-system/coredns: "
	c.env.SetKubeDNSCorefile(c.ctx, kubetest.KubeadmCorefile("ttl 5", "endpoint_pod_names", "ignore empty_service"))
	waitStatus(t, a, func(st control.Status) error {
		return hasAll(st.SourceWarnings, where+"kubernetes endpoint_pod_names: ", where+"kubernetes ignore empty_service: ")
	})
	answersWith(a, 5)

	// ttl 0 (do not cache): the smallest TTL ztdns gives, with a warning.
	c.env.SetKubeDNSCorefile(c.ctx, kubetest.KubeadmCorefile("ttl 0"))
	answersWith(a, 1)
	waitStatus(t, a, func(st control.Status) error {
		if err := hasAll(st.SourceWarnings, where+"kubernetes ttl 0: "); err != nil {
			return err
		}
		if slices.ContainsFunc(st.SourceWarnings, func(w string) bool { return strings.Contains(w, "empty_service") }) {
			return fmt.Errorf("source warnings %q still name ignore empty_service, which the Corefile no longer has", st.SourceWarnings)
		}
		return nil
	})

	// A Corefile that does not parse: the default TTL, and status says why.
	c.env.SetKubeDNSCorefile(c.ctx, ".:53 {\n    kubernetes cluster.local {\n        ttl 5\n")
	answersWith(a, 30)
	waitStatus(t, a, func(st control.Status) error {
		return hasAll(st.SourceErrors, "kube-dns's Corefile kube-system/coredns does not parse")
	})

	// No ConfigMap (kube-dns that is not CoreDNS): the default, quietly.
	c.env.SetKubeDNSCorefile(c.ctx, kubetest.KubeadmCorefile("ttl 5"))
	answersWith(a, 5)
	if err := c.env.Client().CoreV1().ConfigMaps(kube.KubeDNSNamespace).Delete(c.ctx, kube.KubeDNSConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	answersWith(a, 30)
	waitStatus(t, a, func(st control.Status) error {
		for _, s := range slices.Concat(st.SourceErrors, st.SourceWarnings) {
			if strings.Contains(s, "kube-dns") {
				return fmt.Errorf("status still says %q without the ConfigMap", s)
			}
		}
		return nil
	})
}

// waitStatus waits until a's status passes check.
func waitStatus(t *testing.T, a *agenttest.Agent, check func(control.Status) error) {
	t.Helper()
	agenttest.Eventually(t, 10*time.Second, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		return check(st)
	})
}

// hasAll says which of prefixes no line of lines starts with.
func hasAll(lines []string, prefixes ...string) error {
	for _, p := range prefixes {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, p) }) {
			return fmt.Errorf("no line starts %q in %q", p, lines)
		}
	}
	return nil
}
