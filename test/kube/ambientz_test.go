package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/kubetest"
)

// ambientObject is a ServiceEntry of TestAnswersAreWhatIstiodSendsZtunnel.
type ambientObject struct {
	ns, name string
	spec     seSpec
	// served: istiod sends it to ztunnel (its namespace's object for its
	// host: the Service, else the oldest ServiceEntry, whatever exportTo).
	served bool
}

// TestAnswersAreWhatIstiodSendsZtunnel runs a real istiod with ambient mode
// on against ServiceEntries that several namespaces name, scoped with
// exportTo, and a Service whose ClusterIP a ServiceEntry elsewhere lists,
// and checks every address ztdns answers a pod of each namespace against
// what istiod sends ztunnel (/debug/ambientz): an address ztunnel has no
// service for is one an ambient pod cannot connect to. A reverse name of a
// Service's ClusterIP is the Service's, as kube-dns answers it (Istio
// forwards PTR queries there). One istiod start for every case.
func TestAnswersAreWhatIstiodSendsZtunnel(t *testing.T) {
	c := newCluster(t)
	istiod := c.env.StartIstiod(kubetest.WithAmbient())
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{})
	a := startAgent(t, c, up.Addr)

	svc, err := c.env.Client().CoreV1().Services("team-a").Create(c.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "productpage", Namespace: "team-a"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := svc.Spec.ClusterIP
	const productpage = "productpage.team-a.svc.cluster.local."

	dnsSE := func(host string, exportTo ...string) seSpec {
		return seSpec{hosts: []string{host}, resolution: networkingv1alpha3.ServiceEntry_DNS, ports: httpPort(), exportTo: exportTo}
	}
	older := []ambientObject{
		// An older entry exported to nobody, a newer one exported
		// everywhere: istiod sends the older alone.
		{ns: "team-a", name: "hidden-old", spec: dnsSE("hidden.example", "~"), served: true},
		// Exported to team-b, the newer to its own namespace.
		{ns: "team-a", name: "scoped-old", spec: dnsSE("scoped.example", "team-b"), served: true},
		// One host in two namespaces, each its own object.
		{ns: "team-a", name: "multi-a", spec: dnsSE("multi.example"), served: true},
		// The older, canonical, exported to its own namespace only.
		{ns: "team-b", name: "private", spec: dnsSE("private.example", "."), served: true},
	}
	newer := []ambientObject{
		{ns: "team-a", name: "hidden-new", spec: dnsSE("hidden.example")},
		{ns: "team-a", name: "scoped-new", spec: dnsSE("scoped.example", ".")},
		{ns: "team-b", name: "multi-b", spec: dnsSE("multi.example"), served: true},
		{ns: "team-a", name: "public", spec: dnsSE("private.example"), served: true},
		// An alias of the Service's ClusterIP.
		{ns: "team-b", name: "alias", spec: seSpec{hosts: []string{"alias.example.com"}, addresses: []string{clusterIP},
			resolution: networkingv1alpha3.ServiceEntry_STATIC, ports: httpPort()}, served: true},
	}
	for _, o := range older {
		c.serviceEntry(t, o.ns, o.name, nil, o.spec)
	}
	time.Sleep(1100 * time.Millisecond) // creationTimestamp has second resolution
	for _, o := range newer {
		c.serviceEntry(t, o.ns, o.name, nil, o.spec)
	}
	objects := append(older, newer...)

	// istiod has allocated every VIP and sends ztunnel its namespaces'
	// objects alone.
	var ambient []kubetest.AmbientService
	agenttest.Eventually(t, 30*time.Second, func() error {
		for _, o := range objects {
			if o.spec.addresses != nil {
				continue
			}
			se, err := c.env.IstioClient().NetworkingV1().ServiceEntries(o.ns).Get(c.ctx, o.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(se.Status.GetAddresses()) == 0 {
				return fmt.Errorf("%s/%s: istiod has allocated no VIP yet", o.ns, o.name)
			}
		}
		if ambient, err = istiod.Ambientz(context.Background()); err != nil {
			return err
		}
		for _, o := range objects {
			served := slices.ContainsFunc(ambient, func(s kubetest.AmbientService) bool {
				return s.Namespace == o.ns && s.Name == o.name && len(s.Addresses) > 0
			})
			if served != o.served {
				return fmt.Errorf("ambientz lists %s/%s with addresses: %v, want %v", o.ns, o.name, served, o.served)
			}
		}
		return nil
	})

	// The agent has seen every write above once it answers a ServiceEntry
	// created after them (one watch, in order; the Service's came first).
	c.serviceEntry(t, "default", "sentinel", nil, seSpec{hosts: []string{"sentinel.example"}, addresses: []string{"198.51.100.99"},
		resolution: networkingv1alpha3.ServiceEntry_STATIC, ports: httpPort()})
	expect(t, a, curlIP, "sentinel.example", dns.TypeA, "198.51.100.99")
	expect(t, a, curlIP, productpage, dns.TypeA, clusterIP)

	vips := map[string][]netip.Addr{} // host → the addresses ztunnel has a service for
	for _, s := range ambient {
		vips[s.Hostname] = append(vips[s.Hostname], s.Addresses...)
	}
	askers := map[string]netip.Addr{"default": curlIP, "team-a": teamAIP, "team-b": teamBIP}
	for _, host := range []string{"hidden.example", "scoped.example", "multi.example", "private.example", "alias.example.com"} {
		for ns, from := range askers {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				for _, got := range a.Addrs(t, from, host, qtype) {
					ip, err := netip.ParseAddr(got)
					if err != nil {
						continue // an rcode: forwarded, or NODATA
					}
					if !slices.Contains(vips[host], ip) {
						t.Errorf("%s %s from %s answers %s, which istiod does not send ztunnel for the host (it sends %v)",
							host, dns.TypeToString[qtype], ns, ip, vips[host])
					}
				}
			}
		}
	}
	// Not all forwarded: the hosts every pod sees answer.
	for _, host := range []string{"multi.example", "alias.example.com"} {
		for ns, from := range askers {
			if got := a.Addrs(t, from, host, dns.TypeA); len(got) == 0 || got[0] == "NXDOMAIN" {
				t.Errorf("%s from %s: %v, want an address", host, ns, got)
			}
		}
	}

	// The reverse name of the Service's ClusterIP, which ztunnel knows as
	// the Service's address, is the Service's from every namespace.
	ip := netip.MustParseAddr(clusterIP)
	if !slices.Contains(vips[strings.TrimSuffix(productpage, ".")], ip) {
		t.Errorf("ambientz has no %s at %s: %v", productpage, ip, vips)
	}
	rev, err := dns.ReverseAddr(clusterIP)
	if err != nil {
		t.Fatal(err)
	}
	for ns, from := range askers {
		resp := a.Query(t, "udp", from, rev, dns.TypePTR, false)
		var names []string
		for _, rr := range resp.Answer {
			if p, ok := rr.(*dns.PTR); ok {
				names = append(names, p.Ptr)
			}
		}
		if !slices.Equal(names, []string{productpage}) {
			t.Errorf("PTR %s from %s: %v (%s), want %s", rev, ns, names, dns.RcodeToString[resp.Rcode], productpage)
		}
	}
}
