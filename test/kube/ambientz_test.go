package kube

import (
	"context"
	"fmt"
	"maps"
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
// exportTo, a Service whose ClusterIP a ServiceEntry elsewhere lists and
// whose host ServiceEntries name, and checks what ztdns answers a pod of
// each namespace against what istiod sends ztunnel (/debug/ambientz), both
// ways: every address answered is one ztunnel has a service for (any other
// is one an ambient pod cannot connect to), and every host ztunnel has
// answers exactly the VIPs of the service ztunnel picks for that pod, of
// those exportTo lets it see. A reverse name of a Service's ClusterIP is
// the Service's, as kube-dns answers it (Istio forwards PTR queries
// there). One istiod start for every case.
func TestAnswersAreWhatIstiodSendsZtunnel(t *testing.T) {
	c := newCluster(t)
	istiod := c.env.StartIstiod(kubetest.WithAmbient())
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)

	const productpage = "productpage.team-a.svc.cluster.local."
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
		// The Service's host, named by ServiceEntries older than the
		// Service: in the Service's namespace the Service wins all the
		// same, and is the canonical one; team-b's is team-b's own.
		{ns: "team-a", name: "productpage-se", spec: dnsSE(strings.TrimSuffix(productpage, "."))},
		{ns: "team-b", name: "productpage-b", spec: dnsSE(strings.TrimSuffix(productpage, ".")), served: true},
	}
	for _, o := range older {
		c.serviceEntry(t, o.ns, o.name, nil, o.spec)
	}
	time.Sleep(1100 * time.Millisecond) // creationTimestamp has second resolution
	svc, err := c.env.Client().CoreV1().Services("team-a").Create(c.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "productpage", Namespace: "team-a"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := svc.Spec.ClusterIP
	newer := []ambientObject{
		{ns: "team-a", name: "hidden-new", spec: dnsSE("hidden.example")},
		{ns: "team-a", name: "scoped-new", spec: dnsSE("scoped.example", ".")},
		{ns: "team-b", name: "multi-b", spec: dnsSE("multi.example"), served: true},
		{ns: "team-a", name: "public", spec: dnsSE("private.example"), served: true},
		// An alias of the Service's ClusterIP.
		{ns: "team-b", name: "alias", spec: seSpec{hosts: []string{"alias.example.com"}, addresses: []string{clusterIP},
			resolution: networkingv1alpha3.ServiceEntry_STATIC, ports: httpPort()}, served: true},
	}
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
	// created after them (one watch, in order), and the Service (a watch of
	// its own) once it answers that.
	c.serviceEntry(t, "default", "sentinel", nil, seSpec{hosts: []string{"sentinel.example"}, addresses: []string{"198.51.100.99"},
		resolution: networkingv1alpha3.ServiceEntry_STATIC, ports: httpPort()})
	expect(t, a, curlIP, "sentinel.example", dns.TypeA, "198.51.100.99")
	expect(t, a, curlIP, productpage, dns.TypeA, clusterIP)
	agenttest.Eventually(t, 10*time.Second, func() error {
		if ambient, err = istiod.Ambientz(context.Background()); err != nil {
			return err
		}
		if !slices.ContainsFunc(ambient, func(s kubetest.AmbientService) bool { return s.Hostname == "sentinel.example" }) {
			return fmt.Errorf("ambientz does not list sentinel.example yet")
		}
		return nil
	})

	vips := map[string][]netip.Addr{} // host → the addresses ztunnel has a service for
	for _, s := range ambient {
		vips[s.Hostname] = append(vips[s.Hostname], s.Addresses...)
	}
	askers := []asker{{"default", curlIP, false}, {"team-a", teamAIP, true}, {"team-b", teamBIP, true}}
	// Every host istiod sends ztunnel answers, from each namespace, the
	// addresses of the service ztunnel picks for it there.
	c.checkEveryAmbientHost(t, a, ambient, askers)

	// Every address answered is one ztunnel has a service for.
	for _, host := range []string{"hidden.example", "scoped.example", "multi.example", "private.example", "alias.example.com"} {
		for _, p := range askers {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				for _, got := range a.Addrs(t, p.ip, host, qtype) {
					ip, err := netip.ParseAddr(got)
					if err != nil || got == forwarded4 || got == forwarded6 {
						continue // forwarded, or an rcode
					}
					if !slices.Contains(vips[host], ip) {
						t.Errorf("%s %s from %s answers %s, which istiod does not send ztunnel for the host (it sends %v)",
							host, dns.TypeToString[qtype], p.ns, ip, vips[host])
					}
				}
			}
		}
	}
	// Not all forwarded: the hosts every pod sees answer.
	for _, host := range []string{"multi.example", "alias.example.com"} {
		for _, p := range askers {
			if got := a.Addrs(t, p.ip, host, dns.TypeA); len(got) == 0 || got[0] == forwarded4 {
				t.Errorf("%s from %s: %v, want an address", host, p.ns, got)
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
	for _, p := range askers {
		resp := a.Query(t, "udp", p.ip, rev, dns.TypePTR, false)
		var names []string
		for _, rr := range resp.Answer {
			if ptr, ok := rr.(*dns.PTR); ok {
				names = append(names, ptr.Ptr)
			}
		}
		if !slices.Equal(names, []string{productpage}) {
			t.Errorf("PTR %s from %s: %v (%s), want %s", rev, p.ns, names, dns.RcodeToString[resp.Rcode], productpage)
		}
	}
}

// asker is a pod of the test that asks ztdns.
type asker struct {
	ns     string
	ip     netip.Addr
	v4Only bool // its addresses are all IPv4
}

// ambientService is a service of /debug/ambientz and what the test reads
// of its object: who sees it and when it was created.
type ambientService struct {
	kubetest.AmbientService
	// service: a Kubernetes Service, seen from every namespace; else a
	// ServiceEntry.
	service bool
	// allocated: its addresses are VIPs istiod allocated, not
	// spec.addresses.
	allocated bool
	exportTo  []string
	created   time.Time
}

// visibleFrom says whether a pod of ns sees the service, as the sidecar
// proxy honours exportTo: a ServiceEntry without one is exported
// everywhere (this istiod's mesh config gives no defaultServiceExportTo).
func (s ambientService) visibleFrom(ns string) bool {
	if s.service || len(s.exportTo) == 0 {
		return true
	}
	return slices.Contains(s.exportTo, "*") || slices.Contains(s.exportTo, ns) ||
		slices.Contains(s.exportTo, ".") && ns == s.Namespace
}

// ztunnelPicks returns, of the services istiod sends ztunnel for one host,
// those a pod of ns may be given, in ztunnel's order (get_best_by_host)
// applied to the ones ns sees: its own namespace's, else the canonical
// one, else (ztunnel takes the first it has) the oldest, as ztdns does.
// None: the host is not ns's.
func ztunnelPicks(services []ambientService, ns string) []ambientService {
	var visible []ambientService
	for _, s := range services {
		if s.visibleFrom(ns) {
			visible = append(visible, s)
		}
	}
	if i := slices.IndexFunc(visible, func(s ambientService) bool { return s.Namespace == ns }); i >= 0 {
		return visible[i : i+1]
	}
	if i := slices.IndexFunc(visible, func(s ambientService) bool { return s.Canonical }); i >= 0 {
		return visible[i : i+1]
	}
	var oldest []ambientService
	for _, s := range visible {
		switch {
		case len(oldest) == 0 || s.created.Before(oldest[0].created):
			oldest = []ambientService{s}
		case s.created.Equal(oldest[0].created):
			oldest = append(oldest, s)
		}
	}
	return oldest
}

// checkEveryAmbientHost checks that every host of ambient (what istiod
// sends ztunnel) answers each asker A and AAAA with exactly the addresses
// of the service ztunnel picks for it in the asker's namespace, and is
// forwarded where the namespace sees none of the host's services. An
// IPv4-only pod gets no allocated IPv6 VIP, as from the sidecar proxy
// (README: a ServiceEntry host's auto-allocated VIP of the family a
// single-stack pod lacks). Headless Services, which have no VIP, are left
// out.
func (c *cluster) checkEveryAmbientHost(t *testing.T, a *agenttest.Agent, ambient []kubetest.AmbientService, askers []asker) {
	t.Helper()
	byHost := map[string][]ambientService{}
	for _, as := range ambient {
		s := ambientService{AmbientService: as}
		svc, err := c.env.Client().CoreV1().Services(as.Namespace).Get(c.ctx, as.Name, metav1.GetOptions{})
		if err == nil && as.Hostname == as.Name+"."+as.Namespace+".svc.cluster.local" {
			if len(as.Addresses) == 0 {
				continue // headless
			}
			s.service, s.created = true, svc.CreationTimestamp.Time
		} else {
			se, err := c.env.IstioClient().NetworkingV1().ServiceEntries(as.Namespace).Get(c.ctx, as.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("ambientz lists %s/%s for %s, neither a Service nor a ServiceEntry: %v", as.Namespace, as.Name, as.Hostname, err)
			}
			s.allocated, s.exportTo, s.created = len(se.Spec.Addresses) == 0, se.Spec.ExportTo, se.CreationTimestamp.Time
		}
		byHost[as.Hostname] = append(byHost[as.Hostname], s)
	}
	for _, host := range slices.Sorted(maps.Keys(byHost)) {
		for _, p := range askers {
			picks := ztunnelPicks(byHost[host], p.ns)
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				got := a.Addrs(t, p.ip, host, qtype)
				var wants [][]string
				for _, s := range picks {
					wants = append(wants, wantAddrs(s, qtype, p.v4Only))
				}
				if len(picks) == 0 {
					wants = append(wants, forwardedAnswer(qtype))
				}
				if !slices.ContainsFunc(wants, func(w []string) bool { return slices.Equal(got, w) }) {
					var from []string
					for _, s := range picks {
						from = append(from, s.Namespace+"/"+s.Name)
					}
					t.Errorf("%s %s from %s answers %q, want %q (ztunnel's service there: %v)",
						host, dns.TypeToString[qtype], p.ns, got, wants, from)
				}
			}
		}
	}
	t.Logf("checked %d hosts ambientz lists from %d namespaces", len(byHost), len(askers))
}

// wantAddrs is what a query of qtype for a service's host answers: its
// addresses of that family (NODATA without one), an allocated IPv6 VIP not
// to an IPv4-only pod; forwarded when none is left for the pod.
func wantAddrs(s ambientService, qtype uint16, v4Only bool) []string {
	all := addrStrings(s.AmbientService)
	if s.allocated && v4Only {
		all = family(all, true)
	}
	if len(all) == 0 {
		return forwardedAnswer(qtype)
	}
	return family(all, qtype == dns.TypeA)
}

// forwardedAnswer is what the marker upstream answers a forwarded query
// of qtype.
func forwardedAnswer(qtype uint16) []string {
	if qtype == dns.TypeAAAA {
		return []string{forwarded6}
	}
	return []string{forwarded4}
}
