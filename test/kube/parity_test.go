package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
)

// meshSelectors are the discoverySelectors of TestUnselectedServiceYieldsToServiceEntry:
// the namespaces labelled mesh=on.
const meshSelectors = "discoverySelectors:\n- matchLabels:\n    mesh: \"on\"\n"

// TestUnselectedServiceYieldsToServiceEntry runs a real istiod with
// ambient mode on and discoverySelectors that leave out namespace legacy:
// istiod sees no Service there (its Services pass the same filter as its
// ServiceEntries), so for db.legacy.svc.cluster.local, which a
// ServiceEntry of team-a (selected) also names, it sends ztunnel the
// ServiceEntry alone, and every namespace answers its VIP. A Service of
// legacy that no ServiceEntry names answers its ClusterIP, as kube-dns
// does. Before: the Service's ClusterIP answered db from default and
// team-b, an address ztunnel has no service for.
func TestUnselectedServiceYieldsToServiceEntry(t *testing.T) {
	c := newCluster(t)
	for _, ns := range []string{"default", "team-a", "team-b"} {
		c.label(t, ns, map[string]string{"mesh": "on"})
	}
	c.namespace(t, "legacy", nil)
	istiod := c.env.StartIstiod(kubetest.WithAmbient(), kubetest.WithMeshConfig(meshSelectors))
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)

	db := c.clusterIPService(t, "legacy", "db")
	web := c.clusterIPService(t, "legacy", "web")
	const host = "db.legacy.svc.cluster.local"
	c.serviceEntry(t, "team-a", "db-se", nil, dnsSE(host))

	// istiod sends ztunnel the ServiceEntry, with its VIP, and nothing of
	// legacy.
	var ambient []kubetest.AmbientService
	var vip string
	agenttest.Eventually(t, 30*time.Second, func() error {
		var err error
		if ambient, err = istiod.Ambientz(context.Background()); err != nil {
			return err
		}
		if i := slices.IndexFunc(ambient, func(s kubetest.AmbientService) bool { return s.Namespace == "legacy" }); i >= 0 {
			return fmt.Errorf("ambientz lists %s/%s (%s): legacy is not selected", ambient[i].Namespace, ambient[i].Name, ambient[i].Hostname)
		}
		i := slices.IndexFunc(ambient, func(s kubetest.AmbientService) bool { return s.Hostname == host })
		if i < 0 || ambient[i].Namespace != "team-a" || ambient[i].Name != "db-se" || len(family(addrStrings(ambient[i]), true)) == 0 {
			return fmt.Errorf("ambientz has no team-a/db-se with an IPv4 VIP for %s: %+v", host, ambient)
		}
		vip = family(addrStrings(ambient[i]), true)[0]
		return nil
	})

	waitSeen(t, a, "default", "ServiceEntry team-a/db-se", "Service legacy/web")
	for _, p := range []netip.Addr{curlIP, teamAIP, teamBIP} {
		expect(t, a, p, host, dns.TypeA, vip)
		expect(t, a, p, "web.legacy.svc.cluster.local", dns.TypeA, web)
	}
	if vip == db {
		t.Fatalf("the VIP %s is the ClusterIP", vip)
	}
	askers := []asker{{"default", curlIP, false}, {"team-a", teamAIP, true}, {"team-b", teamBIP, true}}
	c.checkEveryAmbientHost(t, a, ambient, askers)
}

// label sets the labels of namespace ns.
func (c *cluster) label(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	api := c.env.Client().CoreV1().Namespaces()
	n, err := api.Get(c.ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels = labels
	if _, err := api.Update(c.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addrStrings is s's addresses as text.
func addrStrings(s kubetest.AmbientService) []string {
	var out []string
	for _, a := range s.Addresses {
		out = append(out, a.String())
	}
	return out
}

// TestHostWrittenAsAskedWins runs a real istiod with ambient mode on
// against ServiceEntries whose hosts differ only by case or a trailing
// dot: istiod keeps each host as written and sends ztunnel all of them,
// and ztunnel matches the name a pod asks exactly, so api.case.example
// is the lower-case entry's, though the upper-case one is older and of
// the same namespace; dot.case.example is the one written without the
// dot, though the older one with it is of the asker's namespace. Before:
// ztdns folded the hosts, and the older entry answered its VIP, one
// ztunnel has no service for under that name.
func TestHostWrittenAsAskedWins(t *testing.T) {
	c := newCluster(t)
	istiod := c.env.StartIstiod(kubetest.WithAmbient())
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)

	type object struct{ ns, name, host string }
	older := []object{{"team-a", "api-upper", "API.case.example"}, {"team-b", "dot-dotted", "dot.case.example."}}
	newer := []object{{"team-a", "api-lower", "api.case.example"}, {"team-a", "dot-plain", "dot.case.example"}}
	for _, o := range older {
		c.serviceEntry(t, o.ns, o.name, nil, dnsSE(o.host))
	}
	time.Sleep(1100 * time.Millisecond) // creationTimestamp has second resolution
	for _, o := range newer {
		c.serviceEntry(t, o.ns, o.name, nil, dnsSE(o.host))
	}

	// istiod sends ztunnel all four, each under its host as written.
	vips := map[string]string{} // ns/name → its IPv4 VIP
	agenttest.Eventually(t, 30*time.Second, func() error {
		ambient, err := istiod.Ambientz(context.Background())
		if err != nil {
			return err
		}
		for _, o := range append(older, newer...) {
			i := slices.IndexFunc(ambient, func(s kubetest.AmbientService) bool { return s.Namespace == o.ns && s.Name == o.name })
			if i < 0 || len(family(addrStrings(ambient[i]), true)) == 0 {
				return fmt.Errorf("ambientz lists no %s/%s with an IPv4 VIP", o.ns, o.name)
			}
			if got := ambient[i].Hostname; got != o.host {
				return fmt.Errorf("ambientz lists %s/%s as %q, want %q as written", o.ns, o.name, got, o.host)
			}
			vips[o.ns+"/"+o.name] = family(addrStrings(ambient[i]), true)[0]
		}
		return nil
	})

	waitSeen(t, a, "default", "ServiceEntry team-a/api-lower", "ServiceEntry team-a/dot-plain")
	for _, p := range []netip.Addr{curlIP, teamAIP, teamBIP} {
		expect(t, a, p, "api.case.example", dns.TypeA, vips["team-a/api-lower"])
		expect(t, a, p, "dot.case.example", dns.TypeA, vips["team-a/dot-plain"])
	}
}
