package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/kubetest"
)

// seShape is one ServiceEntry the istiod test creates, and what istiod is
// expected to do with it.
type seShape struct {
	name   string
	labels map[string]string
	spec   seSpec
	// queries maps each host to the name asked for it (a name under a
	// wildcard host).
	queries map[string]string
	// allocated: istiod writes a VIP per host into status.addresses.
	allocated bool
	// answer, when set, is what every query answers instead (spec.addresses).
	answer []string
	// ignored: istiod (of revision "default") ignores the entry, which is
	// labelled istio.io/rev with another revision: not in its registry,
	// though its allocator, which ignores revisions, writes status; the
	// agents forward its hosts.
	ignored bool
}

// istiodShapes are the ServiceEntry shapes whose VIPs istiod decides
// (pilot/pkg/controllers/ipallocate).
func istiodShapes() []seShape {
	dnsRes, static, dynamic, none := networkingv1alpha3.ServiceEntry_DNS, networkingv1alpha3.ServiceEntry_STATIC,
		networkingv1alpha3.ServiceEntry_DYNAMIC_DNS, networkingv1alpha3.ServiceEntry_NONE
	return []seShape{
		{name: "dns", spec: seSpec{hosts: []string{"dns.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"dns.example": "dns.example"}, allocated: true},
		{name: "static", spec: seSpec{hosts: []string{"static.example"}, resolution: static, ports: httpPort()},
			queries: map[string]string{"static.example": "static.example"}, allocated: true},
		{name: "two-hosts", spec: seSpec{hosts: []string{"one.example", "two.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"one.example": "one.example", "two.example": "two.example"}, allocated: true},
		{name: "dynamic-wildcard", spec: seSpec{hosts: []string{"*.dyn.example"}, resolution: dynamic, ports: httpPort()},
			queries: map[string]string{"*.dyn.example": "api.dyn.example"}, allocated: true},
		{name: "static-wildcard", spec: seSpec{hosts: []string{"*.static-wild.example"}, resolution: static, ports: httpPort()},
			queries: map[string]string{"*.static-wild.example": "api.static-wild.example"}},
		{name: "dns-wildcard", spec: seSpec{hosts: []string{"*.dns-wild.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"*.dns-wild.example": "api.dns-wild.example"}},
		{name: "none", spec: seSpec{hosts: []string{"none.example"}, resolution: none, ports: httpPort()},
			queries: map[string]string{"none.example": "none.example"}},
		{name: "reserved", spec: seSpec{hosts: []string{"reserved.example"}, addresses: []string{"198.51.100.7"}, resolution: static, ports: httpPort()},
			queries: map[string]string{"reserved.example": "reserved.example"}, answer: []string{"198.51.100.7"}},
		{name: "opted-out", labels: map[string]string{"networking.istio.io/enable-autoallocate-ip": "false"},
			spec:    seSpec{hosts: []string{"optout.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"optout.example": "optout.example"}},
		// One host named by two ServiceEntries: istiod gives each its own
		// VIP; the older entry answers.
		{name: "shared-older", spec: seSpec{hosts: []string{"shared.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"shared.example": "shared.example"}, allocated: true},
		{name: "shared-newer", spec: seSpec{hosts: []string{"shared.example"}, resolution: dnsRes, ports: tcpPort("tcp")},
			allocated: true},
		{name: "canary", labels: map[string]string{"istio.io/rev": "canary"},
			spec:    seSpec{hosts: []string{"canary.example"}, resolution: dnsRes, ports: httpPort()},
			queries: map[string]string{"canary.example": "canary.example"}, allocated: true, ignored: true},
	}
}

// TestIstiodVIPs runs a real istiod against the API server and two agents
// (two nodes) with the default --vip-source=auto, and checks that for every
// ServiceEntry shape both answer exactly what istiod wrote into
// status.addresses (and what its registry says), that hosts istiod gives no
// VIP are forwarded, as are those of an entry of another revision, which
// istiod (revision "default") ignores but allocates, and that this holds
// across an opt-out toggled both ways, while istiod is down, and across
// its restart.
func TestIstiodVIPs(t *testing.T) {
	c := newCluster(t)
	istiod := c.env.StartIstiod()
	up := markerUpstream(t)
	nodeA := startAgent(t, c, up.Addr) // sees every write as an event

	shapes := istiodShapes()
	for _, s := range shapes {
		c.serviceEntry(t, "default", s.name, s.labels, s.spec)
		if s.name == "shared-older" {
			time.Sleep(1100 * time.Millisecond) // creationTimestamp has second resolution
		}
	}
	status := c.waitStatus(t, shapes)
	// An agent that lists this entry has had every write above (a watch
	// delivers them in order), istiod's status writes included: a host
	// checkAll expects forwarded is then forwarded because of its entry,
	// not because the agent has not had it yet.
	c.serviceEntry(t, "default", "sentinel", nil, seSpec{hosts: []string{"sentinel.example"},
		addresses: []string{"198.51.100.99"}, resolution: networkingv1alpha3.ServiceEntry_STATIC, ports: httpPort()})
	nodeB := startAgent(t, c, up.Addr) // lists everything at once
	nodes := map[string]*agenttest.Agent{"A": nodeA, "B": nodeB}

	checkAll := func(t *testing.T, status map[string]map[string][]string) {
		t.Helper()
		for _, s := range shapes {
			for host, q := range s.queries {
				want4, want6 := []string{forwarded4}, []string{forwarded6}
				v4only6 := want6 // AAAA to an IPv4-only pod
				switch {
				case s.answer != nil:
					want4, want6, v4only6 = s.answer, nil, nil
				case s.ignored: // forwarded, whatever the status says
				case len(status[s.name][host]) > 0:
					want4, want6 = family(status[s.name][host], true), family(status[s.name][host], false)
					// Istio's sidecar gives it its own family's VIPs only;
					// without one, the host is forwarded.
					if v4only6 = nil; len(want4) == 0 {
						v4only6 = []string{forwarded6}
					}
				}
				for _, n := range nodes {
					expect(t, n, curlIP, q, dns.TypeA, want4...) // curl is dual-stack
					expect(t, n, curlIP, q, dns.TypeAAAA, want6...)
					expect(t, n, teamAIP, q, dns.TypeAAAA, v4only6...)
				}
			}
		}
	}
	t.Run("every shape answers istiod's status", func(t *testing.T) {
		for _, n := range nodes {
			waitSeen(t, n, "default", "ServiceEntry default/sentinel")
		}
		checkAll(t, status)
		for name, n := range nodes {
			if st, err := n.Status(); err != nil || st.VIPs != "auto: istiod's status.addresses" {
				t.Errorf("node %s: ztdns status says VIPs %q (%v)", name, st.VIPs, err)
			}
		}
		c.checkRegistry(t, istiod, shapes, status)
	})

	t.Run("opt-out label toggled both ways", func(t *testing.T) {
		se, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").Get(c.ctx, "dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		se.Labels = map[string]string{"networking.istio.io/enable-autoallocate-ip": "false"}
		if se, err = c.env.IstioClient().NetworkingV1().ServiceEntries("default").Update(c.ctx, se, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			expect(t, n, curlIP, "dns.example", dns.TypeA, forwarded4)
		}
		c.waitStatusGone(t, "dns") // istiod clears what it wrote
		se, err = c.env.IstioClient().NetworkingV1().ServiceEntries("default").Get(c.ctx, "dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		se.Labels = nil
		if _, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").Update(c.ctx, se, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// istiod's allocator takes events in order, one at a time: once it
		// has allocated an entry created after the update, it has handled
		// the update.
		after := seShape{name: "after-opt-in", spec: dnsSE("after.example"),
			queries: map[string]string{"after.example": "after.example"}, allocated: true}
		c.serviceEntry(t, "default", after.name, nil, after.spec)
		c.waitStatus(t, []seShape{after})
		// This istiod leaves status.addresses empty after opting back in
		// (its JSON patch tests for null and finds the [] it wrote), as the
		// README says: an istiod that allocates again fails here, so that
		// the README and this test are changed with it.
		se, err = c.env.IstioClient().NetworkingV1().ServiceEntries("default").Get(c.ctx, "dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if a := se.Status.GetAddresses(); len(a) > 0 {
			t.Fatalf("istiod allocated dns.example again after the opt-out was lifted: %v", a)
		}
		i := slices.IndexFunc(shapes, func(s seShape) bool { return s.name == "dns" })
		shapes[i].allocated = false
		shapes = append(shapes, after)
		status = c.waitStatus(t, shapes)
		t.Logf("dns.example: status %v", status["dns"]["dns.example"])
		// An agent that has after-opt-in has had the update before it:
		// dns.example is forwarded before and after.
		for _, n := range nodes {
			waitSeen(t, n, "default", "ServiceEntry default/"+after.name)
		}
		checkAll(t, status)
	})

	t.Run("istiod down, then restarted", func(t *testing.T) {
		istiod.Stop()
		c.serviceEntry(t, "default", "while-down", nil, dnsSE("later.example"))
		// No VIP istiod did not write: the new host is forwarded, and every
		// other answer stays. It was forwarded too before the agents had the
		// entry: ask once they do.
		for _, n := range nodes {
			waitSeen(t, n, "default", "ServiceEntry default/while-down")
		}
		asked := up.Queries("later.example.")
		for _, n := range nodes {
			expect(t, n, curlIP, "later.example", dns.TypeA, forwarded4)
		}
		checkAll(t, status)
		if up.Queries("later.example.") == asked {
			t.Error("later.example was answered locally, not forwarded")
		}

		istiod.Start()
		all := append(shapes, seShape{name: "while-down", queries: map[string]string{"later.example": "later.example"}, allocated: true})
		after := c.waitStatus(t, all)
		for _, s := range shapes {
			for host := range s.queries {
				if !slices.Equal(after[s.name][host], status[s.name][host]) {
					t.Errorf("%s: istiod's restart moved %s from %v to %v", s.name, host, status[s.name][host], after[s.name][host])
				}
			}
		}
		shapes = all
		checkAll(t, after)
		c.checkRegistry(t, istiod, shapes, after)
	})
}

// family keeps the IPv4 (v4) or IPv6 addresses of addrs, sorted.
func family(addrs []string, v4 bool) []string {
	var out []string
	for _, a := range addrs {
		if netip.MustParseAddr(a).Is4() == v4 {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

// waitStatus waits until istiod has written status.addresses for every
// host of every allocated shape (an IPv4 and an IPv6 VIP each, in its
// ranges), and returns them: ServiceEntry name → host → addresses.
func (c *cluster) waitStatus(t *testing.T, shapes []seShape) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	agenttest.Eventually(t, 20*time.Second, func() error {
		for _, s := range shapes {
			se, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").Get(context.Background(), s.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			byHost := map[string][]string{}
			for _, a := range se.Status.GetAddresses() {
				byHost[a.GetHost()] = append(byHost[a.GetHost()], a.GetValue())
			}
			if !s.allocated {
				if len(byHost) > 0 {
					return fmt.Errorf("%s: istiod allocated %v, expected nothing", s.name, byHost)
				}
				continue
			}
			for _, h := range se.Spec.Hosts {
				got := byHost[h]
				if len(family(got, true)) != 1 || len(family(got, false)) != 1 {
					return fmt.Errorf("%s: status for %s is %v, want one IPv4 and one IPv6 VIP", s.name, h, got)
				}
				for _, a := range got {
					if ip := netip.MustParseAddr(a); !kubetestVIPs4.Contains(ip) && !kubetestVIPs6.Contains(ip) {
						return fmt.Errorf("%s: %s is outside istiod's ranges", s.name, a)
					}
				}
			}
			out[s.name] = byHost
		}
		return nil
	})
	return out
}

var (
	kubetestVIPs4 = netip.MustParsePrefix("240.240.0.0/16")
	kubetestVIPs6 = netip.MustParsePrefix("2001:2::/48")
)

// waitStatusGone waits until istiod has cleared a ServiceEntry's status.
func (c *cluster) waitStatusGone(t *testing.T, name string) {
	t.Helper()
	agenttest.Eventually(t, 20*time.Second, func() error {
		se, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n := len(se.Status.GetAddresses()); n > 0 {
			return fmt.Errorf("%s still has %d status addresses", name, n)
		}
		return nil
	})
}

// checkRegistry compares istiod's own registry (/debug/registryz) with the
// status it wrote: every allocated host's service carries those VIPs, and
// an ignored entry's hosts are not there.
func (c *cluster) checkRegistry(t *testing.T, istiod *kubetest.Istiod, shapes []seShape, status map[string]map[string][]string) {
	t.Helper()
	agenttest.Eventually(t, 10*time.Second, func() error {
		reg, err := istiod.Registry(context.Background())
		if err != nil {
			return err
		}
		for _, s := range shapes {
			if !s.allocated {
				continue
			}
			for host, addrs := range status[s.name] {
				i := slices.IndexFunc(reg, func(r kubetest.RegistryService) bool {
					return r.Hostname == host && r.Attributes.Namespace == "default" && r.Attributes.ObjectName == s.name
				})
				if s.ignored {
					if i >= 0 {
						return fmt.Errorf("registryz has service %s of ServiceEntry %s, which istiod should ignore", host, s.name)
					}
					continue
				}
				if i < 0 {
					return fmt.Errorf("registryz has no service %s of ServiceEntry %s", host, s.name)
				}
				got := []string{reg[i].AutoAllocatedIPv4Address, reg[i].AutoAllocatedIPv6Address}
				slices.Sort(got)
				want := slices.Sorted(slices.Values(addrs))
				if !slices.Equal(got, want) {
					return fmt.Errorf("registryz: %s of %s has %v, status says %v", host, s.name, got, want)
				}
			}
		}
		return nil
	})
}
